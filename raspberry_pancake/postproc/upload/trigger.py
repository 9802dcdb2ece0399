"""Upload trigger: hands converted files to every worker after N conversions or at set minutes."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence

from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.postproc.upload.worker import Mp4, UploadWorker

log = logging.getLogger(__name__)


class UploadTrigger:
    """Collects converted files and hands them to every destination when a trigger fires:
    after every N conversions, and/or at given minutes of the hour. A trigger minute that
    passes while the machine sleeps or the clock jumps is skipped, not fired late."""

    def __init__(self, workers: Sequence[UploadWorker], after: int | None,
                 minutes: tuple[int, ...], stop: threading.Event,
                 now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        self._now = now  # wall clock: the user's minutes are local time
        self._workers = list(workers)
        self._after = after
        self._minutes = frozenset(minutes)
        self._stop = stop
        self._lock = threading.Lock()  # guards _pending and _count (converter and clock threads)
        self._pending: list[Mp4] = []
        self._count = 0
        self._thread = StageThread("upload-clock", self._clock)

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    def start(self) -> None:
        if self._minutes and self._workers:
            self._thread.start()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def converted(self, mp4: Mp4) -> None:
        if not self._workers:
            return
        with self._lock:
            self._pending.append(mp4)
            self._count += 1
            due = self._after is not None and self._count >= self._after
        if due:
            self.fire(f"{self._after} conversion(s)")

    def fire(self, reason: str) -> None:
        """Offer the files converted since the last trigger, and every earlier one the catalog
        says its destination has not acknowledged yet.

        The catch-up runs at every trigger, not only on start: a file dropped from a full queue
        or given up while a destination was down would otherwise wait for a restart, which on
        a Pi left alone for months may never come. It costs one catalog query per trigger and destination.
        """
        with self._lock:
            files, self._pending, self._count = self._pending, [], 0
        if files:
            log.info("upload triggered by %s: %d file(s)", reason, len(files))
        for worker in self._workers:
            worker.catch_up(files)

    def _clock(self) -> None:
        fired: tuple[int, int, int, int] | None = None
        while not self._stop.is_set():
            now = self._now()
            # Wake just after the next minute starts, then look at the clock again: after a
            # sleep or a clock jump the minutes in between are simply not seen.
            wait = 60.0 - now.second - now.microsecond / 1e6 + 0.05
            if self._stop.wait(min(wait, 60.0)):
                return
            now = self._now()
            key = (now.toordinal(), now.hour, now.minute, now.year)
            if now.minute in self._minutes and key != fired:
                fired = key
                self.fire(f"minute {now.minute:02d}")
