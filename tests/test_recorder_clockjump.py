"""The wall clock jumps under a running recorder (a Pi without RTC meets NTP): the real
pipeline on testsrc, with a wall clock that steps back 9 s, forward 3 h and back 1 h."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import Listener
from recordings import decode

from raspberry_pancake.recorder.config import parse
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.pipeline import Pipeline
from raspberry_pancake.recorder.recording.splits import GUARD_SLACK
from raspberry_pancake.recorder.sources.base import SourceSpec
from raspberry_pancake.recorder.sources.pyav import AVCamera

FPS = 12
SPLIT = 3


class JumpyClock:
    """time.time() plus an offset that steps at given monotonic times after start."""

    def __init__(self, steps: list[tuple[float, float]]) -> None:
        self._start = time.monotonic()
        self._steps = steps
        self._lock = threading.Lock()

    def __call__(self) -> float:
        elapsed = time.monotonic() - self._start
        with self._lock:
            offset = sum(step for at, step in self._steps if elapsed >= at)
        return time.time() + offset


def test_clock_jumps_make_no_burst_no_giant_no_overwrite(tmp_path: Path,
                                                         listener: Listener) -> None:
    cfg = parse(["--source", "testsrc", "--fps", str(FPS), "--resolution", "160", "120",
                 "--record-continuous", str(tmp_path), "--record-split", str(SPLIT)])
    # Back 5 s at 5 s: the segment then running began at a boundary Tb in (2, 5] s; with the
    # wall boundary now out of reach, the monotonic guard ends it at Tb + SPLIT + GUARD_SLACK
    # (<= 10 s), when the wall clock reads Tb again: a name taken already. Then forward 3 h
    # at 10.5 s, and back 1 h at 14 s.
    clock = JumpyClock([(5.0, -5.0), (10.5, 3 * 3600.0), (14.0, -3600.0)])
    camera = AVCamera(SourceSpec("testsrc", ""), cfg, wall_clock=clock)
    camera.open()
    emitter = Emitter(listener.name)
    recorder = Pipeline(cfg, camera, emitter)
    recorder.start()
    started = time.monotonic()
    time.sleep(17)
    recorder.stop()
    run = time.monotonic() - started
    emitter.close()
    time.sleep(0.3)
    events = listener.events()

    paths = [Path(str(e["h264"])) for e in events]
    assert len(paths) == len(set(paths))  # every file announced once
    assert sorted(paths) == sorted(tmp_path.glob("*.h264"))  # none overwritten or lost
    assert any("-1" in p.stem for p in paths), paths  # the step back reused names: suffixed
    segs = [decode(p, 0) for p in paths]
    for s in segs:
        assert s.first_is_key and s.frames == len(s.pts_ms)
        assert s.duration <= SPLIT + GUARD_SLACK + 1.0 / FPS, (s.path.name, s.duration)
    short = [s for s in segs[1:-1] if s.duration < SPLIT - 0.5]
    assert len(short) <= 2 * 3, [(s.path.name, round(s.duration, 2)) for s in segs]
    total = sum(s.frames for s in segs)
    assert abs(total - FPS * run) <= 0.05 * FPS * run + FPS, (total, run)  # nothing lost
