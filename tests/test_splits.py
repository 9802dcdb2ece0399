"""Split-time arithmetic: clock-aligned boundaries, clock jumps, never-overwrite names."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from raspberry_pancake.recorder.recording.splits import (
    GUARD_SLACK,
    SplitClock,
    create_unique,
    file_stem,
    next_boundary,
)

FPS = 10.0


def segment_lengths(period: float, seconds: float, jumps: dict[float, float]) -> list[float]:
    """Drive a SplitClock with frames at FPS; `jumps` maps a monotonic time to a wall-clock step.
    Returns the length (monotonic seconds) of every finished segment."""
    clock = SplitClock(period)
    wall_offset = 1_700_000_000.0 + 0.37  # not aligned to anything
    starts: list[float] = []
    pending = dict(jumps)
    for i in range(int(seconds * FPS)):
        mono = i / FPS
        for at in [t for t in pending if t <= mono]:
            wall_offset += pending.pop(at)
        if clock.due(mono, mono + wall_offset):
            starts.append(mono)
    return [b - a for a, b in itertools.pairwise(starts)]


def test_boundaries_are_wall_clock_multiples() -> None:
    period = 900.0
    wall = time.mktime((2020, 6, 23, 17, 14, 59, 0, 0, -1))
    boundary = next_boundary(wall, period)
    assert time.localtime(boundary)[3:6] == (17, 15, 0)
    assert next_boundary(boundary, period) == boundary + period


def test_first_segment_shorter_then_exact_periods() -> None:
    lengths = segment_lengths(60.0, 400, {})
    assert lengths[0] < 60.0
    assert all(abs(x - 60.0) < 1.5 / FPS for x in lengths[1:])


@pytest.mark.parametrize("step", [-3600.0, +3 * 3600.0, -30.0, +45.0])
def test_clock_jump_makes_no_burst_and_no_giant(step: float) -> None:
    period = 60.0
    lengths = segment_lengths(period, 600, {200.05: step})
    # Never longer than a period plus the guard's slack (the clock set back by an hour).
    assert max(lengths) <= period + GUARD_SLACK + 1 / FPS
    # The jump cuts one segment and the next one re-aligns to the new clock: at most two
    # shortened segments (the first file aside), not a burst of tiny ones.
    short = [x for x in lengths[1:] if x < period - 1]
    assert len(short) <= 2, lengths
    # And recording goes on in full-length segments after the jump.
    assert abs(lengths[-1] - period) < 1.5 / FPS


def test_never_overwrite(tmp_path: Path) -> None:
    names = []
    for _ in range(3):
        path, f = create_unique(tmp_path, "20201025-0215", ".h264")
        f.close()
        names.append(path.name)
    assert names == ["20201025-0215.h264", "20201025-0215-1.h264", "20201025-0215-2.h264"]


def test_names_unique_across_sibling_directories(tmp_path: Path) -> None:
    segs, clips = tmp_path / "h264", tmp_path / "clips"
    segs.mkdir()
    clips.mkdir()
    a, f = create_unique(segs, "20200623-180511", ".h264", (segs, clips))
    f.close()
    b, f = create_unique(clips, "20200623-180511", ".h264", (segs, clips))
    f.close()
    assert (a.name, b.name) == ("20200623-180511.h264", "20200623-180511-1.h264")


def test_stems() -> None:
    wall = time.mktime((2020, 6, 23, 18, 5, 11, 0, 0, -1))
    assert file_stem(wall, with_seconds=True) == "20200623-180511"
    assert file_stem(wall, with_seconds=False) == "20200623-1805"
