"""Where recordings split: wall-clock multiples of the split period, guarded by monotonic time."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

# How far the monotonic guard may run past the wall-clock boundary before it splits on its own.
# Large enough that NTP slewing never beats the wall clock to a boundary, small enough that a
# clock set back by hours costs a segment only this much longer than asked.
GUARD_SLACK = 2.0
# Taken around name choice and creation, so the segment and clip writers never pick the same
# stem in two directories at once.
_naming = threading.Lock()


def next_boundary(wall: float, period: float) -> float:
    """The first wall-clock multiple of `period` strictly after `wall` (local-time aligned)."""
    offset = time.localtime(wall).tm_gmtoff
    local = wall + offset
    return (math.floor(local / period) + 1) * period - offset


class SplitClock:
    """Says which frame starts a new segment.

    A segment ends at the next wall-clock multiple of `period` — or, when the clock is set back
    (a Pi without RTC meeting NTP), once that much monotonic time has passed: so a jump makes
    neither a multi-hour segment nor a burst of tiny ones, at most one shortened segment.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self._boundary_wall = -math.inf
        self._deadline_mono = -math.inf

    def due(self, mono: float, wall: float) -> bool:
        """True if the frame captured at (mono, wall) must start a new segment; then re-anchors."""
        if wall < self._boundary_wall and mono < self._deadline_mono:
            return False
        self.restart(mono, wall)
        return True

    def restart(self, mono: float, wall: float) -> None:
        """Anchor a segment starting now (also after a source outage)."""
        self._boundary_wall = next_boundary(wall, self.period)
        self._deadline_mono = mono + (self._boundary_wall - wall) + GUARD_SLACK


def file_stem(wall: float, with_seconds: bool) -> str:
    """YYYYMMDD-hhmm or YYYYMMDD-hhmmss in local time, as the original named files."""
    return time.strftime("%Y%m%d-%H%M%S" if with_seconds else "%Y%m%d-%H%M", time.localtime(wall))


def create_unique(directory: Path, stem: str, suffix: str,
                  siblings: Sequence[Path] = (),
                  used: Callable[[str], bool] | None = None) -> tuple[Path, BinaryIO]:
    """Create stem+suffix, or stem-1+suffix, stem-2+suffix…: never overwrite (DST, clock jumps).

    A name also taken in one of the `siblings` directories is skipped: segments and clips go
    to different directories but their mp4s meet in one, so their names must differ too.
    A stem for which `used(stem)` is true is skipped too: the catalog's history (recordings and
    mp4s deleted since, whose names a backup still holds) and a sidecar left without its video.
    O_EXCL makes the check and the creation one step within `directory`.
    """
    with _naming:
        n = 0
        while True:
            candidate = stem if n == 0 else f"{stem}-{n}"
            name = f"{candidate}{suffix}"
            path = directory / name
            n += 1
            if any((d / name).exists() for d in siblings if d != directory):
                continue
            if used is not None and used(candidate):
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            return path, os.fdopen(fd, "wb")
