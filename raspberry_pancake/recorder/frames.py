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


# H.264 NAL unit types the live view looks for (ITU-T H.264 table 7-1).
NAL_IDR, NAL_SPS, NAL_PPS, NAL_AUD = 5, 7, 8, 9
START_CODE = b"\x00\x00\x00\x01"


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte string, without their start codes."""
    units = []
    for chunk in data.split(b"\x00\x00\x01"):
        # A four-byte start code leaves its leading zero on the previous unit: trailing zero
        # bytes are never part of a NAL unit (it ends with the RBSP stop bit).
        unit = chunk.rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def nal_type(unit: bytes) -> int:
    """A NAL unit's type (its first byte's low five bits)."""
    return unit[0] & 0x1F


def nal_types(data: bytes) -> list[int]:
    """The NAL unit types of an Annex-B byte string, in order (emulation prevention means
    00 00 01 only ever starts a unit)."""
    types = []
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


@dataclass(frozen=True, slots=True)
class Unit:
    """One access unit for the live view, in Annex B; an IDR always has SPS/PPS in front.

    `seq` counts the units the hub published, from 1 with no gaps: a viewer that got seq N and
    then N+1 has missed nothing. (mono, wall) are the capture time of the frame it encodes.
    """

    seq: int
    data: bytes
    idr: bool
    mono: float
    wall: float


# Called on the publisher's thread for every unit; must not block (IOLoop.add_callback).
UnitListener = Callable[[Unit], None]


class PacketHub:
    """The newest H.264 access unit of a camera, and its last IDR, for the live view.

    The pipeline publishes every packet its recordings get (the encoder's, a passthrough
    camera's, picamera2's hardware encoder's) from that producer's thread. Nothing queues: a
    viewer that was not ready when a unit arrived has missed it and waits for the next IDR.
    An IDR whose packet lacks SPS/PPS gets the last ones seen, so that a viewer may start at
    any IDR.
    """

    def __init__(self) -> None:
        # Guards every field below; held only to swap references, never while calling out.
        self._lock = threading.Lock()
        self._seq = 0
        self._latest: Unit | None = None
        self._last_idr: Unit | None = None
        self._sets: list[bytes] = []
        self._listeners: list[UnitListener] = []

    def listen(self, listener: UnitListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: UnitListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def publish(self, packet: Packet) -> None:
        data = packet.data
        types = nal_types(data)  # without copying the slices: most packets need no more
        idr = NAL_IDR in types
        with self._lock:
            if NAL_SPS in types:
                # A new SPS invalidates the old PPS as well: keep only this packet's sets.
                self._sets = [u for u in nal_units(data) if nal_type(u) in (NAL_SPS, NAL_PPS)]
            elif idr and self._sets:
                units = nal_units(data)
                data = self._with_sets(units, [nal_type(u) for u in units], self._sets)
            self._seq += 1
            unit = Unit(self._seq, data, idr, packet.mono, packet.wall)
            self._latest = unit
            if idr:
                self._last_idr = unit
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener(unit)

    @staticmethod
    def _with_sets(units: list[bytes], types: list[int], sets: list[bytes]) -> bytes:
        # The access unit delimiter, when there is one, must stay first.
        head = 1 if types and types[0] == NAL_AUD else 0
        ordered = units[:head] + sets + units[head:]
        return b"".join(START_CODE + u for u in ordered)

    def latest(self) -> Unit | None:
        with self._lock:
            return self._latest

    def last_idr(self) -> Unit | None:
        with self._lock:
            return self._last_idr
