"""pancake's side of the catalog: recordings and events, written on one named thread."""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.catalog import (
    CameraSettings,
    Catalog,
    CatalogError,
    Kind,
    Recording,
    rebuild,
)
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.remux import read_sidecar
from raspberry_pancake.shared.retention import open_inodes
from raspberry_pancake.shared.statedir import ensure

log = logging.getLogger(__name__)
_limit = RateLimiter(60.0)

# The camera's name until issue 11 adds --name: what every listener assumes without one.
CAMERA = "cam"
# A catalog that could not be opened (or failed a write) is tried again this often; until then
# recording goes on and what it would have written waits in the backlog.
RETRY_OPEN = 30.0
# Writes waiting for the catalog thread or for the catalog to come back: hours of segments and
# edges. Past it a write is dropped (logged); the rebuild still finds the files on disk.
BACKLOG = 4096
# How long a writer naming its first file waits for the catalog's first open: the history of
# names is in it. Packets wait in the writer's queue meanwhile, which holds minutes.
NAME_WAIT = 5.0
# A write that fails again after the catalog was reopened is given up (logged), not retried.
TRIES = 2
# How long stop() waits to queue its end marker behind a full queue.
STOP_WAIT = 2.0
# Event ids kept for edges, clips and snapshots that arrive after their event's rise.
EVENTS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    """path: the catalog file; state_dir: made (0700) first when the catalog lives in it;
    record_dirs: rebuilt from when the catalog is new, and where crashed files are closed."""

    path: Path
    state_dir: Path | None
    record_dirs: tuple[Path, ...]
    camera: str = CAMERA
    retry: float = RETRY_OPEN
    backlog: int = BACKLOG


@dataclass
class _Write:
    what: str
    run: Callable[[Catalog], None]
    tries: int = 0


class _End:
    """After the last write: the thread writes what it can, then ends."""


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stat_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _count_frames(path: Path) -> int | None:
    """Frames in a raw H.264 file without its sidecar, by demuxing (no decode)."""
    import av
    import av.error

    try:
        with av.open(str(path), format="h264") as c:
            return sum(1 for p in c.demux(video=0) if p.size)
    except (av.error.FFmpegError, OSError):
        return None


