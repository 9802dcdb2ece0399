"""Upload worker: one destination's thread, bounded queue, retries and catch-up."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.postproc.upload.destination import (
    DEFAULT_CAMERA,
    Destination,
    UploadAborted,
    UploadError,
)
from raspberry_pancake.shared.catalog import Catalog, CatalogError
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
# Catalog errors (after its own 30 s of retries) are logged at most this often.
CATALOG_LOG_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Mp4:
    """One converted file to send: its recording's catalog id (the uploads' key) and path;
    its camera, which names the remote folder, when known (else the worker asks the catalog)."""

    recording: int
    path: Path
    camera: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


class UploadWorker:
    """One destination's thread and bounded queue: a dead destination holds back only itself.

    Its acknowledged uploads live in the catalog, keyed by the destination's label: what it
    acknowledged is never sent to it again. Every mp4 of the directory the catalog lists reaches
    the destination in the end: catch_up() offers, oldest first, each one the destination has
    not acknowledged (`pending_uploads`); a file dropped from
    the full queue, given up after the last attempt, or converted just before a stop is
    offered again at the next catch-up. A catch-up that found the queue full runs again as
    soon as the queue is empty, so a backlog drains at the destination's pace while the
    queue stays bounded. Files given up in this run go after the others, so that one file a
    destination keeps refusing cannot hold back the rest.
    """

    def __init__(self, dest: Destination, queue_size: int, stop: threading.Event,
                 catalog: Catalog, mp4_dir: Path, backoff_first: float = BACKOFF_FIRST,
                 max_attempts: int = MAX_ATTEMPTS, legacy: Collection[str] = ()) -> None:
        """`legacy`: the mp4 names this destination's old `.uploaded` journal acknowledges,
        honoured even if the catalog's one-time import ran before it knew their mp4s."""
        self.dest = dest
        self.catalog = catalog
        self.mp4_dir = mp4_dir
        self._legacy = frozenset(legacy)
        self._catalog_limiter = RateLimiter(CATALOG_LOG_EVERY)
        self._queue: queue.Queue[Mp4] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        self._backoff_first = backoff_first
        self._max_attempts = max_attempts
        self._limiter = RateLimiter()
        # Recordings queued or being uploaded: a catch-up never queues a file twice.
        self._lock = threading.Lock()  # guards _inflight, _gave_up, _more
        self._inflight: set[int] = set()
        self._gave_up: dict[int, int] = {}  # recording -> times given up since start
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

    def offer(self, mp4: Mp4) -> bool:
        """Queue one file unless it is queued already; False (logged) when the queue is full."""
        with self._lock:
            if mp4.recording in self._inflight:
                return True
            self._inflight.add(mp4.recording)
        try:
            self._queue.put_nowait(mp4)
        except queue.Full:
            with self._lock:
                self._inflight.discard(mp4.recording)
            self.dropped += 1
            log.warning("upload queue of %s full: dropped %s (it stays on disk for the next "
                        "catch-up)", self.dest.label, mp4.path)
            return False
        return True

    def _catalog_error(self, what: str, exc: CatalogError) -> None:
        self._catalog_limiter.log(log, logging.ERROR, what, "%s: %s: %s", self.dest.label,
                                  what, exc)

    def unacknowledged(self) -> list[Mp4]:
        """This directory's converted mp4s the destination has not acknowledged, still on
        disk. One gone from the disk unmarked (a retention without the catalog) is marked
        deleted, so it is not looked for again; one the old journal acknowledges is recorded
        as uploaded, never sent."""
        try:
            rows = self.catalog.pending_uploads(self.dest.label)
        except CatalogError as exc:
            self._catalog_error("cannot read the pending uploads", exc)
            return []
        out: list[Mp4] = []
        cameras = self._cameras([c.recording for c in rows])
        for c in rows:
            camera = cameras.get(c.recording, self._camera_of_path(c.mp4))
            if c.mp4.parent != self.mp4_dir and c.mp4.parent != self.mp4_dir / camera:
                continue  # another postproc's mp4 directory, sharing the catalog
            try:
                # The old journals know only MP4_DIR's own files: a camera folder's mp4 of
                # the same name was never sent.
                if c.mp4.name in self._legacy and c.mp4.parent == self.mp4_dir:
                    self.catalog.uploaded(c.recording, self.dest.label)
                elif not c.mp4.is_file():
                    self.catalog.mark_deleted(c.mp4)
                else:
                    out.append(Mp4(c.recording, c.mp4, camera))
            except CatalogError as exc:
                self._catalog_error("cannot record what the catch-up found", exc)
        return out

    def _cameras(self, recordings: Sequence[int]) -> dict[int, str]:
        """The camera of each recording, as the catalog has it (those it cannot say: left out).
        One read a recording (by its id, no write lock), as the catalog has no batch query."""
        found: dict[int, str] = {}
        try:
            for rid in recordings:
                rec = self.catalog.recording(rid)
                if rec is not None:
                    found[rid] = rec.camera
        except CatalogError as exc:
            self._catalog_error("cannot read the recordings' cameras", exc)
        return found

    def _camera_of_path(self, mp4: Path) -> str:
        """The converter's rule read backwards: MP4_DIR/NAME/x.mp4 is camera NAME's."""
        return mp4.parent.name if mp4.parent.parent == self.mp4_dir else DEFAULT_CAMERA

    def _camera(self, mp4: Mp4) -> str:
        if mp4.camera is not None:
            return mp4.camera
        return self._cameras([mp4.recording]).get(mp4.recording, self._camera_of_path(mp4.path))

    def catch_up(self, fresh: Sequence[Mp4] = ()) -> int:
        """Offer `fresh` (just converted) and every mp4 not yet acknowledged, oldest first,
        until the queue is full; the rest wait for the next catch-up. Returns how many of the
        older files were offered."""
        older = self.unacknowledged()
        fresh_ids = {f.recording for f in fresh}
        with self._lock:
            older = [f for f in older if f.recording not in fresh_ids
                     and f.recording not in self._inflight]
            gave_up = dict(self._gave_up)
        todo = sorted([*older, *fresh],
                      key=lambda f: (gave_up.get(f.recording, 0), f.name, str(f.path)))
        offered = waiting = 0
        full = False
        for mp4 in todo:
            is_fresh = mp4.recording in fresh_ids
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
        if full:
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
                        self._inflight.discard(mp4.recording)
                idle_since = time.monotonic()
        finally:
            self.dest.close()
            left = self._queue.qsize()
            if left:
                log.info("%s: %d upload(s) not done at stop (the next catch-up offers them)",
                         self.dest.label, left)

    def _acknowledged(self, mp4: Mp4) -> bool:
        try:
            if mp4.name in self._legacy and mp4.path.parent == self.mp4_dir:
                # An older version's mp4, taken into the catalog at this start.
                self.catalog.uploaded(mp4.recording, self.dest.label)
                return True
            return self.catalog.is_uploaded(mp4.recording, self.dest.label)
        except CatalogError as exc:
            self._catalog_error("cannot read the uploads", exc)
            return False  # a repeated upload of the same bytes is harmless (.part + rename)

    def _upload(self, mp4: Mp4) -> None:
        if self._acknowledged(mp4):
            return  # acknowledged since it was queued (another catch-up, another process)
        camera = self._camera(mp4)
        delay = self._backoff_first
        reason = ""
        for attempt in range(1, self._max_attempts + 1):
            if not mp4.path.is_file():
                log.warning("%s: %s no longer exists: not uploaded", self.dest.label, mp4.path)
                return
            started = time.monotonic()
            try:
                self.dest.upload(mp4.path, self._stop, camera=camera)
            except UploadAborted:
                log.info("%s: upload of %s cut off by shutdown", self.dest.label, mp4.path)
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
                try:
                    self.catalog.uploaded(mp4.recording, self.dest.label)
                    self.catalog.log("upload", f"{mp4.name} uploaded to {self.dest.label}",
                                     camera)
                except CatalogError as exc:
                    # Sent again at a later catch-up: the same bytes, harmless.
                    self._catalog_error("cannot record the upload", exc)
                self.uploaded += 1
                log.info("%s: uploaded %s in %.1f s", self.dest.label, mp4.name,
                         time.monotonic() - started)
                return
            try:
                self.catalog.upload_attempted(mp4.recording, self.dest.label, reason)
            except CatalogError as exc:
                self._catalog_error("cannot record the attempt", exc)
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
            self._gave_up[mp4.recording] = self._gave_up.get(mp4.recording, 0) + 1
        log.error("%s: gave up on %s after %d attempts (it stays on disk for the next "
                  "catch-up)", self.dest.label, mp4.path, self._max_attempts)
        try:
            self.catalog.log("upload", f"{mp4.name}: {self.dest.label} gave up after "
                             f"{self._max_attempts} attempts ({reason[:120]})", camera)
        except CatalogError as exc:
            self._catalog_error("cannot log the upload given up", exc)

    def _close_quietly(self) -> None:
        """Drop the connection after an undeclared failure: its state is unknown."""
        try:
            self.dest.close()
        except Exception as exc:  # noqa: BLE001 - same boundary as in _upload
            log.warning("%s: closing after the failure: %s: %s", self.dest.label,
                        type(exc).__name__, exc)
