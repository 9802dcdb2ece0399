"""Turns finished .h264 recordings into .mp4 (remux, never re-encode) in the converter thread."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.postproc import ledger
from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.shared.catalog import Catalog, CatalogError
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.remux import ConversionError, EmptyRecording, remux, sidecar_for

log = logging.getLogger(__name__)
_limit = RateLimiter()

# A temporary mp4 is hidden and still ends in .mp4 (MP4Box picks the format from the name).
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp.mp4"
# The largest 15-minute segment converts in seconds; MP4Box stuck longer than this is killed.
MP4BOX_TIMEOUT = 600.0
# Live events waiting for the converter; more than this means it cannot keep up.
INBOX_SIZE = 64
POLL = 0.2
# While running, the h264 dirs are scanned again this often (and as soon as the converter is
# idle after it had to drop an event), so a lost message waits minutes, not for a restart.
RESCAN_INTERVAL = 600.0


@dataclass(frozen=True, slots=True)
class Job:
    """One file to convert. `clip`: a detection clip, whose mp4 is also sent as an alert.
    `camera`: the message's (a file pancake never catalogued is recorded under it)."""

    h264: Path
    pts: Path | None = None
    clip: bool = False
    catch_up: bool = False
    camera: str = ledger.DEFAULT_CAMERA


