"""The catalog: one SQLite record of every recording, event, conversion, upload and alert."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Kind = Literal["continuous", "clip"]
UploadState = Literal["pending", "failed", "done"]

# How long one statement waits for another process's write lock before SQLite gives up; our
# transactions last milliseconds, so reaching this means a writer is stuck, not busy.
BUSY_TIMEOUT_MS = 10_000
# After SQLite gives up, the whole transaction is tried again until this many seconds have gone
# by: a caller (pancake's recording thread) sees CatalogError only when the disk itself is stuck.
RETRY_SECONDS = 30.0
RETRY_PAUSE = 0.05

# Schema steps: MIGRATIONS[n] takes a catalog from version n to n + 1, in one transaction.
# Never edit a step once released; append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE recordings (
            id INTEGER PRIMARY KEY,
            camera TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('continuous', 'clip')),
            path TEXT NOT NULL UNIQUE,
            dir TEXT NOT NULL,
            stem TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL,
            frames INTEGER,
            size INTEGER,
            closed INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0,
            kept INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX recordings_by_camera_start ON recordings (camera, start)",
        "CREATE INDEX recordings_by_camera_stem ON recordings (camera, stem)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            camera TEXT NOT NULL,
            rise REAL NOT NULL,
            fall REAL,
            labels TEXT NOT NULL DEFAULT '[]',
            names TEXT NOT NULL DEFAULT '[]',
            snapshot TEXT,
            clip INTEGER REFERENCES recordings (id))""",
        "CREATE INDEX events_by_camera_rise ON events (camera, rise)",
        """CREATE TABLE conversions (
            recording INTEGER PRIMARY KEY REFERENCES recordings (id),
            mp4 TEXT NOT NULL,
            stem TEXT NOT NULL,
            frames INTEGER NOT NULL,
            duration REAL NOT NULL,
            converted_at REAL NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX conversions_by_mp4 ON conversions (mp4)",
        "CREATE INDEX conversions_by_stem ON conversions (stem)",
        """CREATE TABLE uploads (
            recording INTEGER NOT NULL REFERENCES recordings (id),
            destination TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'failed', 'done')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            done_at REAL,
            PRIMARY KEY (recording, destination))""",
        """CREATE TABLE alerts (
            id INTEGER PRIMARY KEY,
            event INTEGER NOT NULL REFERENCES events (id),
            channel TEXT NOT NULL,
            sent_at REAL NOT NULL)""",
        "CREATE INDEX alerts_by_event ON alerts (event)",
        """CREATE TABLE log (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            camera TEXT,
            kind TEXT NOT NULL,
            text TEXT NOT NULL)""",
        "CREATE INDEX log_by_time ON log (time)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    (
        # Labelled detections (issue 12): the boxes and score of the edge, the snapshot with
        # the boxes drawn.
        "ALTER TABLE events ADD COLUMN boxes TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE events ADD COLUMN score REAL",
        "ALTER TABLE events ADD COLUMN boxes_snapshot TEXT",
        "CREATE INDEX events_by_rise ON events (rise)",
        # What the page sets per camera and a restart keeps (issue 11).
        """CREATE TABLE cameras (
            name TEXT PRIMARY KEY,
            title TEXT,
            armed INTEGER NOT NULL DEFAULT 1,
            continuous INTEGER NOT NULL DEFAULT 1,
            updated REAL NOT NULL)""",
        # A detector's learned state per camera (the motion statistics).
        """CREATE TABLE learned (
            camera TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (camera, key))""",
        # Where a file lives: the page and the disk guard look recordings up by directory.
        "CREATE INDEX recordings_by_dir ON recordings (dir)",
    ),
]
VERSION = len(MIGRATIONS)
# No recording is longer than this (a 15-minute split, or an `all` clip of a long detection):
# the day's timeline looks no further back for one that overlaps it.
MAX_RECORDING = 7 * 86400.0
# The log table keeps its newest lines only (the page shows the last 1,000).
LOG_KEPT = 20_000
LOG_PRUNE_EVERY = 100


class CatalogError(Exception):
    """The catalog could not be read or written; the message says why in one line."""


class CatalogUnavailable(CatalogError):
    """Not the owner, and the catalog is missing or damaged: wait for pancake to make it."""


class CatalogTooNew(CatalogError):
    """The file was made by a newer version of the programs: it is left untouched."""


# ---------------------------------------------------------------- rows


# The deletion tiers, in the order retention deletes: converted AND uploaded to every
# destination, then converted, then the rest (one rule, used by every query below).
UPLOADED, CONVERTED, REST = 0, 1, 2


@dataclass(frozen=True, slots=True)
class FileState:
    """A catalogued video (recording or mp4) as retention sees it."""
    path: str
    kept: bool
    tier: int


@dataclass(frozen=True, slots=True)
class Recording:
    """One .h264 file pancake wrote (or the rebuild found)."""

    id: int
    camera: str
    kind: Kind
    path: Path
    start: float
    end: float | None
    frames: int | None
    size: int | None
    closed: bool
    deleted: bool
    kept: bool

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True, slots=True)
class Event:
    """One detection: its edges, what was seen, its snapshot and the clip around it."""

    id: int
    camera: str
    rise: float
    fall: float | None
    labels: tuple[str, ...]
    names: tuple[str, ...]
    snapshot: Path | None
    clip: int | None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    score: float | None = None
    boxes_snapshot: Path | None = None


@dataclass(frozen=True, slots=True)
class EventView:
    """One event as the review page lists it: the event, its clip and what became of it."""

    event: Event
    clip_path: Path | None
    clip_deleted: bool
    kept: bool
    mp4: Path | None  # the clip's conversion, when postproc made one that still exists
    uploaded: int  # destinations the clip's mp4 reached
    alerted: tuple[str, ...]  # channels an alert went out on


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """What the page set for one camera: a restart keeps it."""

    name: str
    title: str | None
    armed: bool
    continuous: bool


@dataclass(frozen=True, slots=True)
class Conversion:
    """The mp4 postproc made of one recording (deleted: retention removed the mp4 since)."""

    recording: int
    mp4: Path
    frames: int
    duration: float
    converted_at: float
    deleted: bool


@dataclass(frozen=True, slots=True)
class Upload:
    """One recording's mp4 at one destination."""

    recording: int
    destination: str
    state: UploadState
    attempts: int
    last_error: str | None
    done_at: float | None


@dataclass(frozen=True, slots=True)
class LogLine:
    time: float
    camera: str | None
    kind: str
    text: str


