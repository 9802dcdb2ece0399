"""util/catalog.py rebuild and check on real recordings, run as a user would run it."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.remux import remux
from tests.postproc_servers import ROOT, make_recording

SCRIPT = ROOT / "util" / "catalog.py"
OLD = time.time() - 3600


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.fixture
def disk(tmp_path: Path) -> tuple[Path, Path]:
    rec, mp4 = tmp_path / "rec", tmp_path / "mp4"
    rec.mkdir()
    mp4.mkdir()
    for stem in ("20260101-1000", "20260101-1015"):
        make_recording(rec / f"{stem}.h264", 24, [i * 1000 / 12 for i in range(24)])
    remux(rec / "20260101-1000.h264", mp4 / "20260101-1000.mp4", 12.0,
          rec / "20260101-1000.pts")
    for p in [*rec.iterdir(), *mp4.iterdir()]:
        os.utime(p, (OLD, OLD))
    return rec, mp4


def test_rebuild_then_check_with_an_explicit_catalog(tmp_path: Path,
                                                     disk: tuple[Path, Path]) -> None:
    rec, mp4 = disk
    db = tmp_path / "my.db"
    done = run("rebuild", rec, "--mp4-dir", mp4, "--catalog", db)
    assert done.returncode == 0, done.stderr
    assert "added 2 recording(s), 1 conversion(s)" in done.stdout
    with Catalog.open(db) as c:
        assert [r.stem for r in c.pending_conversions()] == ["20260101-1015"]
    ok = run("check", rec, "--mp4-dir", mp4, "--catalog", db)
    assert ok.returncode == 0 and "agrees with the disk" in ok.stdout, ok.stdout + ok.stderr
    (rec / "20260101-1015.h264").unlink()
    bad = run("check", rec, "--mp4-dir", mp4, "--catalog", db)
    assert bad.returncode == 1
    assert f"missing: {rec / '20260101-1015.h264'}: catalogued, not on disk" in bad.stdout
    assert "1 disagreement(s)" in bad.stdout


def test_the_state_dir_holds_the_catalog_by_default(tmp_path: Path,
                                                    disk: tuple[Path, Path]) -> None:
    rec, _ = disk
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    done = run("rebuild", rec, env=env)
    assert done.returncode == 0, done.stderr
    state = tmp_path / "xdg" / "pancake"
    assert (state / "pancake.db").is_file()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    moved = run("rebuild", rec, "--state-dir", tmp_path / "elsewhere", env=env)
    assert moved.returncode == 0, moved.stderr
    assert (tmp_path / "elsewhere" / "pancake.db").is_file()


def test_rebuild_moves_a_garbage_catalog_aside(tmp_path: Path, disk: tuple[Path, Path]) -> None:
    rec, mp4 = disk
    db = tmp_path / "pancake.db"
    db.write_bytes(b"garbage " * 1000)
    done = run("rebuild", rec, "--mp4-dir", mp4, "--catalog", db)
    assert done.returncode == 0, done.stderr
    assert "damaged, moved aside to pancake.db.corrupt-" in done.stdout
    assert "added 2 recording(s)" in done.stdout
    assert len(list(tmp_path.glob("pancake.db.corrupt-*"))) == 1
    # check does not touch a damaged catalog: it says so in one line.
    db.write_bytes(b"garbage " * 1000)
    bad = run("check", rec, "--catalog", db)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert db.read_bytes() == b"garbage " * 1000


def test_help_examples_run(tmp_path: Path) -> None:
    shown = run("--help")
    assert shown.returncode == 0
    found = re.findall(r"python3 util/catalog.py (.+)$", shown.stdout, re.MULTILINE)
    assert [f.split()[0] for f in found] == ["rebuild", "check"]
    for line in found:
        args = [str(tmp_path / a.lstrip("/")) if a.startswith("/") else a
                for a in shlex.split(line)]
        for a in args:
            if a.startswith(str(tmp_path)):
                Path(a).mkdir(parents=True, exist_ok=True)
        done = run(*args, "--catalog", tmp_path / "x.db")
        assert done.returncode == 0, (line, done.stdout, done.stderr)


@pytest.mark.parametrize("args, says", [
    (["rebuild"], "the following arguments are required"),
    (["fix", "{rec}"], "invalid choice"),
    (["rebuild", "{tmp}/nowhere"], "nowhere: no such directory"),
    (["rebuild", "{rec}/20260101-1000.h264"], "not a directory"),
    (["rebuild", "{rec}", "--mp4-dir", "{tmp}/nowhere"], "no such directory"),
    (["rebuild", "{rec}", "--camera", "Front Door"], "--camera"),
    (["rebuild", "{rec}", "--catalog", "{tmp}"], "is a directory"),
    (["rebuild", "{rec}", "--catalog", "{tmp}/no/such/x.db"], "its directory does not exist"),
    (["check", "{rec}", "--catalog", "{tmp}/absent.db"], "no catalog"),
])
def test_bad_input_is_one_line(tmp_path: Path, disk: tuple[Path, Path], args: list[str],
                               says: str) -> None:
    rec, _ = disk
    done = run(*[a.format(rec=rec, tmp=tmp_path) for a in args])
    assert done.returncode in (1, 2) and done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # Bad input is exit 2; a check with no catalog to check is 1 (nothing wrong with the line).
    assert done.returncode == (1 if says == "no catalog" else 2)
