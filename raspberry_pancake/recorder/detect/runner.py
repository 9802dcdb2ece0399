"""Detection edges: the user's detect() called in its own thread, every --detect-interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.config import Size
from raspberry_pancake.recorder.frames import LatestFrame
from raspberry_pancake.recorder.recording.clips import Edge
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter(interval=30.0)

EdgeSink = Callable[[Edge], None]


class Detector(Stage):
    """Calls detect() or detect(rgb_bytes) and reports changes the moment it sees them.

    It owns nothing the recording needs: a slow or hanging detect() only delays detection.
    An exception counts as False (logged, rate-limited) and the next call goes on as usual.
    """

    def __init__(self, detect: Callable[..., Any], with_image: bool, size: Size | None,
                 interval: float, hub: LatestFrame, on_edge: EdgeSink,
                 stop: threading.Event) -> None:
        super().__init__("detector")  # a daemon thread: a hung detect() can't pin the exit
        self._detect = detect
        self._with_image = with_image
        self._size = size
        self._interval = interval
        self._hub = hub
        self._on_edge = on_edge
        self._stop_event = stop
        # One scaler for every call: frame.reformat() would build (and tear down) a new
        # swscale context per frame, three times the cost of the scaling itself.
        self._reformatter = VideoReformatter()
        self.state = False
        self.calls = 0
        self.errors = 0

    def run(self) -> None:
        seq = -1
        due = time.monotonic()
        while not self._stop_event.is_set():
            if self._with_image:
                frame = self._hub.wait_newer(seq, timeout=0.5)
                if frame is None:
                    continue
                seq, mono, wall = frame.seq, frame.mono, frame.wall
                rgb = self._rgb(frame.image)
                if rgb is None:
                    continue
                result = self._call(rgb)
            else:
                mono, wall = time.monotonic(), time.time()
                result = self._call()
            if result != self.state:
                self.state = result
                self._on_edge(Edge(result, mono, wall))
            due += self._interval
            now = time.monotonic()
            if due < now:
                due = now  # detect() took longer than the interval: carry on, don't catch up
            elif self._stop_event.wait(due - now):
                return

    def _rgb(self, image: av.VideoFrame) -> bytes | None:
        """The picture as detect(rgb_bytes) wants it, or None (logged) if it cannot be made."""
        try:
            if self._size is not None:
                # Fast bilinear: detection needs the picture, not the finest scaling.
                image = self._reformatter.reformat(image, self._size.width, self._size.height,
                                                   "rgb24", interpolation="FAST_BILINEAR")
            else:
                image = self._reformatter.reformat(image, format="rgb24")
            plane = image.planes[0]
            # Tightly packed rows are already the bytes detect() wants: skip numpy's copy.
            return (bytes(plane) if plane.line_size == image.width * 3
                    else image.to_ndarray().tobytes())
        except (av.FFmpegError, ValueError) as exc:
            _limit.log(log, logging.ERROR, "rgb", "frame not converted for detect(): %s", exc)
            return None

    def _call(self, *args: bytes) -> bool:
        self.calls += 1
        try:
            return bool(self._detect(*args))
        except Exception as exc:  # noqa: BLE001 — the user's code: any failure counts as False
            self.errors += 1
            _limit.log(log, logging.ERROR, "raise", "detect() raised %s: %s (counted as False)",
                       type(exc).__name__, exc)
            return False