class CatalogWriter(Stage):
    """Owns pancake's catalog: opens it (rebuilding a new or damaged one from the record
    directories), and writes what the writers and the detector report, in order, on its own
    thread: SQLite's fsync per commit (and its wait for another process's lock, up to the
    core's 30 s of retries) never holds up a packet. Producers never block: a full queue drops
    the write, logged. Reads (names used, the deletion order) run on the caller's thread, which
    WAL never makes wait for a writer.
    """

    def __init__(self, cfg: CatalogConfig) -> None:
        super().__init__("catalog")
        self.cfg = cfg
        # SQLite text is UTF-8: a directory whose name is not is recorded into, not catalogued.
        self._dirs = tuple(d for d in cfg.record_dirs if self._catalogable(d))
        self._queue: queue.Queue[_Write | _End] = queue.Queue(maxsize=cfg.backlog)
        self._backlog: collections.deque[_Write] = collections.deque()
        self._ready = threading.Event()  # set after the first open attempt, whatever its end
        # Guards _catalog (swapped by the thread, read by name_used/deletion_order) and _ours.
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._ours: set[str] = set()  # every file this process opened: never "crashed"
        self._tokens = itertools.count(1)
        # Touched by the catalog thread only:
        self._next_open = 0.0
        self._recordings: dict[str, int] = {}  # path of a file open now -> its id
        self._events: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._clipped: set[int] = set()  # tokens whose event has its clip
        self._outage = False  # a catalog was unavailable: the disk is read again when it is back
        self.dropped = 0
        self.written = 0

    # ---- from other threads: queued, never waiting

    def _put(self, write: _Write) -> None:
        try:
            self._queue.put_nowait(write)
        except queue.Full:
            self.dropped += 1
            _limit.log(log, logging.ERROR, "drop", "catalog behind: %s not catalogued "
                       "(%d dropped so far)", write.what, self.dropped)

    def opened(self, path: Path, kind: Kind, start: float) -> None:
        """A writer opened `path` (the file exists on disk)."""
        if not self._catalogable(path):
            return
        text = os.path.abspath(path)
        with self._lock:
            self._ours.add(text)
        self._put(_Write(f"{path.name} opened",
                         lambda c: self._opened(c, Path(text), kind, start)))

    def closed(self, path: Path, kind: Kind, start: float, end: float, frames: int) -> None:
        """A writer finished `path` (fsynced and closed)."""
        if not self._catalogable(path):
            return
        text = os.path.abspath(path)
        self._put(_Write(f"{path.name} closed",
                         lambda c: self._closed(c, Path(text), kind, start, end, frames)))

    def deleted(self, path: Path) -> None:
        """`path` was removed (an empty file, or the disk guard's deletion)."""
        if self._catalogable(path):
            self._put(_Write(f"{path.name} deleted", lambda c: self._mark_deleted(c, path)))

    def rose(self, t: float, labels: Sequence[str] = (), names: Sequence[str] = (),
             boxes: Sequence[Sequence[float]] = (), score: float | None = None) -> int:
        """A detection began; returns the token its fall, snapshot and clip are reported by."""
        with self._lock:
            token = next(self._tokens)
        labels, names = tuple(labels), tuple(names)
        kept = tuple(tuple(b) for b in boxes)
        self._put(_Write("detection", lambda c: self._rose(c, token, t, labels, names, kept,
                                                           score)))
        return token

    def seen(self, token: int, labels: Sequence[str], names: Sequence[str],
             boxes: Sequence[Sequence[float]] | None = None, score: float | None = None) -> None:
        """New labels, names or boxes while the detection is on."""
        labels, names = tuple(labels), tuple(names)
        kept = None if boxes is None else tuple(tuple(b) for b in boxes)
        self._put(_Write("detection update", lambda c: self._event_do(
            c, token, lambda eid: c.event_seen(eid, labels, names, kept, score))))

    def boxes_snapshot(self, token: int, path: Path) -> None:
        """The snapshot with the boxes drawn."""
        if self._catalogable(path):
            self._put(_Write(f"snapshot {path.name}", lambda c: self._event_do(
                c, token, lambda eid: c.event_boxes_snapshot(eid, path))))

    def set_camera(self, armed: bool | None = None, continuous: bool | None = None,
                   title: str | None = None) -> None:
        """What the page set for this camera, or its title (queued; a restart reads it back)."""
        self._put(_Write("camera settings", lambda c: c.set_camera(
            self.cfg.camera, title=title, armed=armed, continuous=continuous)))

    def save_learned(self, key: str, value: str) -> None:
        """A detector's learned state (queued)."""
        self._put(_Write(f"learned {key}", lambda c: c.set_learned(self.cfg.camera, key, value)))

    def fell(self, token: int, t: float) -> None:
        def work(c: Catalog, eid: int) -> None:
            c.event_fell(eid, t)
            c.log("detection", "detection ended", self.cfg.camera, t)
        self._put(_Write("detection end", lambda c: self._event_do(
            c, token, lambda eid: work(c, eid))))

    def snapshot(self, token: int, path: Path) -> None:
        if self._catalogable(path):
            self._put(_Write(f"snapshot {path.name}", lambda c: self._event_do(
                c, token, lambda eid: c.event_snapshot(eid, path))))

    def clip(self, token: int, path: Path) -> None:
        """A clip covering the event: the first one reported is the event's clip."""
        if self._catalogable(path):
            self._put(_Write(f"clip {path.name}", lambda c: self._clip(c, token, path)))

    def note(self, kind: str, text: str) -> None:
        """A line for the page's log (a disk warning)."""
        self._put(_Write(f"log line {kind}", lambda c: c.log(kind, text, self.cfg.camera)))

    def _catalogable(self, path: Path) -> bool:
        if _utf8(path):
            return True
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        _limit.log(log, logging.WARNING, "utf8", "%s: not a UTF-8 name, so not catalogued",
                   shown)
        return False

    # ---- reads on the caller's thread

    def current(self) -> Catalog | None:
        """The open catalog, or None while it is unavailable."""
        with self._lock:
            return self._catalog

    def name_used(self, stem: str) -> bool:
        """Whether the catalog's history holds this name (False when it cannot say). The first
        call waits (up to NAME_WAIT) for the catalog to be opened."""
        self._ready.wait(NAME_WAIT)
        catalog = self.current()
        if catalog is None:
            return False
        try:
            return catalog.name_used(self.cfg.camera, stem)
        except CatalogError as exc:
            _limit.log(log, logging.WARNING, "names", "catalog not read for names (only the "
                       "directories are checked): %s", exc)
            return False

    def deletion_order(self, dirs: Sequence[Path],
                       destinations: Sequence[str] = ()) -> list[Recording] | None:
        """The catalog's deletion order for `dirs`, or None when it is unavailable. The
        guard's first pass waits (up to NAME_WAIT) for the catalog, which knows what is kept.
        With no `destinations` given, "uploaded everywhere" means to every destination the
        catalog has recorded an upload to (postproc's), as for the retention scripts."""
        self._ready.wait(NAME_WAIT)
        catalog = self.current()
        if catalog is None:
            return None
        try:
            return catalog.deletion_order(dirs, destinations or catalog.destinations())
        except CatalogError as exc:
            _limit.log(log, logging.WARNING, "order", "catalog not read for the deletion "
                       "order: %s", exc)
            return None

    def camera_settings(self) -> CameraSettings | None:
        """What the page set for this camera, or None (never set, or the catalog is not open:
        the first call waits up to NAME_WAIT for it)."""
        self._ready.wait(NAME_WAIT)
        catalog = self.current()
        if catalog is None:
            return None
        try:
            return catalog.camera_settings(self.cfg.camera)
        except CatalogError:
            return None

    def learned(self, key: str) -> str | None:
        """A detector's learned state for this camera, or None (as camera_settings())."""
        self._ready.wait(NAME_WAIT)
        catalog = self.current()
        if catalog is None:
            return None
        try:
            return catalog.learned(self.cfg.camera, key)
        except CatalogError:
            return None

    def recording_at(self, path: Path) -> Recording | None:
        catalog = self.current()
        if catalog is None:
            return None
        try:
            return catalog.recording_at(path)
        except CatalogError:
            return None

    # ---- the thread

    def request_stop(self) -> None:
        try:
            self._queue.put(_End(), timeout=STOP_WAIT)
        except queue.Full:  # stuck on a catalog that does not answer: the exit goes on
            log.error("catalog thread stuck: %d write(s) not catalogued", self._queue.qsize())

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def run(self) -> None:
        if self.current() is None:
            self._open()
        while True:
            with self._lock:
                up = self._catalog is not None
            wait = None if up else max(0.0, self._next_open - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _End):
                break
            if item is not None:
                self._pend(item)
            if not up and time.monotonic() >= self._next_open:
                self._open()
            self._drain()
        self._drain()
        if self._backlog:
            log.error("catalog unavailable at stop: %d write(s) lost (the next start's "
                      "rebuild finds the files)", len(self._backlog))
        catalog, self._catalog = self._catalog, None
        if catalog is not None:
            catalog.close()

    def salvage(self, stopping: bool) -> None:
        if stopping:  # let a stop() waiting on a full queue through
            while not isinstance(self._queue.get(), _End):
                pass

    def _pend(self, write: _Write) -> None:
        if len(self._backlog) >= self.cfg.backlog:
            self.dropped += 1
            _limit.log(log, logging.ERROR, "backlog", "catalog unavailable for long: %s not "
                       "catalogued (%d dropped so far)", write.what, self.dropped)
            return
        self._backlog.append(write)

    def _drain(self) -> None:
        catalog = self.current()
        while catalog is not None and self._backlog:
            write = self._backlog[0]
            try:
                write.run(catalog)
            except (CatalogError, sqlite3.Error, ValueError) as exc:  # ValueError: UTF-8
                write.tries += 1
                if write.tries >= TRIES:
                    self._backlog.popleft()
                    log.error("catalog: %s not catalogued, given up: %s", write.what, exc)
                    continue
                self._unavailable(f"writing failed ({write.what}): {exc}")
                return
            self._backlog.popleft()
            self.written += 1

    def _unavailable(self, why: str) -> None:
        _limit.log(log, logging.ERROR, "unavailable", "catalog %s: %s; recording goes on, "
                   "retrying in %.0f s", self.cfg.path, why, self.cfg.retry)
        self._outage = True
        self._next_open = time.monotonic() + self.cfg.retry
        with self._lock:
            catalog, self._catalog = self._catalog, None
        if catalog is not None:
            catalog.close()

    def _open(self) -> None:
        try:
            try:
                if self.cfg.state_dir is not None:
                    ensure(self.cfg.state_dir)
            except OSError as exc:
                raise CatalogError(f"state directory {self.cfg.state_dir}: "
                                   f"{exc.strerror or exc}") from None
            catalog = Catalog.open(self.cfg.path, owner=True)
        except CatalogError as exc:
            self._unavailable(f"cannot be opened: {exc}")
            self._ready.set()
            return
        with self._lock:
            self._catalog = catalog
        self._ready.set()  # names can be checked now; the rebuild only adds what is on disk
        try:
            if catalog.fresh or self._outage:
                self._rebuild(catalog)
            self._close_crashed(catalog)
        except (CatalogError, sqlite3.Error, ValueError) as exc:
            self._unavailable(f"reading the disk into it failed: {exc}")
            return
        if self._outage:
            log.info("catalog %s available again", self.cfg.path)
        self._outage = False

    def _rebuild(self, catalog: Catalog) -> None:
        why = ("a new catalog" if catalog.moved_aside is None and catalog.fresh and
               not self._outage else "after the damaged one was moved aside"
               if catalog.moved_aside is not None else "after it was unavailable")
        try:
            done = rebuild(catalog, self._dirs, None, self.cfg.camera)
        except OSError as exc:
            log.error("catalog rebuild: cannot read %s", exc.filename or exc)
            return
        log.info("catalog %s filled from the record directories (%s): %d recording(s)%s",
                 self.cfg.path, why, done.recordings,
                 f", {len(done.unreadable)} unreadable" if done.unreadable else "")

    def _close_crashed(self, catalog: Catalog) -> None:
        """Recordings of an earlier run left open by a crash or kill -9: closed now with what
        their file and sidecar hold, so postproc converts them. A file not on disk is left as
        it is (an unmounted disk must not read as deleted recordings)."""
        dirs = [os.path.abspath(d) for d in self._dirs]
        if not dirs:
            return
        marks = ",".join("?" * len(dirs))
        with catalog.transaction() as c:
            rows = c.execute("SELECT id, path, start FROM recordings WHERE camera = ? AND "  # noqa: S608
                             f"closed = 0 AND deleted = 0 AND dir IN ({marks})",
                             (self.cfg.camera, *dirs)).fetchall()
        if not rows:
            return
        with self._lock:
            ours = set(self._ours)
        held = open_inodes()
        for row in rows:
            path = Path(row["path"])
            if row["path"] in ours:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in held:
                continue  # another process writes it (a second pancake of the same camera?)
            times = read_sidecar(path.with_suffix(".pts")) \
                if path.with_suffix(".pts").exists() else []
            frames = len(times) if times else _count_frames(path)
            if frames is None:
                continue  # unreadable: left for util/catalog.py check to report
            end = row["start"] + (times[-1] if times else 0.0)
            catalog.recording_closed(row["id"], end, frames, st.st_size)
            log.info("catalog: %s was left open by an earlier run: closed, %d frames",
                     path.name, frames)

    # ---- writes, on the thread

    def _opened(self, c: Catalog, path: Path, kind: Kind, start: float) -> None:
        known = c.recording_at(path)
        c.log("recording", f"{path.name} started ({kind})", self.cfg.camera)
        if known is None:
            self._recordings[str(path)] = c.recording_opened(self.cfg.camera, kind, path, start)
            return
        # The rebuild of a new catalog (or one back from an outage) met the file first: it is
        # ours and open, whatever the rebuild guessed from the disk.
        with c.transaction() as conn:
            conn.execute("UPDATE recordings SET kind = ?, start = ?, closed = 0, end = NULL, "
                         "frames = NULL, deleted = 0 WHERE id = ?", (kind, start, known.id))
        self._recordings[str(path)] = known.id

    def _closed(self, c: Catalog, path: Path, kind: Kind, start: float, end: float,
                frames: int) -> None:
        rid = self._recordings.pop(str(path), None)
        if rid is None:
            known = c.recording_at(path)
            if known is None:  # its opening was dropped: catalogued now, whole
                rid = c.recording_opened(self.cfg.camera, kind, path, start)
            else:
                rid = known.id
        c.recording_closed(rid, end, frames, _stat_size(path))
        c.log("recording", f"{path.name} finished: {max(0.0, end - start):.0f} s, {frames} frames",
              self.cfg.camera)

    def _mark_deleted(self, c: Catalog, path: Path) -> None:
        self._recordings.pop(os.path.abspath(path), None)
        c.mark_deleted(path)

    def _rose(self, c: Catalog, token: int, t: float, labels: tuple[str, ...],
              names: tuple[str, ...], boxes: tuple[tuple[float, ...], ...] = (),
              score: float | None = None) -> None:
        self._events[token] = c.event_rose(self.cfg.camera, t, labels, names, boxes, score)
        c.log("detection", "detection: " + (", ".join((*labels, *names)) or "on"),
              self.cfg.camera, t)
        while len(self._events) > EVENTS_KEPT:
            old, _ = self._events.popitem(last=False)
            self._clipped.discard(old)

    def _event_do(self, c: Catalog, token: int, work: Callable[[int], None]) -> None:
        eid = self._events.get(token)
        if eid is not None:  # None: its rise was dropped; nothing true to attach this to
            work(eid)

    def _clip(self, c: Catalog, token: int, path: Path) -> None:
        eid = self._events.get(token)
        if eid is None or token in self._clipped:
            return
        rid = self._recordings.get(os.path.abspath(path))
        if rid is None:
            known = c.recording_at(path)
            if known is None:
                return
            rid = known.id
        c.event_clip(eid, rid)
        self._clipped.add(token)
