"""What a recording is, and how to delete the oldest ones safely: shared by util/ and the guard."""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# A file changed this recently may still be growing (a writer that does not hold it open, an
# upload being renamed into place): leave it for the next run.
RECENT_SECONDS = 60.0

# The files that make up one recording, by extension: the video, and the sidecars written with it
# (`.pts` timestamps, `.jpg` edge snapshot, `-boxes.jpg` the same snapshot with the detection
# boxes drawn). postproc's `.mp4` keeps the same base name.
VIDEO_EXTS = (".h264", ".mp4")
BOXES_EXT = "-boxes.jpg"
SIDECAR_EXTS = (".pts", ".jpg", BOXES_EXT)
GROUP_EXTS = VIDEO_EXTS + SIDECAR_EXTS

# YYYYMMDD-hhmm (continuous, whole-minute split) or YYYYMMDD-hhmmss, then maybe -1, -2, …
_STEM = re.compile(r"(?P<date>\d{8})-(?P<clock>\d{4}|\d{6})(?:-(?P<n>[1-9]\d{0,5}))?")

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_AMOUNT = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)
_PERCENT = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*%")

Inode = tuple[int, int]  # (st_dev, st_ino): names a file whatever path reached it


def recording_time(stem: str) -> tuple[float, int] | None:
    """(epoch seconds, suffix number) encoded in a recording's base name, or None if the name
    is not a recording's. Names are in local time, as pancake writes them."""
    m = _STEM.fullmatch(stem)
    if m is None:
        return None
    clock = m["clock"] if len(m["clock"]) == 6 else m["clock"] + "00"
    try:
        when = datetime.strptime(m["date"] + clock, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    try:
        epoch = time.mktime(when.timetuple())
    except (OverflowError, ValueError):
        return None
    return epoch, int(m["n"] or 0)


def split_name(name: str) -> tuple[str, str]:
    """(stem, extension) for the extensions that group into one recording, else (name, "").
    `X-boxes.jpg` is X's sidecar when X is a recording's name (else it is a plain `.jpg`)."""
    if name.lower().endswith(BOXES_EXT) and recording_time(name[:-len(BOXES_EXT)]) is not None:
        return name[:-len(BOXES_EXT)], BOXES_EXT
    stem, dot, ext = name.rpartition(".")
    if dot and stem and "." + ext.lower() in GROUP_EXTS:
        return stem, "." + ext.lower()
    return name, ""


# ---------------------------------------------------------------- sizes and percentages


@dataclass(frozen=True, slots=True)
class Amount:
    """A quantity of disk space: bytes, or a percentage of the filesystem's size."""

    bytes: int | None = None
    percent: float | None = None

    def of(self, total: int) -> int:
        """This amount in bytes on a filesystem of `total` bytes."""
        if self.percent is not None:
            return math.ceil(total * self.percent / 100.0)
        return self.bytes or 0

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return human_bytes(self.bytes or 0)


def parse_amount(text: str, *, percent_ok: bool) -> Amount:
    """`1200000`, `500M`, `2G`, `1.5T` (K/M/G/T are powers of 1024, as `df -h`), or with
    percent_ok `10%`. Raises ValueError with a message fit for the command line."""
    cleaned = text.strip()
    m = _PERCENT.fullmatch(cleaned)
    if m is not None:
        if not percent_ok:
            raise ValueError(f"{text!r}: a percentage makes no sense here; give bytes, "
                             "or K/M/G/T such as 500M or 2G")
        pct = float(m["num"])
        if not 0 <= pct < 100:
            raise ValueError(f"{text!r}: a percentage must be under 100%")
        return Amount(percent=pct)
    m = _AMOUNT.fullmatch(cleaned)
    if m is None:
        hint = ", or a percentage such as 10%" if percent_ok else ""
        raise ValueError(f"{text!r} is not a size: give bytes (1200000) or K/M/G/T "
                         f"(500M, 2G){hint}")
    unit = m["unit"].upper()
    if not unit and "." in m["num"]:
        raise ValueError(f"{text!r}: a byte count is a whole number")
    value = float(m["num"]) * _UNITS[unit]
    if value >= 2**63:
        raise ValueError(f"{text!r} is too large")
    return Amount(bytes=round(value))


# pancake's --min-free: here beside its parser, so that the recorder's config reads it without
# importing the disk guard.
DEFAULT_MIN_FREE = "5%"


def parse_min_free(text: str) -> Amount:
    """`5%`, `2G`, `500M` or `1200000` (bytes); raises ValueError with a one-line reason."""
    try:
        return parse_amount(text, percent_ok=True)
    except ValueError as exc:
        raise ValueError(f"--min-free: {exc}") from None


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


# ---------------------------------------------------------------- "still being written"


def open_inodes(proc: str = "/proc") -> set[Inode]:
    """Every regular file any process holds open, as far as /proc lets us see.

    Other users' processes are unreadable unless we are root: the mtime rule still covers them.
    """
    found: set[Inode] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited meanwhile, or not ours to look at
            continue
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                # Sockets, pipes and anonymous inodes read as "socket:[…]" and the like.
                if not os.readlink(link).startswith("/"):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.add((st.st_dev, st.st_ino))
    return found


class BusyCheck:
    """Says whether a file may still be being written: held open by a process (every process's
    /proc/PID/fd, or the caller's own `is_open(path)`), or modified in the last `recent` s."""

    def __init__(self, recent: float = RECENT_SECONDS,
                 is_open: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._recent = recent
        self._is_open = is_open
        self._clock = clock
        self._open: set[Inode] | None = None

    def refresh(self) -> None:
        """Forget the /proc snapshot: the next question takes a new one."""
        self._open = None

    def reason(self, item: Item) -> str | None:
        """Why `item` must stay for now, or None when it may go."""
        for f, path in zip(item.files, item.paths, strict=True):
            why = self._why(path, f.inode, f.mtime)
            if why is not None:
                return why
        return None

    def reason_stat(self, path: Path, st: os.stat_result) -> str | None:
        """The same question for one file met while walking a tree."""
        return self._why(path, (st.st_dev, st.st_ino), st.st_mtime)

    def _why(self, path: Path, inode: Inode, mtime: float) -> str | None:
        age = self._clock() - mtime
        # A file stamped in the future (the clock was moved back) is not being written now.
        if -self._recent < age < self._recent:
            return f"modified {max(age, 0):.0f} s ago"
        if self._is_open is not None:
            return "being written" if self._is_open(str(path)) else None
        if self._open is None:
            self._open = open_inodes()
        return "open by a process" if inode in self._open else None


# ---------------------------------------------------------------- recordings in a directory


@dataclass(frozen=True, slots=True)
class FileInfo:
    name: str
    size: int
    disk: int  # bytes its removal gives back (0 if another hard link keeps it)
    mtime: float
    inode: Inode


@dataclass(frozen=True, slots=True)
class Item:
    """What is deleted in one go: a recording with its sidecars, or one other file."""

    directory: Path
    stem: str
    files: tuple[FileInfo, ...]
    recording: bool  # the name is a recording's (YYYYMMDD-hhmm[ss][-N])
    when: float  # the time in the name, else the newest mtime
    suffix: int

    @property
    def paths(self) -> list[Path]:
        return [self.directory / f.name for f in self.files]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def disk(self) -> int:
        return sum(f.disk for f in self.files)

    @property
    def mtime(self) -> float:
        return max(f.mtime for f in self.files)

    @property
    def has_h264(self) -> bool:
        return any(split_name(f.name)[1] == ".h264" for f in self.files)

    @property
    def age_key(self) -> tuple[float, int, str]:
        """Sort key, oldest first."""
        return self.when, self.suffix, self.stem

    def describe(self) -> str:
        """`dir/X.h264 (+ .pts, .jpg)`: what the user reads in --dry-run and -v output."""
        main = _main_file(self.files)
        others = [split_name(f.name)[1] or f.name for f in self.files if f is not main]
        extra = f" (+ {', '.join(others)})" if others else ""
        return f"{self.directory / main.name}{extra}"


def _main_file(files: Sequence[FileInfo]) -> FileInfo:
    """The video if there is one: deleted first, so that a crash leaves orphan sidecars
    (cleaned on the next run) rather than a video without its timestamps."""
    for ext in (*VIDEO_EXTS, *SIDECAR_EXTS):
        for f in files:
            if split_name(f.name)[1] == ext:
                return f
    return files[0]


class RecordingDir:
    """A directory opened once; names are read and deleted relative to it, so neither a symlink
    inside it nor one swapped in above it during a run leads anywhere else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> RecordingDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def items(self, only_recordings: bool = False) -> list[Item]:
        """Regular files, grouped into recordings with their sidecars, oldest first. Symlinks,
        subdirectories and other special files are left out: never counted, never deleted."""
        groups: dict[str, list[FileInfo]] = {}
        with os.scandir(self._fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                stem, ext = split_name(entry.name)
                key = stem if ext else "\0" + entry.name  # NUL never occurs in a file name
                groups.setdefault(key, []).append(FileInfo(
                    name=entry.name,
                    size=st.st_size,
                    disk=st.st_blocks * 512 if st.st_nlink <= 1 else 0,
                    mtime=st.st_mtime,
                    inode=(st.st_dev, st.st_ino),
                ))
        result = []
        for key, files in groups.items():
            stem = key.lstrip("\0")
            named = recording_time(stem) if not key.startswith("\0") else None
            if only_recordings and named is None:
                continue
            files.sort(key=lambda f: f.name)
            when, suffix = named if named is not None else (max(f.mtime for f in files), 0)
            result.append(Item(self.path, stem, tuple(files), named is not None, when, suffix))
        result.sort(key=lambda i: i.age_key)
        return result

    def delete(self, item: Item) -> int:
        """Remove the item's files, video first; returns the bytes given back. A file already
        gone counts as deleted. Raises OSError on the first file that cannot go."""
        return self.delete_files(item, lambda _name: None)

    def delete_files(self, item: Item, gone: Callable[[str], None]) -> int:
        """delete(), calling `gone(name)` for each file removed or found already gone (not for
        one whose name now belongs to another file), as it goes: a failure halfway still
        reports what went. Returns the bytes given back; raises OSError as delete()."""
        main = _main_file(item.files)
        freed = 0
        for f in (main, *(f for f in item.files if f is not main)):
            try:
                st = os.stat(f.name, dir_fd=self._fd, follow_symlinks=False)
                # The name now belongs to another file (replaced since the scan): leave it.
                if (st.st_dev, st.st_ino) != f.inode or not stat.S_ISREG(st.st_mode):
                    continue
                os.unlink(f.name, dir_fd=self._fd)
            except FileNotFoundError:
                gone(f.name)
                continue
            freed += f.disk
            gone(f.name)
        return freed


def iter_tree(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry below `top`, not following symlinks, with its lstat."""
    try:
        entries = list(os.scandir(top))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield Path(entry.path), st
        if stat.S_ISDIR(st.st_mode):
            yield from iter_tree(Path(entry.path))


def take_oldest(items: Iterable[Item], keep: Callable[[Item], bool],
                key: Callable[[Item], tuple[object, ...]] | None = None) -> list[Item]:
    """Walk newest to oldest; everything from the first item `keep` refuses onward goes
    (returned oldest first). `keep` sees each item once, newest first. `key` is the deletion
    order when not plain age (the catalog's: safely copied elsewhere first), first to go first."""
    ordered = sorted(items, key=key or (lambda i: i.age_key), reverse=True)
    for index, item in enumerate(ordered):
        if not keep(item):
            return list(reversed(ordered[index:]))
    return []
