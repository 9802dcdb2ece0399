"""The catalog as postproc uses it: opening it, what to convert, under which name, what it made."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.shared.catalog import (
    Catalog,
    CatalogError,
    CatalogUnavailable,
    Recording,
    import_journals,
    rebuild,
)
from raspberry_pancake.shared.events import CAMERA_NAME
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.remux import read_sidecar, sidecar_for
from raspberry_pancake.shared.retention import recording_time
from raspberry_pancake.shared.statedir import ensure

log = logging.getLogger(__name__)

# A single-camera pancake's messages carry no camera: DESIGN.md "Cameras and names".
DEFAULT_CAMERA = "cam"
# A .h264 the catalog does not know is taken by catch-up only once unchanged for this long
# (pancake of an older version, or a file copied in by hand, may still be writing it).
UNKNOWN_SETTLED = 60.0
# While pancake has not made the catalog yet (or is replacing a damaged one): tried again this
# often, with a log line at most every WAIT_LOG_EVERY seconds.
OPEN_RETRY = 1.0
WAIT_LOG_EVERY = 60.0
# Names tried after the recording's own: STEM-1 … STEM-MAX_SUFFIX.
MAX_SUFFIX = 9999
H264, MP4 = ".h264", ".mp4"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the converter does with one job: make `mp4` of `recording`, or (adopt) record the
    mp4 already there under that name as its conversion."""

    recording: Recording
    mp4: Path
    adopt: bool = False
    frames: int = 0
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class Mp4Info:
    frames: int
    duration: float


def mp4_info(path: Path) -> Mp4Info | None:
    """Frames and duration of an mp4 (read from its moov, no decode); None if unreadable."""
    import av
    import av.error

    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frames = stream.frames or sum(1 for p in c.demux(stream) if p.size)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (c.duration or 0) / 1_000_000
    except (av.error.FFmpegError, OSError, IndexError):
        return None
    return Mp4Info(frames, duration)


def _h264_frames(path: Path) -> int | None:
    """Frames of a raw H.264 file: its sidecar's lines, else counted by demuxing."""
    times = read_sidecar(sidecar_for(path)) if sidecar_for(path).is_file() else []
    if times:
        return len(times)
    import av
    import av.error

    try:
        with av.open(str(path), format="h264") as c:
            return sum(1 for p in c.demux(video=0) if p.size)
    except (av.error.FFmpegError, OSError):
        return None


# ---------------------------------------------------------------- opening


def open_catalog(path: Path, state_dir: Path | None, stop: threading.Event,
                 h264_dirs: Sequence[Path], mp4_dir: Path) -> Catalog | None:
    """Open the catalog pancake owns, waiting (logged) while it is missing or damaged; None if
    `stop` is set first. A file that does not exist at all is made here, so that a postproc with
    no pancake ever running still works, and filled from the files on disk (as pancake would):
    an mp4 with its recording's frame count counts as converted. Raises CatalogError for what
    waiting cannot cure (a newer schema, a directory we may not write)."""
    if state_dir is not None:
        try:
            ensure(state_dir)
        except OSError as exc:
            raise CatalogError(f"state directory {state_dir}: {exc.strerror or exc}") from None
    limiter = RateLimiter(WAIT_LOG_EVERY)
    while not stop.is_set():
        try:
            if not path.exists():
                catalog = Catalog.open(path, owner=True)
                if catalog.fresh:
                    _fill(catalog, h264_dirs, mp4_dir)
                return catalog
            return Catalog.open(path, owner=False)
        except CatalogUnavailable as exc:
            limiter.log(log, logging.WARNING, "wait", "catalog unavailable (%s): waiting for "
                        "pancake to make it", exc)
        stop.wait(OPEN_RETRY)
    return None


