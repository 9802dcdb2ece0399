"""Keeps free space on the record directories' filesystems by deleting the oldest recordings."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.catalog import Recording
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.retention import (
    RECENT_SECONDS,
    Amount,
    BusyCheck,
    Item,
    RecordingDir,
    human_bytes,
)

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0
# A disk kept at its limit by the guard would otherwise report a new episode at every rotation:
# an episode ends only once free space is back and the guard has not had to delete for this long.
REARM_AFTER = 3600.0


class GuardCatalog(Protocol):
    """The catalog as the guard uses it; None from a read means "unavailable now"."""

    def deletion_order(self, dirs: Sequence[Path],
                       destinations: Sequence[str] = ()) -> list[Recording] | None: ...
    def recording_at(self, path: Path) -> Recording | None: ...
    def deleted(self, path: Path) -> None: ...


Candidate = tuple[RecordingDir, Item]


class DiskUsage(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def free(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DiskGuardConfig:
    """record_dirs: pancake's own directories, the only ones the guard deletes from.
    mp4_dirs: where postproc puts conversions; without the catalog, a recording with an mp4
    there goes first. destinations: the upload destinations whose acknowledgements (in the
    catalog) put a converted recording first of all; empty: every destination the catalog has
    seen an upload to."""

    record_dirs: tuple[Path, ...]
    min_free: Amount
    interval: float = CHECK_INTERVAL
    mp4_dirs: tuple[Path, ...] = ()
    destinations: tuple[str, ...] = ()
    recent: float = RECENT_SECONDS
    rearm_after: float = REARM_AFTER


@dataclass
class _Episode:
    last_delete: float
    stuck_logged: bool = False


class DiskGuard(Stage):
    """A named thread checking free space every `interval` seconds.

    When a filesystem holding record directories has less than `min_free` available, the guard
    emits {"disk": "low", "free": bytes, "dir": path} once for the episode, then deletes whole
    recordings (with their sidecars) from those directories until free space is back, in the
    catalog's order (converted and uploaded everywhere, then converted, then the rest; oldest
    first in each; never a kept one) and marks them deleted there. Without a catalog, or while
    it is unavailable: converted ones (an mp4 beside or in `mp4_dirs`) first, oldest first.
    A file being written (`is_open`, default: held open by any process) or modified in the
    last `recent` seconds is never touched.
    """

    def __init__(
        self,
        cfg: DiskGuardConfig,
        stop: threading.Event,
        emit: Callable[[Event], object],
        is_open: Callable[[str], bool] | None = None,
        disk_usage: Callable[[str], DiskUsage] = shutil.disk_usage,
        clock: Callable[[], float] = time.monotonic,
        catalog: GuardCatalog | None = None,
    ) -> None:
        super().__init__("diskguard")
        self.cfg = cfg
        self._stop = stop
        self._emit = emit
        self._busy = BusyCheck(cfg.recent, is_open)
        self._disk_usage = disk_usage
        self._clock = clock
        self._catalog = catalog
        self._limiter = RateLimiter(60.0)
        self._episodes: dict[int, _Episode] = {}  # by st_dev; touched by the guard thread only
        self.deleted = 0
        self.emitted = 0

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        log.info("keeping %s free on %s", self.cfg.min_free,
                 ", ".join(str(d) for d in self.cfg.record_dirs))
        while True:
            self.check()
            if self._stop.wait(self.cfg.interval):
                return

    def check(self) -> list[Path]:
        """One pass over every filesystem; returns the files deleted. Called by the thread,
        or directly by a test."""
        deleted: list[Path] = []
        for device, dirs in self._by_filesystem().items():
            try:
                deleted += self._check_filesystem(device, dirs)
            except OSError as exc:
                self._limiter.log(log, logging.ERROR, f"fs:{device}", "cannot check %s: %s",
                                  dirs[0], exc.strerror or exc)
        return deleted

    def _by_filesystem(self) -> dict[int, list[Path]]:
        # Asked again at every pass: a USB disk may be mounted over a directory later.
        groups: dict[int, list[Path]] = {}
        for d in self.cfg.record_dirs:
            try:
                groups.setdefault(os.stat(d).st_dev, []).append(d)
            except OSError as exc:
                self._limiter.log(log, logging.ERROR, f"dir:{d}", "cannot check %s: %s",
                                  d, exc.strerror or exc)
        return groups

    def _check_filesystem(self, device: int, dirs: list[Path]) -> list[Path]:
        usage = self._disk_usage(str(dirs[0]))
        need = self.cfg.min_free.of(usage.total)
        episode = self._episodes.get(device)
        if usage.free >= need:
            if episode is not None and self._clock() - episode.last_delete >= self.cfg.rearm_after:
                del self._episodes[device]
                log.info("%s: free space is back, %s", dirs[0], human_bytes(usage.free))
            return []
        if episode is None:
            episode = self._episodes[device] = _Episode(self._clock())
            log.warning("%s: %s free, under %s: deleting the oldest recordings", dirs[0],
                        human_bytes(usage.free), self.cfg.min_free)
            self._emit(Event(disk="low", free=usage.free, dir=str(dirs[0])))
            self.emitted += 1
        return self._free_up(dirs, need, usage.free, episode)

    def _free_up(self, dirs: list[Path], need: int, free: int, episode: _Episode) -> list[Path]:
        deleted: list[Path] = []
        busy = 0
        with ExitStack() as stack:
            opened = [stack.enter_context(RecordingDir(d)) for d in dirs]
            self._busy.refresh()
            candidates = [(rdir, item) for rdir in opened for item in rdir.items(True)]
            for rdir, item, checked in self._order(dirs, candidates):
                if self._stop.is_set():  # shutting down: the next start carries on
                    return deleted
                if self._busy.reason(item) is not None:
                    busy += 1
                    continue
                if not checked and self._kept(item):
                    continue
                try:
                    rdir.delete(item)
                except OSError as exc:
                    self._limiter.log(log, logging.ERROR, f"del:{rdir.path}",
                                      "cannot delete %s: %s", item.describe(),
                                      exc.strerror or exc)
                    continue
                log.info("deleted %s to free space", item.describe())
                if self._catalog is not None and item.has_h264:
                    self._catalog.deleted(_h264(item))
                deleted += item.paths
                self.deleted += 1
                episode.last_delete = self._clock()
                free = self._disk_usage(str(dirs[0])).free
                if free >= need:
                    episode.stuck_logged = False
                    return deleted
        if not episode.stuck_logged:
            episode.stuck_logged = True
            log.error("%s: only %s free and nothing more may go (%d recording(s) in use or "
                      "too recent); recording resumes when space returns", dirs[0],
                      human_bytes(free), busy)
        return deleted

    def _order(self, dirs: list[Path],
               candidates: list[Candidate]) -> list[tuple[RecordingDir, Item, bool]]:
        """Candidates in deletion order, each with whether the catalog already cleared it
        (listed in its order: closed, not kept). The catalog's order first; then what it does
        not list (unknown to it, or left open by a crash) in the directories' order."""
        converted = self._converted()
        by_disk = sorted(candidates, key=lambda c: (self._tier(c[1], converted), c[1].age_key))
        rows = (self._catalog.deletion_order(dirs, self.cfg.destinations)
                if self._catalog is not None else None)
        if rows is None:
            if self._catalog is not None:
                self._limiter.log(log, logging.WARNING, "catalog", "catalog unavailable: "
                                  "deleting converted recordings (an mp4 in sight) first, "
                                  "then the oldest")
            return [(r, i, False) for r, i in by_disk]
        index = {str(_h264(item)): (rdir, item) for rdir, item in candidates if item.has_h264}
        first = [(*index.pop(str(r.path)), True) for r in rows if str(r.path) in index]
        ranked = {id(item) for _, item, _ in first}
        return first + [(r, i, False) for r, i in by_disk if id(i) not in ranked]

    def _kept(self, item: Item) -> bool:
        """Whether the catalog says the user keeps this recording."""
        if self._catalog is None or not item.has_h264:
            return False
        row = self._catalog.recording_at(_h264(item))
        return row is not None and row.kept

    def _converted(self) -> set[str]:
        """Stems that have an mp4 in one of the mp4 directories."""
        stems: set[str] = set()
        for d in self.cfg.mp4_dirs:
            try:
                with os.scandir(d) as entries:
                    stems.update(e.name[:-4] for e in entries if e.name.endswith(".mp4"))
            except OSError as exc:
                self._limiter.log(log, logging.WARNING, f"mp4:{d}", "cannot read %s: %s",
                                  d, exc.strerror or exc)
        return stems

    @staticmethod
    def _tier(item: Item, converted: set[str]) -> int:
        """0: safe to lose first (converted, or leftovers without a video); 1: the only copy."""
        if not item.has_h264:
            return 0
        if item.stem in converted or any(f.name.endswith(".mp4") for f in item.files):
            return 0
        return 1


def _h264(item: Item) -> Path:
    """The video of a recording item, as the catalog names it (absolute)."""
    return Path(os.path.abspath(item.directory / f"{item.stem}.h264"))
