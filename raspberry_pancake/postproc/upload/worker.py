"""Upload worker: one destination's thread, bounded queue, retries and catch-up."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.postproc.upload.destination import Destination, UploadAborted, UploadError
from raspberry_pancake.postproc.upload.journal import UploadJournal
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

# Retries: 2, 4, 8 … s, at most 5 min apart; a file is given up after this many attempts
# (about an hour), and stays on disk for the next catch-up.
BACKOFF_FIRST = 2.0
BACKOFF_MAX = 300.0
MAX_ATTEMPTS = 16
# An idle connection is closed rather than left to the server's idle timeout.
IDLE_CLOSE = 60.0
POLL = 0.25


class UploadWorker:
    """One destination's thread and bounded queue: a dead destination holds back only itself.

    With a journal, every mp4 of the directory reaches the destination in the end: catch_up()
    offers, oldest first, each one the destination has not acknowledged; a file dropped from
    the full queue, given up after the last attempt, or converted just before a stop is
    offered again at the next catch-up. A catch-up that found the queue full runs again as
    soon as the queue is empty, so a backlog drains at the destination's pace while the
    queue stays bounded. Files given up in this run go after the others, so that one file a
    destination keeps refusing cannot hold back the rest.
    """

    def __init__(self, dest: Destination, queue_size: int, stop: threading.Event,
                 backoff_first: float = BACKOFF_FIRST, max_attempts: int = MAX_ATTEMPTS,
                 journal: UploadJournal | None = None) -> None:
        self.dest = dest
        self.journal = journal
        self._queue: queue.Queue[Path] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        self._backoff_first = backoff_first
        self._max_attempts = max_attempts
        self._limiter = RateLimiter()
        # Names queued or being uploaded: a catch-up never queues a file twice.
        self._lock = threading.Lock()  # guards _inflight, _gave_up, _more
        self._inflight: set[str] = set()
        self._gave_up: dict[str, int] = {}  # name -> times given up since start
        self._more = False  # a catch-up left files waiting: run another when the queue empties
        name = "upload-" + re.sub(r"[^A-Za-z0-9@.:_-]", "_", dest.label.split("://", 1)[-1])
        self._thread = StageThread(name[:60], self._run)
        self.uploaded = 0
        self.dropped = 0
        self.given_up = 0

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def offer(self, mp4: Path) -> bool:
        """Queue one file unless it is queued already; False (logged) when the queue is full."""
        with self._lock:
            if mp4.name in self._inflight:
                return True
            self._inflight.add(mp4.name)
        try:
            self._queue.put_nowait(mp4)
        except queue.Full:
            with self._lock:
                self._inflight.discard(mp4.name)
            self.dropped += 1
            log.warning("upload queue of %s full: dropped %s (it stays on disk for the next "
                        "catch-up)", self.dest.label, mp4)
            return False
        return True

    def catch_up(self, fresh: Sequence[Path] = ()) -> int:
        """Offer `fresh` (just converted) and every mp4 not yet acknowledged, oldest first,
        until the queue is full; the rest wait for the next catch-up. Returns how many of the
        older files were offered."""
        older = [] if self.journal is None else self.journal.unacknowledged()
        fresh_names = {f.name for f in fresh}
        with self._lock:
            older = [f for f in older if f.name not in fresh_names
                     and f.name not in self._inflight]
            gave_up = dict(self._gave_up)
        todo = sorted([*older, *fresh], key=lambda f: (gave_up.get(f.name, 0), f.name, str(f)))
        offered = waiting = 0
        full = False
        for mp4 in todo:
            is_fresh = mp4.name in fresh_names
            if full and not is_fresh:
                # One line for the backlog, not one per file; a fresh file still gets its own.
                waiting += 1
                continue
            if not self.offer(mp4):
                full = True
            elif not is_fresh:
                offered += 1
        if waiting:
            log.warning("%s: queue full: %d more earlier file(s) wait for the next catch-up "
                        "(when the queue empties)", self.dest.label, waiting)
        if full and self.journal is not None:
            with self._lock:
                self._more = True
        if offered:
            log.info("%s: catch-up: offered %d earlier file(s) not uploaded yet",
                     self.dest.label, offered)
        return offered

    def abort(self) -> None:
        """Cut off a transfer in progress (shutdown: it leaves only the remote .part)."""
        self.dest.abort()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def _run(self) -> None:
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    mp4 = self._queue.get(timeout=POLL)
                except queue.Empty:
                    with self._lock:
                        more, self._more = self._more, False
                    if more:
                        self.catch_up()
                        continue
                    if time.monotonic() - idle_since > IDLE_CLOSE:
                        self.dest.close()
                        idle_since = float("inf")
                    continue
                try:
                    self._upload(mp4)
                finally:
                    with self._lock:
                        self._inflight.discard(mp4.name)
                idle_since = time.monotonic()
        finally:
            self.dest.close()
            left = self._queue.qsize()
            if left:
                log.info("%s: %d upload(s) not done at stop (the next catch-up offers them)",
                         self.dest.label, left)

    def _upload(self, mp4: Path) -> None:
        delay = self._backoff_first
        for attempt in range(1, self._max_attempts + 1):
            if not mp4.is_file():
                log.warning("%s: %s no longer exists: not uploaded", self.dest.label, mp4)
                return
            started = time.monotonic()
            try:
                self.dest.upload(mp4, self._stop)
            except UploadAborted:
                log.info("%s: upload of %s cut off by shutdown", self.dest.label, mp4)
                return
            except UploadError as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - the destination's boundary, see below
                # A destination's library failing in a way it does not declare (ftplib
                # reading a server's Latin-1 reply raises UnicodeDecodeError) is this
                # destination's problem: retried like any failure, rather than ending the
                # thread, which would hold back every file of this destination.
                reason = f"unexpected {type(exc).__name__}: {exc}"
                self._close_quietly()
            else:
                if self.journal is not None:
                    self.journal.record(mp4)
                self.uploaded += 1
                log.info("%s: uploaded %s in %.1f s", self.dest.label, mp4.name,
                         time.monotonic() - started)
                return
            if attempt == self._max_attempts:
                self._limiter.log(log, logging.WARNING, "fail",
                                  "%s: upload of %s failed (attempt %d): %s",
                                  self.dest.label, mp4.name, attempt, reason)
                break
            self._limiter.log(log, logging.WARNING, "fail",
                              "%s: upload of %s failed (attempt %d): %s; retry in %g s",
                              self.dest.label, mp4.name, attempt, reason, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX)
        self.given_up += 1
        with self._lock:
            self._gave_up[mp4.name] = self._gave_up.get(mp4.name, 0) + 1
        log.error("%s: gave up on %s after %d attempts (it stays on disk for the next "
                  "catch-up)", self.dest.label, mp4, self._max_attempts)

    def _close_quietly(self) -> None:
        """Drop the connection after an undeclared failure: its state is unknown."""
        try:
            self.dest.close()
        except Exception as exc:  # noqa: BLE001 - same boundary as in _upload
            log.warning("%s: closing after the failure: %s: %s", self.dest.label,
                        type(exc).__name__, exc)
