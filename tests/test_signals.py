"""A burst of SIGTERM and SIGINT (systemd, `timeout`, Ctrl-C twice) stops both real daemons
cleanly: exit 0, files finished, never a handler deadlocked on a lock."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import av
import pytest

from tests.conftest import Listener, Pancake, run_pancake
from tests.postproc_servers import make_recording, send_event, start_postproc, wait_for

# Each run is a fresh process: the deadlock needs a signal to land inside another's handler,
# which a single burst does not always achieve.
RUNS = 4
BURST = 0.3
# How long a stop may take under load before we call it hung (usual: well under 2 s).
EXIT_WITHIN = 15.0


def burst(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and SIGINT alternately, as fast as we can send them, for BURST seconds."""
    end = time.monotonic() + BURST
    sigs = (signal.SIGTERM, signal.SIGINT)
    i = 0
    while time.monotonic() < end and proc.poll() is None:
        try:
            proc.send_signal(sigs[i % 2])
        except ProcessLookupError:
            break
        i += 1
        time.sleep(0.0005)


def decodable_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("run", range(RUNS))
def test_pancake_survives_a_signal_burst(run: int, tmp_path: Path, listener: Listener,
                                         pancakes: list[Pancake]) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    p = run_pancake(pancakes, ["--source", "testsrc", "--fps", "12", "--record-continuous",
                               str(rec), "--emit", listener.name], tmp_path)
    p.wait_for("first frame captured")
    time.sleep(1.0)
    burst(p.proc)
    try:
        rc = p.proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait()
        raise AssertionError(f"pancake hung after a signal burst:\n{p.log()}") from None
    assert rc == 0, p.log()
    assert "stopped" in p.log()
    wait_for(lambda: any("h264" in e for e in listener.events()), 2)
    # One segment, or two when the run straddled a quarter hour: each finished and announced.
    finished = [Path(e["h264"]) for e in listener.events() if "h264" in e]
    assert 1 <= len(finished) <= 2, listener.events()
    assert sorted(finished) == sorted(rec.glob("*.h264")), listener.events()
    assert sum(decodable_frames(f) for f in finished) >= 6, p.log()
    assert all(f.with_suffix(".pts").stat().st_size > 0 for f in finished)


@pytest.mark.parametrize("run", range(RUNS))
def test_postproc_survives_a_signal_burst(run: int, tmp_path: Path) -> None:
    proc, name, h264, mp4 = start_postproc(tmp_path)
    try:
        clip = make_recording(h264 / "20240623-1800.h264", frames=48)
        send_event(name, {"h264": str(clip)})
        burst(proc.proc)
        try:
            rc = proc.proc.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"postproc hung after a signal burst:\n{proc.log_text()}") from None
    finally:
        proc.close()
    assert rc == 0, proc.log_text()
    assert "stopped" in proc.log_text()
    # Whatever was in hand is finished or not begun: no temporary is left half-written.
    assert [f.name for f in mp4.iterdir() if not f.name.endswith(".mp4")] == [], \
        sorted(f.name for f in mp4.iterdir())
