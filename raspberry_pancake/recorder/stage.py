"""A pipeline stage's thread: named, restartable, and never ended quietly by an exception."""

from __future__ import annotations

import ctypes
import logging
import sys
import threading

from raspberry_pancake.shared.logs import camera_scope, thread_camera

log = logging.getLogger(__name__)

PR_SET_NAME = 15  # <linux/prctl.h>
_libc: ctypes.CDLL | None = None


def name_os_thread(name: str) -> None:
    """The calling thread's name in the kernel too (`top -H`, `ps -L`, /proc/PID/task/*/comm),
    cut to Linux's 15 bytes; nothing happens where that cannot be done."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_NAME, name.encode("utf-8", "replace")[:15], 0, 0, 0)
    except (OSError, AttributeError):
        return


class Stage:
    """Runs `run()` in a named daemon thread (daemon: a hung stage cannot pin the exit).

    An exception that escapes `run()` is logged with its traceback and kept in `failure`;
    `salvage()` then finishes what the stage had in hand (the file being written). The watchdog
    sees the stage dead and calls `respawn()` (once): a fresh thread on the same queue and state.
    A stage that ends on its own while nobody asked it to stop counts as dead too.

    Its thread's log lines name the camera (shared.logs.camera_scope) of the thread that made
    or first started it; a respawn by the watchdog keeps that camera.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.log_camera = thread_camera()
        self._thread: threading.Thread | None = None
        # Guards _stopping and _dying: stop() and a dying thread decide together whether the
        # stage's queue still has a reader, so that stop() never waits on a dead one.
        self._lock = threading.Lock()
        self._stopping = False
        self._dying = False
        self.failure: BaseException | None = None
        self.deaths = 0

    # -- what a stage provides -------------------------------------------------------------
    def run(self) -> None:
        raise NotImplementedError

    def salvage(self, stopping: bool) -> None:
        """After run() raised: finish what was in hand; if `stopping`, also consume the queue
        until its end (closing a queue never waits, but what is queued is let go)."""

    def request_stop(self) -> None:
        """Ask run() to end once it has done what is queued (called only while it is alive)."""

    # -- thread handling -------------------------------------------------------------------
    def start(self) -> None:
        if self.log_camera is None:
            self.log_camera = thread_camera()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        name_os_thread(f"{self.log_camera}:{self.name}" if self.log_camera else self.name)
        with camera_scope(self.log_camera):
            self._run_once()

    def _run_once(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # whatever ends a stage, it must not end quietly
            with self._lock:
                self._dying = True
                stopping = self._stopping
            self.deaths += 1
            log.error("%s stage died: %s: %s", self.name, type(exc).__name__, exc, exc_info=exc)
            try:
                self.salvage(stopping)
            except Exception as again:  # noqa: BLE001 — salvage is best effort; the death is logged
                log.error("%s stage: finishing after its death failed too: %s: %s", self.name,
                          type(again).__name__, again)
            with self._lock:
                self.failure = exc  # last: the watchdog restarts only what is salvaged

    def stop(self) -> None:
        """Ask the stage to finish and end. A stage that died is not asked (nothing reads its
        queue); one that dies while stop() waits drains its queue so stop() returns."""
        with self._lock:
            self._stopping = True
            dead = self._dying or self._thread is None or not self._thread.is_alive()
        if not dead:
            self.request_stop()

    @property
    def stopping(self) -> bool:
        with self._lock:
            return self._stopping

    def dead(self) -> bool:
        """Started, then ended (by an exception, salvaged) while nobody asked it to stop."""
        with self._lock:
            if self._stopping or self._thread is None:
                return False
            return self.failure is not None or not self._thread.is_alive()

    def respawn(self) -> bool:
        """A fresh thread after a death; False if the stage is being stopped."""
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # the old one is only returning from _main
        with self._lock:
            if self._stopping:
                return False
            self._dying = False
            self.failure = None
        self.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
