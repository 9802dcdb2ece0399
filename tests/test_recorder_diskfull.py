"""The disk fills up under pancake (a real 4 MiB tmpfs): the live view keeps working, no
burst of empty files, and recording resumes by itself when space returns."""

from __future__ import annotations

import errno
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Listener, Pancake, run_pancake, tmpfs
from recordings import decode


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "4m") as mnt:
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield mnt


def status(p: Pancake) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/status", timeout=5) as r:
        return dict(json.load(r))


def test_full_disk_then_space_returns(full_fs: Path, listener: Listener,
                                      pancakes: list[Pancake], tmp_path: Path) -> None:
    p = run_pancake(pancakes, ["--source", "testsrc", "--fps", "12", "--resolution", "320",
                               "240", "--record-continuous", str(full_fs), "--min-free", "1",
                               "--emit", listener.name], tmp_path)
    p.wait_for("segment write failed", timeout=30)
    time.sleep(4)
    assert p.proc.poll() is None
    st = status(p)  # the live view still answers, with frames flowing
    # 12 are asked; what matters is that capture goes on, which a loaded machine still shows.
    assert float(st["capture_fps"]) > 2, st  # type: ignore[arg-type]
    during = list(full_fs.glob("*.h264"))
    assert len(during) <= 1, during  # no new (empty) file every second while full
    (full_fs / "filler").unlink()
    p.wait_for("recording resumed", timeout=40)
    time.sleep(2.5)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    log = p.log()
    assert "Traceback" not in log
    assert log.count("segment write failed") <= 3, log  # rate-limited
    files = sorted(full_fs.glob("*.h264"))
    assert files, log
    last = decode(files[-1], 0)
    assert last.first_is_key and last.frames == len(last.pts_ms) >= 12
    announced = [e["h264"] for e in listener.events() if "h264" in e]
    assert sorted(announced) == sorted(str(f) for f in files)  # each file whole or gone
    assert not [f for f in full_fs.glob("*.pts") if not f.with_suffix(".h264").exists()]