def _text(path: Path) -> str:
    """A path as stored: absolute, and UTF-8 (SQLite text), else CatalogError."""
    text = os.path.abspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CatalogError(f"{text.encode('utf-8', 'backslashreplace').decode()}: "
                           "a name that is not UTF-8 cannot be catalogued") from None
    return text


def _recording(row: sqlite3.Row) -> Recording:
    return Recording(row["id"], row["camera"], row["kind"], Path(row["path"]), row["start"],
                     row["end"], row["frames"], row["size"], bool(row["closed"]),
                     bool(row["deleted"]), bool(row["kept"]))


def _event(row: sqlite3.Row) -> Event:
    boxes = tuple(tuple(float(v) for v in b) for b in json.loads(row["boxes"]))
    return Event(row["id"], row["camera"], row["rise"], row["fall"],
                 tuple(json.loads(row["labels"])), tuple(json.loads(row["names"])),
                 Path(row["snapshot"]) if row["snapshot"] else None, row["clip"],
                 boxes,  # type: ignore[arg-type]  # four floats each, as written
                 row["score"], Path(row["boxes_snapshot"]) if row["boxes_snapshot"] else None)


def _boxes(boxes: Iterable[Sequence[float]]) -> str:
    return json.dumps([[round(float(v), 4) for v in b] for b in boxes])


def _union(old: list[str], new: Iterable[str]) -> list[str]:
    return old + [x for x in dict.fromkeys(new) if x not in old]


def _conversion(row: sqlite3.Row) -> Conversion:
    return Conversion(row["recording"], Path(row["mp4"]), row["frames"], row["duration"],
                      row["converted_at"], bool(row["deleted"]))


def _marks(n: int) -> str:
    """n SQL placeholders, "?,?,…": the only text ever joined into a statement."""
    return ",".join("?" * n)


def _tier_sql(destinations: Sequence[str]) -> tuple[str, str, tuple[Any, ...]]:
    """The join and the CASE that give a recording `r` (joined to its conversion `c`) its
    deletion tier, and their parameters in statement order: the CASE's (it sits in the
    SELECT list) before the join's."""
    join = ("LEFT JOIN (SELECT recording, COUNT(*) AS n FROM uploads WHERE state = 'done' "  # noqa: S608
            f"AND destination IN ({_marks(len(destinations))}) GROUP BY recording) u "
            "ON u.recording = r.id")
    # With no destination, "uploaded everywhere" is trivially true (0 of 0).
    case = (f"CASE WHEN c.recording IS NULL THEN {REST} "
            f"WHEN coalesce(u.n, 0) = ? THEN {UPLOADED} ELSE {CONVERTED} END")
    return join, case, (len(destinations), *destinations)


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


# ---------------------------------------------------------------- opening and migrating