def _fill(catalog: Catalog, h264_dirs: Sequence[Path], mp4_dir: Path) -> None:
    log.info("made a new catalog %s: filling it from the files on disk", catalog.path)
    try:
        done = rebuild(catalog, list(h264_dirs), mp4_dir, DEFAULT_CAMERA)
    except (OSError, CatalogError) as exc:
        log.error("cannot fill the new catalog from the disk: %s",
                  exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
        return
    log.info("catalog filled from the disk: %d recording(s), %d conversion(s)",
             done.recordings, done.conversions + done.gone)


def import_old_journals(catalog: Catalog, mp4_dir: Path) -> None:
    """The `.uploaded/*.names` journals of versions before the catalog, once."""
    try:
        n = import_journals(catalog, mp4_dir)
    except (OSError, CatalogError) as exc:
        log.error("cannot import the upload journals of %s: %s", mp4_dir, exc)
        return
    if n:
        log.info("imported %d acknowledged upload(s) from %s/.uploaded", n, mp4_dir)


# ---------------------------------------------------------------- what to convert


def in_dirs(path: Path, dirs: Iterable[Path]) -> bool:
    """Inside one of the (resolved) directories, as the receiver's PathPolicy judges it."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(d) and real != d for d in dirs)


def camera_dir(mp4_dir: Path, camera: str) -> Path:
    """Where a camera's mp4s go: MP4_DIR itself for the default camera (single-camera
    installations keep their paths), MP4_DIR/NAME/ for the others."""
    if camera == DEFAULT_CAMERA or not CAMERA_NAME.fullmatch(camera):
        return mp4_dir
    return mp4_dir / camera


def camera_of(h264: Path, h264_dirs: Iterable[Path]) -> str:
    """The camera a recording's folder names: DIR/NAME/x.h264 is NAME's (pancake --config
    records there), DIR/x.h264 the default camera's."""
    parent = Path(os.path.realpath(h264)).parent
    dirs = {Path(os.path.realpath(d)) for d in h264_dirs}
    if parent not in dirs and parent.parent in dirs and CAMERA_NAME.fullmatch(parent.name):
        return parent.name
    return DEFAULT_CAMERA


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    """The directory's entries and those of its camera subfolders (DIR/NAME/)."""
    entries = list(os.scandir(directory))
    for entry in list(entries):
        try:
            if not (CAMERA_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
                continue
            entries += os.scandir(entry.path)
        except OSError as exc:
            log.error("catch-up: cannot list %s: %s", entry.path, exc.strerror or exc)
    return entries


def unknown_settled(catalog: Catalog, h264_dirs: Iterable[Path],
                    settled: float = UNKNOWN_SETTLED) -> list[Path]:
    """The regular .h264 files of the directories (and of their camera subfolders) the
    catalog has never heard of, unchanged for `settled` seconds: an older pancake's, or copied
    in by hand."""
    now = time.time()
    found: list[Path] = []
    for directory in h264_dirs:
        try:
            entries = _listing(directory)
        except OSError as exc:
            log.error("catch-up: cannot list %s: %s", directory, exc.strerror or exc)
            continue
        for entry in entries:
            if not entry.name.endswith(H264) or entry.name.startswith("."):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < settled:
                    continue
            except OSError:
                continue  # deleted since the listing (retention runs while we scan)
            path = Path(entry.path)
            if catalog.recording_at(path) is None:
                found.append(path)
    return found


def pending(catalog: Catalog, h264_dirs: Sequence[Path],
            settled: float = UNKNOWN_SETTLED) -> list[Path]:
    """Catch-up: what the catalog says pancake closed and nobody converted (in these
    directories or their camera subfolders, still on disk), plus the settled files it does
    not know; oldest first. A recording pancake still has open is never listed: its message
    (or the next rescan, once it is closed) brings it."""
    dirs = [Path(os.path.realpath(d)) for d in h264_dirs]
    paths = [r.path for r in catalog.pending_conversions()
             if in_dirs(r.path, dirs) and r.path.is_file()]
    paths += unknown_settled(catalog, dirs, settled)
    return sorted(dict.fromkeys(paths), key=lambda p: (p.name, str(p)))


# ---------------------------------------------------------------- one conversion


class Skip(Exception):
    """The job is not converted; the message says why (logged by the caller)."""


def _adopt_recording(catalog: Catalog, h264: Path, camera: str, clip: bool) -> Recording:
    """A row for a file pancake never catalogued, from what its name, sidecar and size say."""
    try:
        st = h264.stat()
    except OSError as exc:
        raise Skip(f"gone: {exc.strerror or exc}") from None
    when = recording_time(h264.stem)
    start = when[0] if when is not None else st.st_mtime
    times = read_sidecar(sidecar_for(h264)) if sidecar_for(h264).is_file() else []
    frames = len(times) if times else _h264_frames(h264)
    end = start + times[-1] if times else st.st_mtime
    rid = catalog.recording_opened(camera, "clip" if clip else "continuous", h264, start)
    catalog.recording_closed(rid, end, frames or 0, st.st_size)
    catalog.log("recording", f"{h264.name}: not catalogued by pancake, added by postproc",
                camera)
    rec = catalog.recording(rid)
    assert rec is not None  # just written, by us
    return rec


def _owner(catalog: Catalog, mp4: Path) -> int | None:
    """The recording whose conversion is (or was: deleted, maybe uploaded) `mp4`."""
    with catalog.transaction() as c:
        row = c.execute("SELECT recording FROM conversions WHERE mp4 = ?",
                        (os.path.abspath(mp4),)).fetchone()
    return None if row is None else int(row[0])


def _stem_taken(catalog: Catalog, stem: str, rec: Recording) -> bool:
    """Another recording has this base name: its mp4 will want it."""
    with catalog.transaction() as c:
        row = c.execute("SELECT 1 FROM recordings WHERE stem = ? AND id != ? LIMIT 1",
                        (stem, rec.id)).fetchone()
    return row is not None


def plan(catalog: Catalog, h264: Path, mp4_dir: Path, camera: str = DEFAULT_CAMERA,
         clip: bool = False, catch_up: bool = False) -> Plan:
    """Decide one job from the catalog; raises Skip (or CatalogError). The mp4 goes into the
    recording's camera folder (camera_dir), the camera the catalog has for it."""
    rec = catalog.recording_at(h264)
    if rec is None:
        rec = _adopt_recording(catalog, h264, camera, clip)
    elif catalog.conversion(rec.id) is not None:
        # Whether or not its mp4 is still there: retention may keep fewer mp4s than h264s.
        raise Skip("converted before (the catalog says so)")
    elif catch_up and not rec.closed:
        raise Skip("pancake is still writing it")
    if rec.deleted:
        raise Skip("deleted (the catalog says so)")
    out = camera_dir(mp4_dir, rec.camera)
    for n in range(MAX_SUFFIX + 1):
        stem = rec.stem if n == 0 else f"{rec.stem}-{n}"
        mp4 = out / (stem + MP4)
        owner = _owner(catalog, mp4)
        if owner is not None and owner != rec.id:
            continue  # another recording's mp4, here or only on a backup now
        if n and _stem_taken(catalog, stem, rec):
            continue
        if mp4.exists():
            # No recording claims it: a conversion cut off between its rename and the
            # catalog (kill -9), or an older version's. Ours if it holds our frames; else it
            # stays as it is and we take the next name.
            info = mp4_info(mp4)
            if n == 0 and info is not None and rec.frames and info.frames == rec.frames:
                return Plan(rec, mp4, adopt=True, frames=info.frames, duration=info.duration)
            continue
        return Plan(rec, mp4)
    raise Skip(f"no free mp4 name for {rec.stem} in {out}")


def record(catalog: Catalog, p: Plan, mp4: Path) -> Mp4Info:
    """The conversion, once the mp4 is on disk under its final name."""
    info = Mp4Info(p.frames, p.duration) if p.adopt else mp4_info(mp4)
    if info is None:
        info = Mp4Info(p.recording.frames or 0, 0.0)
    catalog.converted(p.recording.id, mp4, info.frames, info.duration)
    catalog.log("conversion", f"{p.recording.path.name} -> {mp4.name}"
                + (" (found on disk)" if p.adopt else ""), p.recording.camera)
    return info
