"""What the recorder is doing now, for /status and the live page: read-mostly, thread-safe."""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raspberry_pancake.recorder.config import RecorderConfig
from raspberry_pancake.recorder.frames import LatestFrame


class RateMeter:
    """Events per second over the last few seconds (capture fps, stream fps)."""

    def __init__(self, window: float = 3.0) -> None:
        self._window = window
        self._lock = threading.Lock()  # guards _times
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self._window:
                self._times.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] > self._window:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


# DESIGN.md "Health": no frame for this long is offline; late by more than two frame intervals
# plus this much is a delay.
OFFLINE_AFTER = 5.0
DELAY_SLACK = 0.5
LIVE, DELAY, ERROR, OFFLINE = "live", "delay", "error", "offline"
# What the page's control asks of a camera: (armed, continuous), None for "leave as is".
Control = Callable[[bool | None, bool | None], None]


@dataclass(frozen=True, slots=True)
class Outlines:
    """What the motion detector saw in the newest frame it analysed, for the page's outlines:
    the changed regions (x, y, w, h as fractions of the frame; also while below the bar),
    whether their area is above the bar in effect, the 0..1 score an event carries."""

    seq: int  # the analysed frame's sequence number (frames.Frame.seq)
    mono: float  # and its capture time (time.monotonic), to tell old boxes
    boxes: tuple[tuple[float, float, float, float], ...]
    above: bool
    score: float | None
    area: float  # percent of the watched picture that changed
    bar: float  # percent it must reach


class RecorderState:
    """Shared by the pipeline (writers), the detector and the web server."""

    def __init__(self, cfg: RecorderConfig, source_name: str, hub: LatestFrame) -> None:
        self.cfg = cfg
        self.source_name = source_name
        self.hub = hub
        self.started = time.monotonic()
        self.capture_rate = RateMeter()
        # Guards _open, _detecting, _last_detection, _source_error, _armed and _continuous.
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._detecting = False
        self._last_detection: float | None = None  # time.time() of the last rising edge
        self._source_error: str | None = None
        self._armed = True
        self._continuous = cfg.record_continuous is not None
        # Set by whoever runs the camera (recorder.cameras): the page's armed/continuous
        # switches go through it; None: this camera cannot be controlled (a web unit test).
        self.control: Control | None = None
        # Set the same way: an external trigger (label, seconds) for POST /api/trigger, and a
        # new motion mask (a PNG's bytes; ValueError when unusable) for the page's mask editor.
        self.trigger: Callable[[str, float], None] | None = None
        self.set_mask: Callable[[bytes], None] | None = None
        # Set the same way when the camera searches faces: the faces in its newest frame, for
        # the Faces page's "add from camera" (a list of dicts: box, name, a JPEG crop).
        self.faces_in_view: Callable[[], list[dict[str, Any]]] | None = None
        # The motion detector's newest Outlines (None: no motion detector runs, or disarmed);
        # written by the detector's thread, read by the web's; one reference, swapped whole
        # under _outlines_lock.
        self._outlines_lock = threading.Lock()
        self._outlines: Outlines | None = None
        # Set by the pipeline: the camera's H.264 access units for the live view's H.264
        # viewers (recorder.frames' packet hub), None when the camera has none.
        self.packets: Any = None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def title(self) -> str:
        return self.cfg.title

    def source_failed(self, why: str | None) -> None:
        """The source's latest open failed (`why`, no secret in it), or None: it opened."""
        with self._lock:
            self._source_error = why

    @property
    def source_error(self) -> str | None:
        with self._lock:
            return self._source_error

    def set_switches(self, armed: bool | None = None, continuous: bool | None = None) -> None:
        """What the camera now does (after the page or the catalog set it)."""
        with self._lock:
            if armed is not None:
                self._armed = armed
            if continuous is not None:
                self._continuous = continuous

    def switches(self) -> tuple[bool, bool]:
        """(armed, continuous)."""
        with self._lock:
            return self._armed, self._continuous

    def frame_age(self, now: float | None = None) -> float | None:
        """Seconds since the newest frame was captured; None before the first."""
        frame = self.hub.latest()
        if frame is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - frame.mono)

    def health(self, now: float | None = None) -> tuple[str, float | None]:
        """(live | delay | error | offline, frame age in seconds or None): DESIGN.md "Health"."""
        age = self.frame_age(now)
        if age is None or age > OFFLINE_AFTER:
            return OFFLINE, age
        if self.source_error is not None:
            return ERROR, age
        if age > 2.0 / self.cfg.fps + DELAY_SLACK:
            return DELAY, age
        return LIVE, age

    def last_detection(self) -> float | None:
        with self._lock:
            return self._last_detection

    def health_entry(self) -> dict[str, Any]:
        """This camera's entry in /api/health's `cameras` (DESIGN.md "Health")."""
        state, age = self.health()
        armed, continuous = self.switches()
        return {
            "state": state,
            "fps": round(self.capture_rate.rate(), 2),
            "age_ms": None if age is None else round(age * 1000),
            "recording": bool(self.open_files()),
            "detection": self.detecting,
            "title": self.title,
            "armed": armed,
            "continuous": continuous,
        }

    def file_opened(self, path: str) -> None:
        with self._lock:
            self._open.add(path)

    def file_closed(self, path: str) -> None:
        with self._lock:
            self._open.discard(path)

    def open_files(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    @property
    def detecting(self) -> bool:
        with self._lock:
            return self._detecting

    @detecting.setter
    def detecting(self, value: bool) -> None:
        with self._lock:
            if value and not self._detecting:
                self._last_detection = time.time()
            self._detecting = value

    def set_outlines(self, outlines: Outlines | None) -> None:
        """The detector's newest analysed frame (None: motion is not being analysed now)."""
        with self._outlines_lock:
            self._outlines = outlines

    def outlines(self) -> Outlines | None:
        with self._outlines_lock:
            return self._outlines

    def snapshot(self) -> dict[str, Any]:
        """The recorder's part of /status (the web server adds viewers and JPEG counts)."""
        disks: dict[str, int | None] = {}
        for d in self.cfg.record_dirs:
            try:
                disks[str(d)] = shutil.disk_usage(d).free
            except OSError:
                disks[str(d)] = None
        size = self.cfg.frame_size
        return {
            "source": self.source_name,
            "resolution": [size.width, size.height],
            "fps": self.cfg.fps,
            "capture_fps": round(self.capture_rate.rate(), 2),
            "recording": self.open_files(),
            "detection": self.detecting,
            "free_bytes": disks,
            "uptime": round(time.monotonic() - self.started, 1),
        }