def migrate(conn: sqlite3.Connection, steps: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the file to len(steps), one transaction per step; returns the version it had.
    Another process migrating at the same time is harmless: each step re-reads the version
    under the write lock. Raises CatalogTooNew for a file newer than `steps`."""
    before: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if before > len(steps):
        raise CatalogTooNew(f"schema version {before} is newer than this program's "
                            f"{len(steps)}: update the programs")
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= len(steps):
                conn.execute("COMMIT")
                return before
            for statement in steps[version]:
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version + 1 > before:
            log.info("catalog schema migrated from version %d to %d", version, version + 1)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit (isolation_level None): every transaction is an explicit BEGIN IMMEDIATE, so a
    # write never upgrades a read lock (which fails at once, without waiting, under WAL).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # FULL: a power cut never loses a commit, so what the catalog says was done was done;
    # the fsync costs wait time, not CPU, and commits are few (two per segment, a few per event).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _aside(path: Path) -> Path:
    """Move a damaged catalog (and its -wal/-shm) aside under pancake.db.corrupt-<time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for extra in ("-wal", "-shm"):
        side = path.with_name(path.name + extra)
        if side.exists():
            if extra == "-shm":
                side.unlink()  # only an index of the -wal, rebuilt from it
            else:
                os.replace(side, target.with_name(target.name + extra))
    return target


def _create_private(path: Path) -> bool:
    """An empty file readable by its owner only (SQLite gives -wal/-shm the same mode); False
    when another process made it first (two pancakes starting at once share one catalog)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class _Damaged(Exception):
    """The file is not a usable SQLite database (garbage, truncated, scribbled on)."""


def _is_damage(exc: sqlite3.Error) -> bool:
    """Damage, as opposed to a busy lock, a full disk or a permission: only damage is moved
    aside, so a momentary lock at start never throws away a good catalog."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


# ---------------------------------------------------------------- the catalog


class Catalog:
    """One catalog file, shared by every thread and process that opens it.

    Each thread gets its own connection (sqlite3 connections must not be shared); every write
    is one short BEGIN IMMEDIATE transaction that does no I/O besides SQLite's own, so no lock
    is held across a file copy or a network call. WAL mode: readers never block the writer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # True when this open made the file (missing, or the damaged one was moved aside):
        # the owner then fills it from the disk (rebuild()).
        self.fresh = False
        self.moved_aside: Path | None = None
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _all, the connections to close on close()
        self._all: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    def open(cls, path: Path, owner: bool = False) -> Catalog:
        """Open (creating and migrating as needed). The owner (pancake, or a rebuild) moves a
        damaged file aside with one log line and starts a new one; anyone else gets
        CatalogUnavailable for a missing or damaged file, and waits for the owner."""
        if not owner and not path.exists():
            raise CatalogUnavailable(f"{path}: no catalog yet")
        catalog = cls(path)
        try:
            if owner:
                catalog.fresh = _create_private(path)
            catalog._prepare(check=owner)
            return catalog
        except _Damaged as exc:
            damage = str(exc)
        except sqlite3.Error as exc:
            catalog.close()
            if not _is_damage(exc):
                raise CatalogError(f"{path}: {exc}") from None
            damage = str(exc)
        except OSError as exc:
            catalog.close()
            raise CatalogError(f"{path}: {exc.strerror or exc}") from None
        except CatalogError:
            catalog.close()
            raise
        catalog.close()
        if not owner:
            raise CatalogUnavailable(f"{path}: damaged ({damage})")
        try:
            aside = _aside(path)
        except OSError as err:
            raise CatalogError(f"{path}: damaged ({damage}) and cannot be moved aside: "
                               f"{err.strerror or err}") from None
        log.error("catalog %s is damaged (%s): moved aside to %s, starting a new one "
                  "from the files on disk", path, damage, aside.name)
        catalog = cls(path)
        catalog.moved_aside = aside
        catalog.fresh = True
        try:
            _create_private(path)
            catalog._prepare(check=False)
        except (OSError, sqlite3.Error) as err:
            catalog.close()
            raise CatalogError(f"{path}: cannot start a new catalog: {err}") from None
        return catalog

    def _prepare(self, check: bool) -> None:
        conn = self._conn()
        if check:
            # quick_check reads every page: a truncated or scribbled file is found now, at
            # start, not halfway through a recording.
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _Damaged(f"quick_check: {result}")
        # A file from a newer version is refused before anything is changed in it (not even its
        # journal mode): the newer programs it belongs to may still need it as it is.
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise CatalogTooNew(f"schema version {version} is newer than this program's "
                                f"{len(MIGRATIONS)}: update the programs")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CatalogError(f"{self.path}: cannot use WAL mode (journal mode {mode})")
        migrate(conn)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._replaced():
            # The owner moved a damaged file aside and made a new one at our path (or is about
            # to): an open connection would go on writing the file set aside.
            log.warning("catalog %s was replaced: reopening it", self.path)
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()
            conn = None
        if conn is None:
            if self._closed:
                raise CatalogError(f"{self.path}: catalog closed")
            try:
                identity = _identity(self.path)
            except FileNotFoundError:
                raise CatalogUnavailable(f"{self.path}: no catalog (moved aside?): waiting "
                                         "for pancake to make a new one") from None
            except OSError as exc:
                raise CatalogError(f"{self.path}: {exc.strerror or exc}") from None
            conn = _connect(self.path)
            self._local.conn = conn
            self._local.identity = identity
            with self._lock:
                self._all.append(conn)
        return conn

    def _replaced(self) -> bool:
        """Whether the file at our path is no longer the one this thread's connection has."""
        try:
            return _identity(self.path) != getattr(self._local, "identity", None)
        except OSError:
            return True

    def close(self) -> None:
        """Close every thread's connection (call when those threads have stopped)."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one BEGIN IMMEDIATE transaction, retried while another writer holds
        the lock (up to RETRY_SECONDS); any other SQLite failure is a CatalogError."""
        deadline = time.monotonic() + RETRY_SECONDS
        conn = self._conn()
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(RETRY_PAUSE)
                    continue
                raise CatalogError(f"{self.path}: {exc}") from None
            except sqlite3.Error as exc:
                raise CatalogError(f"{self.path}: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(RETRY_PAUSE)
                    continue
                raise CatalogError(f"{self.path}: {exc}") from None
            except sqlite3.Error as exc:
                raise CatalogError(f"{self.path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction for a batch (the rebuild, a bench's bulk load); keep it short:
        do the file reading before. SQLite failures come out as CatalogError."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: {exc}") from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise CatalogError(f"{self.path}: {exc}") from None
            raise

    def version(self) -> int:
        """The file's schema version (PRAGMA user_version)."""
        return int(self._read("PRAGMA user_version")[0][0])

    # ---- recordings (pancake)

    def recording_opened(self, camera: str, kind: Kind, path: Path, start: float) -> int:
        """pancake opened `path` for writing; returns the recording's id."""
        text = _text(path)
        return self._write(lambda c: int(c.execute(
            "INSERT INTO recordings (camera, kind, path, dir, stem, start) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (camera, kind, text, os.path.dirname(text), path.stem, start)).lastrowid or 0))

    def recording_closed(self, recording: int, end: float, frames: int,
                         size: int | None = None) -> None:
        """pancake finished the file: its end time (wall clock), frames and size."""
        self._write(lambda c: c.execute(
            "UPDATE recordings SET closed = 1, end = ?, frames = ?, size = ? WHERE id = ?",
            (end, frames, size, recording)))

    def recording(self, recording: int) -> Recording | None:
        """One recording by id, or None."""
        rows = self._read("SELECT * FROM recordings WHERE id = ?", (recording,))
        return _recording(rows[0]) if rows else None

    def recording_at(self, path: Path) -> Recording | None:
        """The recording whose .h264 is `path`, or None if the catalog never heard of it."""
        rows = self._read("SELECT * FROM recordings WHERE path = ?", (_text(path),))
        return _recording(rows[0]) if rows else None

    def recordings(self, camera: str, t0: float, t1: float,
                   include_deleted: bool = False) -> list[Recording]:
        """A camera's recordings that started in [t0, t1), oldest first."""
        rows = self._read(
            "SELECT * FROM recordings WHERE camera = ? AND start >= ? AND start < ?"  # noqa: S608
            + ("" if include_deleted else " AND deleted = 0") + " ORDER BY start",
            (camera, t0, t1))
        return [_recording(r) for r in rows]

    def name_used(self, camera: str, stem: str) -> bool:
        """Whether a recording or mp4 of this camera ever had this base name (deleted ones
        too): a new file takes `-1`, `-2`, … so nothing local or remote is replaced."""
        rows = self._read(
            "SELECT 1 FROM recordings WHERE camera = ? AND stem = ? UNION ALL "
            "SELECT 1 FROM conversions c JOIN recordings r ON r.id = c.recording "
            "WHERE c.stem = ? AND r.camera = ? LIMIT 1", (camera, stem, stem, camera))
        return bool(rows)

    def set_kept(self, recording: int, kept: bool) -> None:
        """Keep (or release) a recording: no retention ever deletes a kept one."""
        self._write(lambda c: c.execute("UPDATE recordings SET kept = ? WHERE id = ?",
                                        (int(kept), recording)))

    def mark_deleted(self, path: Path) -> bool:
        """Retention deleted `path` (an .h264 or an mp4); False if the catalog does not know it."""
        text = _text(path)

        def work(c: sqlite3.Connection) -> bool:
            n = c.execute("UPDATE recordings SET deleted = 1 WHERE path = ?", (text,)).rowcount
            n += c.execute("UPDATE conversions SET deleted = 1 WHERE mp4 = ?", (text,)).rowcount
            return n > 0
        return self._write(work)

    def deletion_order(self, dirs: Iterable[Path], destinations: Iterable[str],
                       limit: int | None = None) -> list[Recording]:
        """The closed, unkept, undeleted recordings in `dirs`, in the order the disk guard
        deletes them: converted AND uploaded to every destination first, then converted, then
        the rest; oldest first within each (at most `limit`). An open recording is never listed."""
        dir_list = [_text(d) for d in dirs]
        dest_list = sorted(set(destinations))
        if not dir_list:
            return []
        join, case, params = _tier_sql(dest_list)
        # Only "?" placeholders are ever joined into this statement, never a value.
        rows = self._read(
            f"SELECT r.*, {case} AS tier FROM recordings r "  # noqa: S608
            f"LEFT JOIN conversions c ON c.recording = r.id {join} "
            f"WHERE r.closed = 1 AND r.deleted = 0 AND r.kept = 0 AND r.dir IN "
            f"({_marks(len(dir_list))}) ORDER BY tier, r.start, r.id LIMIT ?",
            (*params, *dir_list, -1 if limit is None else limit))
        return [_recording(r) for r in rows]

    def destinations(self) -> list[str]:
        """Every destination the catalog has recorded an upload to."""
        return sorted(str(r[0]) for r in self._read("SELECT DISTINCT destination FROM uploads"))

    def files_in(self, directories: Sequence[str],
                 destinations: Sequence[str] | None = None) -> list[FileState]:
        """The catalogued videos directly in any of `directories` (absolute path texts):
        recordings there and mp4s made there, each with kept and its deletion tier for
        `destinations` (default: every destination seen)."""
        if not directories:
            return []
        dests = self.destinations() if destinations is None else sorted(set(destinations))
        join, case, params = _tier_sql(dests)
        rows = self._read(
            f"SELECT r.path AS path, r.kept, {case} AS tier FROM recordings r "  # noqa: S608
            f"LEFT JOIN conversions c ON c.recording = r.id {join} "
            f"WHERE r.dir IN ({_marks(len(directories))})", (*params, *directories))
        prefixes = [d.rstrip(os.sep) + os.sep for d in directories]
        rows += self._read(
            f"SELECT c.mp4 AS path, r.kept, {case} AS tier FROM conversions c "  # noqa: S608
            f"JOIN recordings r ON r.id = c.recording {join} WHERE "
            + " OR ".join(["substr(c.mp4, 1, ?) = ?"] * len(prefixes)),
            (*params, *(x for p in prefixes for x in (len(p), p))))
        out = []
        for row in rows:
            path = str(row["path"])
            if os.path.dirname(path) in directories:  # directly in, not in a subfolder
                out.append(FileState(path, bool(row["kept"]), int(row["tier"])))
        return out

    # ---- events (pancake)

    def event_rose(self, camera: str, t: float, labels: Sequence[str] = (),
                   names: Sequence[str] = (), boxes: Iterable[Sequence[float]] = (),
                   score: float | None = None, snapshot: Path | None = None) -> int:
        """A detection began at `t`; returns the event's id."""
        snap = _text(snapshot) if snapshot is not None else None
        return self._write(lambda c: int(c.execute(
            "INSERT INTO events (camera, rise, labels, names, boxes, score, snapshot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (camera, t, json.dumps(list(labels)), json.dumps(list(names)), _boxes(boxes),
             score, snap)).lastrowid or 0))

    def event_seen(self, event: int, labels: Sequence[str], names: Sequence[str],
                   boxes: Iterable[Sequence[float]] | None = None,
                   score: float | None = None) -> None:
        """New labels or names during the detection: added to what the event already has;
        boxes replace the old ones when given, the score keeps the highest."""
        def work(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT labels, names, boxes, score FROM events WHERE id = ?",
                            (event,)).fetchone()
            if row is None:
                return
            new_l = _union(json.loads(row["labels"]), labels)
            new_n = _union(json.loads(row["names"]), names)
            new_b = _boxes(boxes) if boxes is not None else row["boxes"]
            new_s = row["score"] if score is None else max(score, row["score"] or 0.0)
            c.execute("UPDATE events SET labels = ?, names = ?, boxes = ?, score = ? "
                      "WHERE id = ?", (json.dumps(new_l), json.dumps(new_n), new_b, new_s, event))
        self._write(work)

    def set_event_names(self, event: int, names: Sequence[str]) -> None:
        """The event's names as the user corrected them from the page (replacing, not adding
        to, what the detector said)."""
        text = json.dumps(list(dict.fromkeys(names)))
        self._write(lambda c: c.execute("UPDATE events SET names = ? WHERE id = ?",
                                        (text, event)))

    def replace_name(self, old: str, new: str | None,
                     cameras: Sequence[str] | None = None) -> int:
        """A person renamed (`new`) or removed (None) from a faces store: every event (of
        `cameras`, the ones reading that store; None: all) that names them says so
        (case-insensitively, as the store compares names). Returns how many events changed."""
        key = old.casefold()
        if cameras is not None and not cameras:
            return 0
        where, params = ("", ()) if cameras is None else (
            f" AND camera IN ({', '.join('?' * len(cameras))})", tuple(cameras))

        def work(c: sqlite3.Connection) -> int:
            # Compared in Python: SQLite's lower() folds ASCII only, and names are not.
            changed = 0
            for row in c.execute("SELECT id, names FROM events WHERE names != '[]'"  # noqa: S608 — placeholders only
                                 + where, params).fetchall():
                names = json.loads(row["names"])
                kept = [n for n in names if n.casefold() != key]
                if len(kept) == len(names):
                    continue
                if new is not None:
                    kept.append(new)
                c.execute("UPDATE events SET names = ? WHERE id = ?",
                          (json.dumps(list(dict.fromkeys(kept))), row["id"]))
                changed += 1
            return changed
        return self._write(work)

    def event_boxes_snapshot(self, event: int, snapshot: Path) -> None:
        """The event's snapshot with the boxes drawn (`STEM-boxes.jpg`)."""
        text = _text(snapshot)
        self._write(lambda c: c.execute("UPDATE events SET boxes_snapshot = ? WHERE id = ?",
                                        (text, event)))

    def forget_event(self, event: int) -> None:
        """The user deleted the event from the page: its row and its alerts go (its files are
        the caller's to remove; the log keeps the line saying it happened)."""
        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM alerts WHERE event = ?", (event,))
            c.execute("DELETE FROM events WHERE id = ?", (event,))
        self._write(work)

    def event_at(self, camera: str, rise: float, within: float = 0.01) -> Event | None:
        """The camera's event that rose at `rise` (an edge message's time, rounded to the
        millisecond), or None."""
        rows = self._read("SELECT * FROM events WHERE camera = ? AND rise BETWEEN ? AND ? "
                          "ORDER BY abs(rise - ?) LIMIT 1",
                          (camera, rise - within, rise + within, rise))
        return _event(rows[0]) if rows else None

    def events_since(self, t: float, limit: int = 1000) -> list[Event]:
        """Every camera's events that rose at or after `t`, oldest first."""
        rows = self._read("SELECT * FROM events WHERE rise >= ? ORDER BY rise LIMIT ?",
                          (t, limit))
        return [_event(r) for r in rows]

    def event_snapshot(self, event: int, snapshot: Path) -> None:
        """The event's snapshot file (named for its clip's stem)."""
        text = _text(snapshot)
        self._write(lambda c: c.execute("UPDATE events SET snapshot = ? WHERE id = ?",
                                        (text, event)))

    def event_fell(self, event: int, t: float) -> None:
        """The detection ended at `t`."""
        self._write(lambda c: c.execute("UPDATE events SET fall = ? WHERE id = ?", (t, event)))

    def event_clip(self, event: int, recording: int) -> None:
        """The clip recorded around the event."""
        self._write(lambda c: c.execute("UPDATE events SET clip = ? WHERE id = ?",
                                        (recording, event)))

    def event(self, event: int) -> Event | None:
        """One event by id, or None."""
        rows = self._read("SELECT * FROM events WHERE id = ?", (event,))
        return _event(rows[0]) if rows else None

    def events(self, camera: str, t0: float, t1: float) -> list[Event]:
        """A camera's events that rose in [t0, t1), oldest first."""
        rows = self._read("SELECT * FROM events WHERE camera = ? AND rise >= ? AND rise < ? "
                          "ORDER BY rise", (camera, t0, t1))
        return [_event(r) for r in rows]

    # ---- conversions (postproc)

    def converted(self, recording: int, mp4: Path, frames: int, duration: float,
                  t: float | None = None) -> None:
        """postproc made `mp4` of the recording (a second conversion replaces the record)."""
        text = _text(mp4)
        when = time.time() if t is None else t
        self._write(lambda c: c.execute(
            "INSERT INTO conversions (recording, mp4, stem, frames, duration, converted_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (recording) DO UPDATE SET mp4 = excluded.mp4, "
            "stem = excluded.stem, frames = excluded.frames, duration = excluded.duration, "
            "converted_at = excluded.converted_at, deleted = 0",
            (recording, text, mp4.stem, frames, duration, when)))

    def conversion(self, recording: int) -> Conversion | None:
        """The recording's conversion, or None if it was never converted."""
        rows = self._read("SELECT * FROM conversions WHERE recording = ?", (recording,))
        return _conversion(rows[0]) if rows else None

    def is_converted(self, h264: Path) -> bool:
        """Whether the recording at `h264` was ever converted (whether or not its mp4 is left)."""
        return bool(self._read(
            "SELECT 1 FROM conversions c JOIN recordings r ON r.id = c.recording "
            "WHERE r.path = ?", (_text(h264),)))

    def pending_conversions(self) -> list[Recording]:
        """Closed recordings not deleted and never converted, oldest first."""
        rows = self._read(
            "SELECT r.* FROM recordings r LEFT JOIN conversions c ON c.recording = r.id "
            "WHERE r.closed = 1 AND r.deleted = 0 AND c.recording IS NULL ORDER BY r.start")
        return [_recording(r) for r in rows]

    # ---- uploads (postproc)

    def upload_attempted(self, recording: int, destination: str,
                         error: str | None = None) -> None:
        """One more try at sending the recording's mp4 to `destination` (failed: `error`)."""
        state = "failed" if error else "pending"
        self._write(lambda c: c.execute(
            "INSERT INTO uploads (recording, destination, state, attempts, last_error) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT (recording, destination) DO UPDATE SET "
            "attempts = attempts + 1, last_error = excluded.last_error, "
            "state = CASE WHEN state = 'done' THEN 'done' ELSE excluded.state END",
            (recording, destination, state, error)))

    def uploaded(self, recording: int, destination: str, t: float | None = None) -> None:
        """`destination` acknowledged the recording's mp4: it is never sent there again."""
        when = time.time() if t is None else t
        self._write(lambda c: c.execute(
            "INSERT INTO uploads (recording, destination, state, attempts, done_at) "
            "VALUES (?, ?, 'done', 1, ?) ON CONFLICT (recording, destination) DO UPDATE SET "
            "state = 'done', done_at = excluded.done_at, last_error = NULL",
            (recording, destination, when)))

    def is_uploaded(self, recording: int, destination: str) -> bool:
        """Whether `destination` acknowledged the recording's mp4."""
        return bool(self._read("SELECT 1 FROM uploads WHERE recording = ? AND destination = ? "
                               "AND state = 'done'", (recording, destination)))

    def upload(self, recording: int, destination: str) -> Upload | None:
        """The recording's upload to `destination` (state, attempts, last error), or None."""
        rows = self._read("SELECT * FROM uploads WHERE recording = ? AND destination = ?",
                          (recording, destination))
        if not rows:
            return None
        r = rows[0]
        return Upload(r["recording"], r["destination"], r["state"], r["attempts"],
                      r["last_error"], r["done_at"])

    def pending_uploads(self, destination: str) -> list[Conversion]:
        """Conversions whose mp4 is still there and `destination` has not acknowledged."""
        rows = self._read(
            "SELECT c.* FROM conversions c LEFT JOIN uploads u ON u.recording = c.recording "
            "AND u.destination = ? WHERE c.deleted = 0 AND (u.state IS NULL OR "
            "u.state != 'done') ORDER BY c.converted_at", (destination,))
        return [_conversion(r) for r in rows]

    # ---- alerts and the log

    def alert_sent(self, event: int, channel: str, t: float | None = None) -> int:
        """An alert for the event went out on `channel` ("telegram", "mqtt", …)."""
        when = time.time() if t is None else t
        return self._write(lambda c: int(c.execute(
            "INSERT INTO alerts (event, channel, sent_at) VALUES (?, ?, ?)",
            (event, channel, when)).lastrowid or 0))

    def alerted(self, event: int, channel: str) -> bool:
        """Whether an alert for the event already went out on `channel`."""
        return bool(self._read("SELECT 1 FROM alerts WHERE event = ? AND channel = ?",
                               (event, channel)))

    def log(self, kind: str, text: str, camera: str | None = None,
            t: float | None = None) -> None:
        """A line for the page's log ("recording", "conversion", "upload", "disk", …)."""
        when = time.time() if t is None else t

        def work(c: sqlite3.Connection) -> None:
            row = c.execute("INSERT INTO log (time, camera, kind, text) VALUES (?, ?, ?, ?)",
                            (when, camera, kind, text)).lastrowid or 0
            if row % LOG_PRUNE_EVERY == 0:  # the log is for people: the newest lines suffice
                c.execute("DELETE FROM log WHERE id <= ?", (row - LOG_KEPT,))
        self._write(work)

    def log_lines(self, n: int, camera: str | None = None) -> list[LogLine]:
        """The newest `n` log lines (of one camera, or all), oldest first."""
        where, params = ("WHERE camera = ?", (camera,)) if camera is not None else ("", ())
        rows = self._read(f"SELECT * FROM log {where} ORDER BY time DESC, id DESC LIMIT ?",  # noqa: S608
                          (*params, n))
        return [LogLine(r["time"], r["camera"], r["kind"], r["text"]) for r in reversed(rows)]

    # ---- the review page

    def event_views(self, camera: str | None = None, word: str | None = None,
                    t0: float | None = None, t1: float | None = None,
                    before: tuple[float, int] | None = None, limit: int = 50,
                    ident: int | None = None) -> list[EventView]:
        """Events newest first, each with its clip's state: of one camera, with a label or
        name (`word`, any case), rising in [t0, t1), older than `before` (rise, id: the last
        row of the previous page), or the one event `ident`."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if ident is not None:
            where.append("e.id = ?")
            params.append(ident)
        if camera is not None:
            where.append("e.camera = ?")
            params.append(camera)
        if word is not None:
            where.append("(EXISTS (SELECT 1 FROM json_each(e.labels) WHERE lower(value) = "
                         "lower(?)) OR EXISTS (SELECT 1 FROM json_each(e.names) WHERE "
                         "lower(value) = lower(?)))")
            params += [word, word]
        if t0 is not None:
            where.append("e.rise >= ?")
            params.append(t0)
        if t1 is not None:
            where.append("e.rise < ?")
            params.append(t1)
        if before is not None:
            where.append("(e.rise < ? OR (e.rise = ? AND e.id < ?))")
            params += [before[0], before[0], before[1]]
        rows = self._read(
            "SELECT e.*, r.path AS clip_path, r.deleted AS clip_deleted, r.kept AS kept, "  # noqa: S608
            "CASE WHEN c.deleted = 0 THEN c.mp4 END AS mp4, "
            "(SELECT COUNT(*) FROM uploads u WHERE u.recording = r.id AND u.state = 'done') "
            "AS uploaded, "
            "(SELECT group_concat(DISTINCT a.channel) FROM alerts a WHERE a.event = e.id) "
            "AS alerted "
            "FROM events e LEFT JOIN recordings r ON r.id = e.clip "
            "LEFT JOIN conversions c ON c.recording = r.id "
            f"WHERE {' AND '.join(where)} ORDER BY e.rise DESC, e.id DESC LIMIT ?",
            (*params, limit))
        return [EventView(_event(r), Path(r["clip_path"]) if r["clip_path"] else None,
                          bool(r["clip_deleted"]), bool(r["kept"]),
                          Path(r["mp4"]) if r["mp4"] else None, int(r["uploaded"] or 0),
                          tuple(sorted(r["alerted"].split(","))) if r["alerted"] else ())
                for r in rows]

    def recordings_between(self, camera: str, t0: float, t1: float,
                           kind: Kind | None = None) -> list[Recording]:
        """The camera's recordings (not deleted) overlapping [t0, t1), oldest first: a day's
        timeline. An open one counts as running until now."""
        kinds = (kind,) if kind is not None else ("continuous", "clip")
        # The lower bound on start lets the (camera, start) index skip the year before: no
        # recording lasts longer than MAX_RECORDING.
        rows = self._read(
            "SELECT * FROM recordings WHERE camera = ? AND deleted = 0 AND start < ? AND "  # noqa: S608
            f"start > ? AND coalesce(end, ?) >= ? AND kind IN ({_marks(len(kinds))}) "
            "ORDER BY start",
            (camera, t1, t0 - MAX_RECORDING, time.time(), t0, *kinds))
        return [_recording(r) for r in rows]

    def conversion_of(self, recording: int) -> Conversion | None:
        """The recording's mp4 when it still exists (retention did not delete it)."""
        c = self.conversion(recording)
        return c if c is not None and not c.deleted else None

    # ---- cameras and what their detectors learned (pancake)

    def cameras(self) -> list[str]:
        """Every camera the catalog knows of (recordings, events or settings), by name."""
        # A skip-scan of each table's camera index: one lookup per camera, not a pass over a
        # year of rows (the review page asks on every day it shows).
        def distinct(table: str) -> str:
            return (f"SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT MIN(camera) FROM {table} "  # noqa: S608 — our two table names
                    f"UNION ALL SELECT (SELECT MIN(camera) FROM {table} WHERE camera > x) "
                    "FROM c WHERE x IS NOT NULL) SELECT x FROM c WHERE x IS NOT NULL)")
        rows = self._read(f"{distinct('recordings')} UNION {distinct('events')} "  # noqa: S608
                          "UNION SELECT name FROM cameras ORDER BY 1")
        return [str(r[0]) for r in rows]

    def camera_settings(self, name: str) -> CameraSettings | None:
        """What the page set for the camera, or None if it never set anything."""
        rows = self._read("SELECT * FROM cameras WHERE name = ?", (name,))
        if not rows:
            return None
        r = rows[0]
        return CameraSettings(r["name"], r["title"], bool(r["armed"]), bool(r["continuous"]))

    def set_camera(self, name: str, title: str | None = None, armed: bool | None = None,
                   continuous: bool | None = None) -> None:
        """Set what is given, keep the rest (a new camera starts armed and recording)."""
        def work(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO cameras (name, updated) VALUES (?, ?) "
                      "ON CONFLICT (name) DO NOTHING", (name, time.time()))
            for column, value in (("title", title), ("armed", armed),
                                  ("continuous", continuous)):
                if value is not None:
                    c.execute(f"UPDATE cameras SET {column} = ?, updated = ? WHERE name = ?",  # noqa: S608
                              (value, time.time(), name))
        self._write(work)

    def learned(self, camera: str, key: str) -> str | None:
        """A detector's learned state for the camera (JSON text), or None."""
        rows = self._read("SELECT value FROM learned WHERE camera = ? AND key = ?",
                          (camera, key))
        return str(rows[0][0]) if rows else None

    def set_learned(self, camera: str, key: str, value: str) -> None:
        self._write(lambda c: c.execute(
            "INSERT INTO learned (camera, key, value, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (camera, key) DO UPDATE SET value = excluded.value, "
            "updated = excluded.updated", (camera, key, value, time.time())))

    def forget_learned(self, camera: str, key: str | None = None) -> int:
        """Forget what the camera's detectors learned (one key, or all); how many rows went."""
        if key is None:
            return self._write(lambda c: c.execute(
                "DELETE FROM learned WHERE camera = ?", (camera,)).rowcount)
        return self._write(lambda c: c.execute(
            "DELETE FROM learned WHERE camera = ? AND key = ?", (camera, key)).rowcount)

    # ---- meta

    def meta(self, key: str) -> str | None:
        """A value the programs keep in the catalog (what was imported, detector state)."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set one such value."""
        self._write(lambda c: c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value", (key, value)))


# ---------------------------------------------------------------- from the files on disk

# A file modified this recently may still be written (pancake running during a rebuild).
RECENT_SECONDS = 60.0
H264, MP4, SNAPSHOT = ".h264", ".mp4", ".jpg"
# The upload journals of versions before the catalog (postproc/upload/journal.py's format):
# mp4_dir/.uploaded/<key>.names, first line "# uploaded to LABEL", then one mp4 name a line.
JOURNAL_DIR = ".uploaded"
JOURNAL_SUFFIX = ".names"
JOURNAL_HEAD = "# uploaded to "


@dataclass(frozen=True, slots=True)
class Found:
    """One recording file on disk, as the rebuild reads it."""

    path: Path
    start: float
    kind: Kind
    frames: int | None
    end: float | None
    size: int
    closed: bool


@dataclass(frozen=True, slots=True)
class FoundMp4:
    path: Path
    frames: int
    duration: float
    mtime: float


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What rebuild() added."""

    recordings: int
    conversions: int
    gone: int  # mp4s whose recording is no longer on disk, recorded as deleted recordings
    unreadable: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One thing the catalog says that the disk does not (or the other way round)."""

    kind: str  # "missing", "unknown", "mp4 missing", "mp4 unknown", "mp4 frames"
    path: Path
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.text}"


def _files(directory: Path, suffix: str) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of the regular, not hidden files of `directory` ending in `suffix`."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(suffix):
                continue
            if entry.is_file(follow_symlinks=False):
                found.append((entry.name, entry.stat(follow_symlinks=False)))
    return sorted(found)


def _h264_frames(path: Path) -> int | None:
    """Frames in a raw H.264 file, counted by demuxing (no decode); None if unreadable."""
    import av
    import av.error

    try:
        with av.open(str(path), format="h264") as c:
            return sum(1 for p in c.demux(video=0) if p.size)
    except (av.error.FFmpegError, OSError):
        return None


def _mp4_info(path: Path, st: os.stat_result) -> FoundMp4 | None:
    import av
    import av.error

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frames = stream.frames or sum(1 for p in c.demux(stream) if p.size)
            duration = (float(stream.duration * stream.time_base)
                        if stream.duration is not None and stream.time_base is not None
                        else (c.duration or 0) / 1_000_000)
    except (av.error.FFmpegError, OSError, IndexError):
        return None
    return FoundMp4(path, frames, duration, st.st_mtime)


def scan_recordings(directory: Path, now: float | None = None) -> tuple[list[Found], list[str]]:
    """The recordings in one directory, read from names (start), `.pts` sidecars (frames and
    end; without one, frames are counted in the file), `.jpg` beside it (a clip) and mtime (a
    file changed in the last minute may still be written: not closed). Also the unreadable."""
    from raspberry_pancake.shared.remux import read_sidecar
    from raspberry_pancake.shared.retention import recording_time

    now = time.time() if now is None else now
    found, unreadable = [], []
    names = {name for name, _ in _files(directory, SNAPSHOT)}
    for name, st in _files(directory, H264):
        stem = name[:-len(H264)]
        when = recording_time(stem)
        if when is None:
            continue
        path = directory / name
        times = read_sidecar(path.with_suffix(".pts")) if path.with_suffix(".pts").exists() \
            else []
        frames: int | None = len(times) if times else _h264_frames(path)
        if frames is None:
            unreadable.append(str(path))
        end = when[0] + times[-1] if times else None
        kind: Kind = "clip" if stem + SNAPSHOT in names else "continuous"
        closed = abs(now - st.st_mtime) >= RECENT_SECONDS
        found.append(Found(path, when[0], kind, frames, end, st.st_size, closed))
    return found, unreadable


def scan_mp4s(mp4_dir: Path) -> dict[str, FoundMp4 | None]:
    """stem -> what the mp4 holds (None: unreadable) for the mp4s of `mp4_dir`."""
    return {name[:-len(MP4)]: _mp4_info(mp4_dir / name, st) for name, st in _files(mp4_dir, MP4)}


def rebuild(catalog: Catalog, h264_dirs: Sequence[Path], mp4_dir: Path | None,
            camera: str, now: float | None = None) -> Rebuilt:
    """Fill the catalog from the files on disk: every recording it does not know, and as
    converted each whose mp4 (same stem in `mp4_dir`) has the recording's frame count. An mp4
    whose recording is gone becomes a deleted recording with its conversion, so its name stays
    used and it is never made again. Uploads count as not done. Idempotent.
    Raises OSError for a directory that cannot be listed."""
    from raspberry_pancake.shared.retention import recording_time

    # All the reading first: the write transaction holds no lock across file I/O.
    found: list[Found] = []
    unreadable: list[str] = []
    for d in h264_dirs:
        recs, bad = scan_recordings(d, now)
        found += recs
        unreadable += bad
    mp4s = scan_mp4s(mp4_dir) if mp4_dir is not None else {}
    unreadable += [str(mp4_dir / (s + MP4)) for s, m in mp4s.items() if m is None and mp4_dir]
    by_stem = {f.path.stem: f for f in found}
    home = h264_dirs[0] if h264_dirs else mp4_dir
    added = conversions = gone = 0
    with catalog.transaction() as c:
        for f in found:
            text = _text(f.path)
            row = c.execute("SELECT id, frames FROM recordings WHERE path = ?",
                            (text,)).fetchone()
            if row is None:
                rid = int(c.execute(
                    "INSERT INTO recordings (camera, kind, path, dir, stem, start, end, frames,"
                    " size, closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (camera, f.kind, text, os.path.dirname(text), f.path.stem, f.start, f.end,
                     f.frames, f.size, int(f.closed))).lastrowid or 0)
                added += 1
                frames = f.frames
            else:
                rid, frames = row["id"], row["frames"]
            mp4 = mp4s.get(f.path.stem)
            if mp4 is None or frames is None or mp4.frames != frames or not f.closed:
                continue
            if c.execute("SELECT 1 FROM conversions WHERE recording = ?", (rid,)).fetchone():
                continue
            c.execute("INSERT INTO conversions (recording, mp4, stem, frames, duration, "
                      "converted_at) VALUES (?, ?, ?, ?, ?, ?)",
                      (rid, _text(mp4.path), mp4.path.stem, mp4.frames, mp4.duration,
                       mp4.mtime))
            conversions += 1
        for stem, mp4 in sorted(mp4s.items()):
            if mp4 is None or stem in by_stem or home is None:
                continue
            when = recording_time(stem)
            if when is None:
                continue
            known = c.execute(
                "SELECT 1 FROM recordings WHERE camera = ? AND stem = ? UNION ALL "
                "SELECT 1 FROM conversions WHERE mp4 = ?",
                (camera, stem, _text(mp4.path))).fetchone()
            if known:
                continue
            text = _text(home / (stem + H264))
            rid = int(c.execute(
                "INSERT INTO recordings (camera, kind, path, dir, stem, start, end, frames, "
                "closed, deleted) VALUES (?, 'continuous', ?, ?, ?, ?, ?, ?, 1, 1)",
                (camera, text, os.path.dirname(text), stem, when[0], when[0] + mp4.duration,
                 mp4.frames)).lastrowid or 0)
            c.execute("INSERT INTO conversions (recording, mp4, stem, frames, duration, "
                      "converted_at) VALUES (?, ?, ?, ?, ?, ?)",
                      (rid, _text(mp4.path), stem, mp4.frames, mp4.duration, mp4.mtime))
            gone += 1
    if added or conversions or gone:
        catalog.log("rebuild", f"rebuilt from the disk: {added} recording(s), {conversions} "
                    f"conversion(s), {gone} mp4(s) of deleted recordings", camera)
    return Rebuilt(added, conversions, gone, tuple(unreadable))


def check(catalog: Catalog, h264_dirs: Sequence[Path], mp4_dir: Path | None,
          camera: str) -> list[Disagreement]:
    """What the catalog says about `camera`'s files in these directories that the disk does
    not bear out, and the files on disk it does not know. Raises OSError (unlistable dir)."""
    out: list[Disagreement] = []
    on_disk: set[str] = set()
    for d in h264_dirs:
        on_disk |= {_text(d / name) for name, _ in _files(d, H264)}
    dirs = [_text(d) for d in h264_dirs]
    marks = ",".join("?" * len(dirs))
    known = {r["path"]: r for r in catalog._read(
        f"SELECT path, deleted FROM recordings WHERE camera = ? AND dir IN ({marks})",  # noqa: S608
        (camera, *dirs))} if dirs else {}
    for path, row in sorted(known.items()):
        if not row["deleted"] and path not in on_disk:
            out.append(Disagreement("missing", Path(path), "catalogued, not on disk"))
    from raspberry_pancake.shared.retention import recording_time
    for path in sorted(on_disk - known.keys()):
        if recording_time(Path(path).stem) is not None:
            out.append(Disagreement("unknown", Path(path), "on disk, not in the catalog"))
    if mp4_dir is None:
        return out
    mp4s = scan_mp4s(mp4_dir)
    rows = catalog._read(
        "SELECT c.mp4, c.stem, c.frames, c.deleted FROM conversions c "
        "JOIN recordings r ON r.id = c.recording WHERE r.camera = ? AND c.mp4 LIKE ?",
        (camera, _text(mp4_dir) + os.sep + "%"))
    converted = {Path(r["mp4"]).name: r for r in rows
                 if Path(r["mp4"]).parent == Path(_text(mp4_dir))}
    for name, r in sorted(converted.items()):
        mp4 = mp4s.get(r["stem"]) if name == r["stem"] + MP4 else None
        present = r["stem"] in mp4s and name == r["stem"] + MP4
        if not present and not r["deleted"]:
            out.append(Disagreement("mp4 missing", Path(r["mp4"]), "converted, not on disk"))
        elif mp4 is not None and mp4.frames != r["frames"]:
            out.append(Disagreement("mp4 frames", Path(r["mp4"]),
                                    f"{mp4.frames} frames on disk, {r['frames']} converted"))
    frames = {Path(r["path"]).stem: r["frames"] for r in catalog._read(
        "SELECT path, frames FROM recordings WHERE camera = ? AND deleted = 0", (camera,))}
    for stem, found in sorted(mp4s.items()):
        if stem + MP4 in converted or recording_time(stem) is None:
            continue
        want = frames.get(stem)
        if found is not None and want is not None and found.frames != want:
            out.append(Disagreement("mp4 frames", mp4_dir / (stem + MP4),
                                    f"{found.frames} frames, the recording has {want}: "
                                    "not counted as converted"))
        else:
            out.append(Disagreement("mp4 unknown", mp4_dir / (stem + MP4),
                                    "on disk, no conversion in the catalog"))
    return out


def read_journals(mp4_dir: Path) -> dict[str, set[str]]:
    """destination label -> the mp4 names its `.uploaded/*.names` journal acknowledges."""
    out: dict[str, set[str]] = {}
    top = mp4_dir / JOURNAL_DIR
    if not top.is_dir():
        return out
    for name, _ in _files(top, JOURNAL_SUFFIX):
        with (top / name).open("r", encoding="utf-8", errors="surrogateescape") as f:
            lines = [line.rstrip("\n") for line in f]
        if not lines or not lines[0].startswith(JOURNAL_HEAD):
            continue  # no label: the destination it was for cannot be named
        label = lines[0][len(JOURNAL_HEAD):]
        out.setdefault(label, set()).update(
            n for n in lines[1:] if n.endswith(MP4) and not n.startswith("#"))
    return out


def import_journals(catalog: Catalog, mp4_dir: Path) -> int | None:
    """Once per mp4 directory: the old upload journals' acknowledgements as done uploads (the
    destination named by the journal's label). Run after rebuild(), which knows the mp4s;
    names the catalog has no conversion for are skipped. Returns how many were imported, or
    None if this directory's journals were imported before. Raises OSError."""
    key = f"journals imported:{_text(mp4_dir)}"
    if catalog.meta(key) is not None:
        return None
    journals = read_journals(mp4_dir)
    n = 0
    with catalog.transaction() as c:
        for label, names in sorted(journals.items()):
            for name in sorted(names):
                row = c.execute("SELECT recording FROM conversions WHERE mp4 = ?",
                                (_text(mp4_dir / name),)).fetchone()
                if row is None:
                    continue
                c.execute(
                    "INSERT INTO uploads (recording, destination, state, attempts, done_at) "
                    "VALUES (?, ?, 'done', 1, ?) ON CONFLICT (recording, destination) DO "
                    "UPDATE SET state = 'done', done_at = excluded.done_at",
                    (row["recording"], label, time.time()))
                n += 1
        c.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                  "SET value = excluded.value", (key, str(time.time())))
    return n
