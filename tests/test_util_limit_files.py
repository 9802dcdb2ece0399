"""util/limit_files_by_number.py and util/limit_files_by_size.py, run as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OLD = time.time() - 3600


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts look for pancake's catalog in the state directory: never the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def run(script: str, *args: str | Path | int,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "util" / script), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def recording(directory: Path, stem: str, size: int = 1000, sidecars: bool = True,
              mtime: float = OLD) -> None:
    exts = [".h264", ".pts", ".jpg"] if sidecars else [".h264"]
    for ext in exts:
        path = directory / (stem + ext)
        path.write_bytes(b"\0" * (size if ext == ".h264" else 10))
        os.utime(path, (mtime, mtime))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


STEMS = ["20200623-1700", "20200623-1715", "20200623-171511", "20200623-171511-1",
         "20200623-1730", "20200624-0005"]


@pytest.fixture
def h264(tmp_path: Path) -> Path:
    d = tmp_path / "h264"
    d.mkdir()
    for i, stem in enumerate(STEMS):
        # mtimes run opposite to the names: age must come from the name.
        recording(d, stem, mtime=OLD - i * 60)
    return d


def stems(directory: Path) -> list[str]:
    return sorted({p.name.rsplit(".", 1)[0] for p in directory.iterdir()})


def test_by_number_keeps_the_newest_with_their_sidecars(h264: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for stem in STEMS[:3]:
        recording(other, stem)
    # Run from elsewhere: the script finds its package from its own location.
    result = run("limit_files_by_number.py", h264, 4, other, 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""  # quiet for cron unless asked
    assert stems(h264) == STEMS[2:]
    assert len(names(h264)) == 4 * 3
    assert stems(other) == [STEMS[2]]


def test_by_number_dry_run_lists_and_keeps(h264: Path) -> None:
    before = names(h264)
    result = run("limit_files_by_number.py", "--dry-run", h264, 2)
    assert result.returncode == 0, result.stderr
    assert names(h264) == before
    lines = result.stdout.splitlines()
    assert [line.split()[2] for line in lines[:-1]] == [str(h264 / f"{s}.h264") for s in STEMS[:4]]
    assert all("(+ .jpg, .pts)" in line for line in lines[:-1])
    assert lines[-1].startswith("would delete 4 item(s)")


def test_by_number_other_files_and_only_recordings(h264: Path) -> None:
    old_notes = h264 / "notes.txt"
    old_notes.write_text("old")
    os.utime(old_notes, (0, 0))
    (h264 / "keep-me").mkdir()
    result = run("limit_files_by_number.py", "--only-recordings", h264, 6)
    assert result.returncode == 0 and old_notes.exists()
    result = run("limit_files_by_number.py", h264, 6)
    assert result.returncode == 0 and not old_notes.exists()
    assert (h264 / "keep-me").is_dir()
    assert stems(h264) == sorted([*STEMS, "keep-me"])


def test_never_deletes_what_is_being_written(h264: Path) -> None:
    recent = h264 / "20190101-0000.h264"  # the oldest name, but written 5 s ago
    recent.write_bytes(b"\0")
    os.utime(recent, (OLD, time.time() - 5))
    with open(h264 / f"{STEMS[0]}.pts", "ab"):  # held open by this process, not the script's
        result = run("limit_files_by_number.py", "-v", h264, 0)
    assert result.returncode == 0, result.stderr
    assert names(h264) == sorted([f"{STEMS[0]}.h264", f"{STEMS[0]}.jpg", f"{STEMS[0]}.pts",
                                  "20190101-0000.h264"])
    assert f"keep {h264 / STEMS[0]}.h264 (+ .jpg, .pts): open by a process" in result.stdout
    assert re.search(r"keep \S+/20190101-0000\.h264: modified [0-9]+ s ago", result.stdout)
    # Once closed and old, it goes.
    os.utime(recent, (OLD, OLD))
    assert run("limit_files_by_number.py", h264, 0).returncode == 0
    assert names(h264) == []


def test_symlinks_are_not_followed_out(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    recording(outside, "20100101-0000")
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "20100101-0000.h264").symlink_to(outside / "20100101-0000.h264")
    (rec / "linked-dir").symlink_to(outside)
    recording(rec, "20200101-0000")
    assert run("limit_files_by_number.py", rec, 0).returncode == 0
    assert names(outside) == ["20100101-0000.h264", "20100101-0000.jpg", "20100101-0000.pts"]
    assert names(rec) == ["20100101-0000.h264", "linked-dir"]
    # The directory argument itself may be a link: that is the user's choice, not an escape.
    recording(rec, "20200101-0000")
    link = tmp_path / "rec-link"
    link.symlink_to(rec)
    assert run("limit_files_by_number.py", link, 0).returncode == 0
    assert names(rec) == ["20100101-0000.h264", "linked-dir"]


def test_by_size_counts_sidecars_and_units(h264: Path) -> None:
    # Each recording is 1000 + 2 * 10 bytes: 3 fit in 3060 but not in 3059.
    assert run("limit_files_by_size.py", h264, 3060).returncode == 0
    assert stems(h264) == STEMS[3:]
    assert run("limit_files_by_size.py", h264, 3059).returncode == 0
    assert stems(h264) == STEMS[4:]


def test_by_size_units(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i, stem in enumerate(STEMS):
        recording(a, stem, size=1024 * 1024 - 20)  # 1 MiB with sidecars
        recording(b, stem, size=1024 - 20, mtime=OLD - i)  # 1 KiB with sidecars
    result = run("limit_files_by_size.py", a, "2.5M", b, "4k")
    assert result.returncode == 0, result.stderr
    assert stems(a) == STEMS[-2:]
    assert stems(b) == STEMS[-4:]


@pytest.mark.parametrize(("script", "args", "message"), [
    ("limit_files_by_number.py", ["{d}"], "pairs DIR LIMIT; got 1"),
    ("limit_files_by_number.py", ["{d}", "8", "{d}"], "got 3"),
    ("limit_files_by_number.py", ["{d}", "eight"], "'eight' is not a whole number"),
    ("limit_files_by_number.py", ["{d}", "-1"], "'-1' is not a whole number"),
    ("limit_files_by_number.py", ["{d}/missing", "8"], "missing: no such directory"),
    ("limit_files_by_number.py", ["{d}/file", "8"], "file: not a directory"),
    ("limit_files_by_number.py", [], "the following arguments are required"),
    ("limit_files_by_number.py", ["--bogus", "{d}", "1"], "unrecognized arguments: --bogus"),
    ("limit_files_by_size.py", ["{d}", "12 parsecs"], "'12 parsecs' is not a size"),
    ("limit_files_by_size.py", ["{d}", "10%"], "a percentage makes no sense here"),
    ("limit_files_by_size.py", ["{d}", "500M", "{d}"], "got 3"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, script: str, args: list[str],
                                          message: str) -> None:
    (tmp_path / "file").write_text("")
    recording(tmp_path, "20200101-0000")
    result = run(script, *[a.format(d=tmp_path) for a in args])
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith(f"{script}: error: ")
    assert len(list(tmp_path.iterdir())) == 4  # nothing deleted on bad input


def test_help_shows_examples() -> None:
    for script in ("limit_files_by_number.py", "limit_files_by_size.py"):
        result = run(script, "--help")
        assert result.returncode == 0
        assert f"python3 util/{script} h264 " in result.stdout
        assert "--dry-run" in result.stdout and "--only-recordings" in result.stdout
