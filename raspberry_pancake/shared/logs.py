"""Logging set-up shared by both daemons, and a rate limiter for lines that could flood."""

from __future__ import annotations

import io
import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# As the original: rotate at midnight, keep 33 days.
ROTATE_BACKUPS = 33
# `camera_tag` is ` [NAME]` on a camera's threads when there are several (see camera_scope),
# else empty: the single-camera lines read as they always did.
FORMAT = "%(asctime)s %(levelname)s %(threadName)s%(camera_tag)s %(name)s: %(message)s"
# Loggers are named for their modules; lines say `recorder.web.app`, not the package's full name.
PACKAGE_PREFIX = "raspberry_pancake."


# ---------------------------------------------------------------- which camera a thread serves

# Per thread: the camera whose work it does. Several cameras run alike threads ("encoder",
# "segments", "detector"), so without it their lines cannot be told apart.
_local = threading.local()


def thread_camera() -> str | None:
    """The camera the calling thread works for, or None (a process-wide thread)."""
    camera: str | None = getattr(_local, "camera", None)
    return camera


@contextmanager
def camera_scope(camera: str | None) -> Iterator[None]:
    """Within the block, the calling thread's log lines name `camera` (None: no camera), and
    the threads it starts through Stage or `with_camera` inherit it."""
    before = thread_camera()
    _local.camera = camera
    try:
        yield
    finally:
        _local.camera = before


def with_camera(target: Callable[P, R]) -> Callable[P, R]:
    """`target` wrapped to run in the calling thread's camera scope: for
    `threading.Thread(target=with_camera(fn))`, so that a camera's helper threads name it."""
    camera = thread_camera()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with camera_scope(camera):
            return target(*args, **kwargs)

    return run


class CameraTag(logging.Filter):
    """Puts the emitting thread's camera on each record (`camera`, and `camera_tag` for the
    format). Runs in the emitting thread, as handler filters do. A record that already has a
    `camera` (logged with extra={"camera": ...}) keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        camera = getattr(record, "camera", None)
        if camera is None:
            camera = thread_camera()
            record.camera = camera
        record.camera_tag = f" [{camera}]" if camera else ""
        return True


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith(PACKAGE_PREFIX) or not hasattr(record, "camera_tag"):
            record = logging.makeLogRecord(record.__dict__)  # other handlers keep the full name
            if record.name.startswith(PACKAGE_PREFIX):
                record.name = record.name[len(PACKAGE_PREFIX):]
            if not hasattr(record, "camera_tag"):  # a handler without CameraTag
                camera = getattr(record, "camera", None)
                record.camera_tag = f" [{camera}]" if camera else ""
        return super().format(record)


def setup_logging(path: str | None, level: int = logging.INFO) -> None:
    """Log to a file rotated at midnight (33 kept), or to stdout when no path is given."""
    handler: logging.Handler
    if path:
        # A path that is not UTF-8 (Linux allows any bytes) is written escaped, `\xff`:
        # strict UTF-8 would print "--- Logging error ---" and a traceback instead of the line.
        handler = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=ROTATE_BACKUPS, encoding="utf-8",
            errors="backslashreplace",
        )
    else:
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(errors="backslashreplace")
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(FORMAT))
    handler.addFilter(CameraTag())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RateLimiter:
    """Allows one line per key every `interval` seconds and counts what it held back."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()  # guards _last and _held; taken briefly, never while logging
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; otherwise how many lines for this key were held back before."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object) -> None:
        held = self.allow(key)
        if held is None:
            return
        if held:
            logger.log(level, msg + " (%d more like this not logged)", *args, held)
        else:
            logger.log(level, msg, *args)
