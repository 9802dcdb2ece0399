"""Upload journal: which mp4s of a directory one destination has acknowledged."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

JOURNAL_DIR = ".uploaded"
JOURNAL_SUFFIX = ".names"
# The journal is rewritten with only the names still on disk when its stale lines outnumber
# the live ones by this much (a Pi may run for months between restarts).
JOURNAL_SLACK = 256


def journal_key(label: str) -> str:
    """A short, stable file name for one destination (its spec, which holds no secret)."""
    return hashlib.sha256(label.encode()).hexdigest()[:12]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UploadJournal:
    """Which mp4s of one directory one destination has acknowledged.

    `mp4_dir/.uploaded/<key>.names`, key = a short hash of the destination's spec (user, host,
    port, remote dir: a changed spec is a new destination that gets everything). One name per
    line, appended and fsync'd only after the upload's size check and rename succeeded; the
    first line is a comment naming the destination for whoever looks. A subdirectory, because
    the retention scripts and the disk guard count and delete only regular files of the
    directory itself: the journal is never taken for a recording, never deleted with one.

    A name whose file is gone (a retention script deleted it) is ignored; the file is
    rewritten with only the names still present on start, and whenever the stale lines
    outnumber the live ones by JOURNAL_SLACK, so it does not grow forever. A line torn by a
    power cut names no file (every candidate ends in .mp4) and goes at the next rewrite.
    Losing the journal costs duplicate uploads, never a missing one.
    """

    def __init__(self, mp4_dir: Path, label: str) -> None:
        self.mp4_dir = mp4_dir
        self.label = label
        self.path = mp4_dir / JOURNAL_DIR / (journal_key(label) + JOURNAL_SUFFIX)
        self._lock = threading.Lock()  # guards _names, _lines and the file (worker vs trigger)
        self._names: set[str] = set()
        self._lines = 0
        self._limiter = RateLimiter()

    def load(self) -> None:
        """Read the journal and rewrite it with only the names whose file is still there."""
        names: list[str] = []
        try:
            with self.path.open("r", encoding="utf-8", errors="surrogateescape") as f:
                names = [line.rstrip("\n") for line in f if not line.startswith("#")]
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("%s: cannot read upload journal %s (%s): its files are offered again",
                      self.label, self.path, exc.strerror or exc)
        with self._lock:
            self._lines = len(names)
            self._names = set(names)
            self._compact(self.present())

    def present(self) -> set[str]:
        """Names of the mp4s in the directory (regular files, not hidden)."""
        found: set[str] = set()
        try:
            with os.scandir(self.mp4_dir) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(".mp4") or "\n" in name:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        found.add(name)
        except OSError as exc:
            self._limiter.log(log, logging.ERROR, "list", "%s: cannot list %s: %s",
                              self.label, self.mp4_dir, exc.strerror or exc)
        return found

    def _compact(self, present: set[str]) -> None:
        """Caller holds the lock. Rewrite under a temporary name, then rename."""
        live = self._names & present
        if live == self._names and self._lines == len(live) and self.path.exists():
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(exist_ok=True)
            with tmp.open("w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"# uploaded to {self.label}\n")
                f.writelines(name + "\n" for name in sorted(live))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            log.error("%s: cannot write upload journal %s: %s", self.label, self.path,
                      exc.strerror or exc)
            tmp.unlink(missing_ok=True)
            return
        self._names, self._lines = live, len(live)

    def unacknowledged(self) -> list[Path]:
        """The directory's mp4s this destination has not acknowledged, oldest name first
        (recording names sort by time); compacts the journal when it has grown stale."""
        present = self.present()
        with self._lock:
            if self._lines > 2 * len(self._names & present) + JOURNAL_SLACK:
                self._compact(present)
            todo = present - self._names
        return [self.mp4_dir / name for name in sorted(todo)]

    def acknowledged(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def record(self, mp4: Path) -> None:
        """Append one uploaded name, fsync'd. A failure is logged: the file is uploaded again
        at the next catch-up (a duplicate, never a loss)."""
        if mp4.parent != self.mp4_dir or "\n" in mp4.name:
            return
        with self._lock:
            try:
                created = not self.path.exists()
                if created:
                    self.path.parent.mkdir(exist_ok=True)
                with self.path.open("a", encoding="utf-8", errors="surrogateescape") as f:
                    if created:
                        f.write(f"# uploaded to {self.label}\n")
                    f.write(mp4.name + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                if created:
                    _fsync_dir(self.path.parent)
            except OSError as exc:
                self._limiter.log(log, logging.ERROR, "write",
                                  "%s: cannot append to upload journal %s: %s", self.label,
                                  self.path, exc.strerror or exc)
                return
            self._names.add(mp4.name)
            self._lines += 1
