"""What the recorder is doing now, for /status and the live page: read-mostly, thread-safe."""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
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


class RecorderState:
    """Shared by the pipeline (writers), the detector and the web server."""

    def __init__(self, cfg: RecorderConfig, source_name: str, hub: LatestFrame) -> None:
        self.cfg = cfg
        self.source_name = source_name
        self.hub = hub
        self.started = time.monotonic()
        self.capture_rate = RateMeter()
        self._lock = threading.Lock()  # guards _open and _detecting
        self._open: set[str] = set()
        self._detecting = False

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
            self._detecting = value

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
