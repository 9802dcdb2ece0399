"""Captured frames and encoded packets, and the newest-frame slot that viewers and detect() read."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import av


@dataclass(frozen=True, slots=True)
class Frame:
    """A captured picture: yuv420p at the configured size, annotated, flipped and rotated.

    Consumers must not write to `image`: one frame is shared by the encoder, the live view and
    the detector (its `pts` and `pict_type` belong to the recording encoder; others reformat or
    encode it without touching them). `mono` (time.monotonic) and `wall` (time.time) are its capture time.
    """

    seq: int
    image: av.VideoFrame
    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded H.264 access unit, with the capture time of the frame it encodes.

    `boundary` marks the keyframe that starts a new segment (a split time, or the first packet
    after the source came back): writers split there and nowhere else.
    """

    data: bytes
    keyframe: bool
    mono: float
    wall: float
    boundary: bool = False


# Where a stage hands frames or packets on; it is called on the producer's thread and must not
# block it (queue, or publish to a LatestFrame).
FrameSink = Callable[[Frame], None]
PacketSink = Callable[[Packet], None]


class LatestFrame:
    """Holds only the newest frame: readers that fall behind skip frames, they never queue them.

    The capture thread publishes; any thread may read or wait. Tornado's event loop must not
    call `wait_newer` (it blocks): the live view waits in its own thread and crosses into the
    loop with IOLoop.add_callback.
    """

    def __init__(self) -> None:
        # Guards _frame and _closed; wait_newer sleeps on it. Held only to swap a reference.
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def publish(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The newest frame with a sequence number above `seq`, or None after `timeout` or close."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._frame is not None and self._frame.seq > seq),
                timeout,
            )
            if self._frame is not None and self._frame.seq > seq:
                return self._frame
            return None

    def close(self) -> None:
        """Wake every waiter for good (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