def not_regular(path: Path) -> str | None:
    """Why `path` must not be opened, or None: only a regular file is read (a FIFO named like a
    recording or a sidecar blocks open() for good, a device node may do anything). A missing
    or unreadable path is None here: the open that follows says what is wrong with it. Stat,
    then open: a FIFO swapped in between is a race we accept (the receiver checked the file
    when its message came, and the directories are the recorder's)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "a special file")
    return f"not a regular file ({kind})"


def mp4_name(h264: Path) -> str:
    return h264.stem + ".mp4"


def run_mp4box(mp4box: str, h264: Path, out: Path, fps: float) -> None:
    """The original's conversion: `MP4Box -quiet -fps N -cat IN -new OUT`."""
    if h264.stat().st_size == 0:
        raise EmptyRecording("empty file")
    try:
        done = subprocess.run(
            [mp4box, "-quiet", "-fps", f"{fps:g}", "-cat", str(h264), "-new", str(out)],
            capture_output=True, timeout=MP4BOX_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ConversionError(f"MP4Box took over {MP4BOX_TIMEOUT:g} s") from None
    except OSError as exc:
        raise ConversionError(f"cannot run MP4Box: {exc.strerror or exc}") from None
    if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ConversionError(f"MP4Box exit {done.returncode}: {tail[0][:200]}")


@dataclass(frozen=True, slots=True)
class ConvertSettings:
    mp4_dir: Path
    fps: float
    mp4box: str | None = None  # run MP4Box at this path instead of remuxing with PyAV


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def convert(settings: ConvertSettings, job: Job, final: Path | None = None) -> Path:
    """Convert one file under a temporary name beside `final`, then rename it to `final`
    (default: the recording's name in settings.mp4_dir; the converter passes the name the
    catalog left, in the camera's folder, which is made here as needed)."""
    final = settings.mp4_dir / mp4_name(job.h264) if final is None else final
    why = not_regular(job.h264)
    if why is not None:
        raise ConversionError(why)
    tmp = final.parent / f"{TMP_PREFIX}{final.stem}{TMP_SUFFIX}"
    try:
        if final.parent != settings.mp4_dir:
            # Not parents=True: MP4_DIR gone must stay an error (OutputGone), not be remade.
            final.parent.mkdir(exist_ok=True)
        if settings.mp4box:
            run_mp4box(settings.mp4box, job.h264, tmp, settings.fps)
        else:
            remux(job.h264, tmp, settings.fps, _usable_sidecar(job))
        # On disk before it takes the final name: after a power cut the mp4 is whole or absent.
        fsync_path(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise ConversionError(f"cannot write {final}: {exc.strerror or exc}") from None
    finally:
        # Not ENOENT alone: with mp4_dir replaced by a file this is ENOTDIR, and the reason
        # worth reporting is the one above.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return final


def _usable_sidecar(job: Job) -> Path | None:
    """The job's `.pts` if it is there and a regular file; else None (timing by fps), said
    once in a while when it is there but something else (a FIFO would hang the read)."""
    sidecar = job.pts if job.pts is not None else sidecar_for(job.h264)
    why = not_regular(sidecar)
    if why is not None:
        _limit.log(log, logging.WARNING, "sidecar not regular", "%s: sidecar ignored, timing "
                   "by fps: %s", sidecar, why)
        return None
    return sidecar if sidecar.is_file() else None


def remove_stale_temporaries(mp4_dir: Path) -> None:
    """Temporary mp4s left by a conversion cut off by a power cut (camera folders too)."""
    for path in [*mp4_dir.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"),
                 *mp4_dir.glob(f"*/{TMP_PREFIX}*{TMP_SUFFIX}")]:
        try:
            path.unlink()
            log.info("removed unfinished %s", path.name)
        except OSError as exc:
            log.warning("cannot remove unfinished %s: %s", path, exc.strerror or exc)


def pending(catalog: Catalog, h264_dirs: Iterable[Path],
            settled: float = ledger.UNKNOWN_SETTLED) -> list[Job]:
    """Catch-up jobs: see ledger.pending. A file the catalog does not know is its folder's
    camera's (ledger.camera_of); for one it knows, the catalog's camera decides."""
    dirs = list(h264_dirs)
    return [Job(p, catch_up=True, camera=ledger.camera_of(p, dirs))
            for p in ledger.pending(catalog, dirs, settled)]


# (the job, its recording's catalog id, the mp4 made)
Done = Callable[[Job, int, Path], None]


class OutputGone(Exception):
    """The mp4 directory is gone or no longer a directory: no file can be converted until it
    is back. Not caught by the converter: the supervisor restarts it, then gives up and
    postproc exits, so that systemd (and whoever reads its status) sees it."""


class Converter:
    """One thread converts one file at a time: live events first, catch-up files when idle.

    What to do with each file is the catalog's word (ledger.plan): a recording it says was
    converted is never converted again, whether or not its mp4 is left; the mp4's name is never
    one another recording's mp4 has (or had). Live events wait in a bounded inbox; when it is
    full the event is dropped with a log line (the .h264 stays on disk). With `rescan`, the
    catalog and directories are looked at again once idle after a drop, and every
    RESCAN_INTERVAL, so the dropped file (or one whose message never came) is converted while
    running; otherwise at the next start.
    """

    def __init__(self, settings: ConvertSettings, catalog: Catalog, stop: threading.Event,
                 on_done: Done, inbox_size: int = INBOX_SIZE,
                 rescan: Callable[[], list[Job]] | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self._stop = stop
        self._on_done = on_done
        self._inbox: queue.Queue[Job] = queue.Queue(maxsize=inbox_size)
        self._backlog: deque[Job] = deque()
        self._backlog_lock = threading.Lock()  # guards _backlog, filled at start, drained here
        self._limiter = RateLimiter()
        self._rescan = rescan
        self._next_rescan = time.monotonic() + RESCAN_INTERVAL
        self._dropped = threading.Event()  # set by submit() on a full inbox
        self._thread = StageThread("converter", self._run)
        # The job a conversion was busy with when the loop died: it is not taken again in
        # this run (a rescan would find it), so that one bad file cannot kill the stage
        # over and over. Only the converter's thread touches these two.
        self._in_hand: Job | None = None
        self._skip: set[Path] = set()
        self.converted = 0
        self.failed = 0

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> bool:
        try:
            self._inbox.put_nowait(job)
        except queue.Full:
            self._dropped.set()
            self._limiter.log(log, logging.WARNING, "full",
                              "conversion queue full: dropped %s (a rescan of the directories "
                              "converts it later)", job.h264)
            return False
        return True

    def catch_up(self, jobs: list[Job]) -> None:
        with self._backlog_lock:
            self._backlog.extend(jobs)

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def _next(self) -> Job | None:
        try:
            job = self._inbox.get_nowait()
        except queue.Empty:
            pass
        else:
            return self._unless_skipped(job)
        with self._backlog_lock:
            while self._backlog:
                job = self._backlog.popleft()
                # Retention may have deleted it meanwhile, or it stopped the converter
                # before; a live event converting it meanwhile is the catalog's to tell.
                if job.h264 not in self._skip and job.h264.exists():
                    return job
        if self._rescan is not None and (self._dropped.is_set()
                                         or time.monotonic() >= self._next_rescan):
            self._dropped.clear()
            self._next_rescan = time.monotonic() + RESCAN_INTERVAL
            jobs = self._rescan()
            if jobs:
                log.info("rescan: %d recording(s) to convert", len(jobs))
                with self._backlog_lock:
                    self._backlog.extend(jobs)
                return None
        try:
            job = self._inbox.get(timeout=POLL)
        except queue.Empty:
            return None
        return self._unless_skipped(job)

    def _unless_skipped(self, job: Job) -> Job | None:
        if job.h264 not in self._skip:
            return job
        self._limiter.log(log, logging.WARNING, f"skip {job.h264}",
                          "%s: not converted: it stopped the converter earlier in this run",
                          job.h264)
        return None

    def _run(self) -> None:
        if self._in_hand is not None:
            self._skip.add(self._in_hand.h264)
            log.error("%s: not converted: it stopped the converter (it is tried again at the "
                      "next start)", self._in_hand.h264)
            self._in_hand = None
        while not self._stop.is_set():
            job = self._next()
            if job is None:
                continue
            self._convert_one(job)
        left = self._inbox.qsize() + len(self._backlog)
        if left:
            log.info("stopping: %d file(s) left unconverted for the next start", left)

    def _convert_one(self, job: Job) -> None:
        # Before the catalog's plan, which reads a file it does not know (its frames).
        why = not_regular(job.h264)
        if why is not None:
            self._limiter.log(log, logging.WARNING, "not regular", "%s: not converted: %s",
                              job.h264, why)
            return
        try:
            p = ledger.plan(self.catalog, job.h264, self.settings.mp4_dir, job.camera,
                            job.clip, job.catch_up)
        except ledger.Skip as exc:
            level = logging.DEBUG if job.catch_up else logging.INFO
            log.log(level, "%s: not converted: %s", job.h264, exc)
            return
        except CatalogError as exc:
            # Not converted now; the catalog still says so, so the next rescan retries it.
            self._limiter.log(log, logging.ERROR, "catalog", "%s: not converted now: %s",
                              job.h264, exc)
            return
        if p.adopt:
            self._record(job, p, p.mp4)
            return
        if p.mp4.name != mp4_name(job.h264):
            log.warning("%s: %s belongs to another recording: converting into %s instead "
                        "(nothing is replaced)", job.h264, mp4_name(job.h264), p.mp4.name)
        # Left set only when convert() raises something unforeseen (see _run).
        self._in_hand = job
        try:
            mp4 = convert(self.settings, job, p.mp4)
        except EmptyRecording as exc:
            self._in_hand = None
            log.warning("%s: skipped: %s", job.h264, exc)
            return
        except ConversionError as exc:
            self._in_hand = None
            if not self.settings.mp4_dir.is_dir():
                raise OutputGone(f"{self.settings.mp4_dir} is gone or not a directory "
                                 f"({exc})") from None
            self.failed += 1
            log.error("%s: conversion failed: %s", job.h264, exc)
            self._note(f"{job.h264.name}: conversion failed: {exc}"[:200], p.recording.camera)
            return
        self._in_hand = None
        self.converted += 1
        log.info("converted %s -> %s%s", job.h264, mp4, " (catch-up)" if job.catch_up else "")
        self._record(job, p, mp4)

    def _note(self, text: str, camera: str) -> None:
        """A line for the page's log; the catalog failing to take it costs only the line."""
        try:
            self.catalog.log("conversion", text, camera)
        except CatalogError as exc:
            self._limiter.log(log, logging.ERROR, "catalog", "cannot log to the catalog: %s",
                              exc)

    def _record(self, job: Job, p: ledger.Plan, mp4: Path) -> None:
        try:
            ledger.record(self.catalog, p, mp4)
        except CatalogError as exc:
            # The mp4 stays; the next rescan finds it under this name with its frames and
            # records it then (ledger.plan adopts it), so it is neither lost nor made twice.
            self._limiter.log(log, logging.ERROR, "catalog", "%s: converted, not recorded "
                              "yet: %s", mp4, exc)
            return
        if p.adopt:
            log.info("%s: %s was already there with its frames: recorded as its conversion",
                     job.h264, mp4.name)
        self._on_done(job, p.recording.id, mp4)
