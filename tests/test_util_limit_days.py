"""util/limit_days.py on a YYYY/MM/DD backup tree, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "util" / "limit_days.py"
OLD = time.time() - 3600


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts look for pancake's catalog in the state directory: never the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))

DAYS = ["2019/12/30", "2019/12/31", "2020/01/30", "2020/01/31", "2020/02/01", "2020/02/02",
        "2020/02/03"]


def run(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def put(path: Path, data: bytes = b"mp4 data", mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def tree(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    top = tmp_path / "cam1"
    for day in DAYS:
        stem = day.replace("/", "") + "-1200"
        put(top / day / f"{stem}.mp4")
        put(top / day / f"{stem}.jpg")
    return top


def days_left(top: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(top)) for p in top.glob("*/*/*/*.mp4"))


def test_keeps_newest_days_and_prunes_empty_months_and_years(backup: Path) -> None:
    (backup / "2020" / "01" / "notes.txt").write_text("not a day: keeps 2020/01 alive")
    result = run(backup, 3)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert days_left(backup) == DAYS[-3:]
    assert not (backup / "2019").exists()
    assert (backup / "2020" / "01" / "notes.txt").exists()
    assert not (backup / "2020" / "01" / "30").exists()
    result = run(backup, 1)
    assert days_left(backup) == DAYS[-1:]
    assert sorted(os.listdir(backup / "2020")) == ["01", "02"]


def test_counts_days_present_not_calendar_days_and_several_trees(backup: Path,
                                                                  tmp_path: Path) -> None:
    other = tmp_path / "cam2"
    put(other / "2021/03/01/a.mp4")
    put(other / "2021/03/05/b.mp4")
    assert run(backup, 5, other, 1).returncode == 0
    assert days_left(backup) == DAYS[-5:]  # the gap from 12/31 to 01/30 does not count
    assert tree(other) == ["2021", "2021/03", "2021/03/05", "2021/03/05/b.mp4"]


def test_ignores_what_is_not_a_date_and_never_follows_symlinks(backup: Path,
                                                               tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    put(elsewhere / "2000/01/01/precious.mp4")
    put(elsewhere / "important.mp4")
    (backup / "1999").symlink_to(elsewhere / "2000")  # a year that is a link
    (backup / "2019" / "11").mkdir()
    (backup / "2019" / "11" / "01").symlink_to(elsewhere)  # a day that is a link
    put(backup / "2020/02/30/not-a-date.mp4")
    put(backup / "2020/2/5/not-zero-padded.mp4")
    put(backup / "misc/01/01/x.mp4")
    (backup / "2019" / "12" / "30" / "link.mp4").symlink_to(elsewhere / "important.mp4")
    result = run(backup, 2)
    assert result.returncode == 0, result.stderr
    # (glob follows the links the script must not: they show up here, still intact)
    assert days_left(backup) == ["1999/01/01", "2019/11/01", "2020/02/02", "2020/02/03",
                                 "2020/02/30", "2020/2/5", "misc/01/01"]
    assert not (backup / "2019" / "12").exists()
    assert (backup / "2020/2/5/not-zero-padded.mp4").exists()
    assert tree(elsewhere) == ["2000", "2000/01", "2000/01/01", "2000/01/01/precious.mp4",
                               "important.mp4"]
    assert (backup / "1999").is_symlink() and (backup / "2019" / "11" / "01").is_symlink()


def test_dry_run_lists_days_and_deletes_nothing(backup: Path) -> None:
    before = tree(backup)
    result = run("--dry-run", backup, 5)
    assert result.returncode == 0, result.stderr
    assert tree(backup) == before
    assert result.stdout.splitlines()[:2] == [
        f"would delete {backup}/2019/12/30/ (2 files, 16 B)",
        f"would delete {backup}/2019/12/31/ (2 files, 16 B)",
    ]


def test_a_day_with_a_file_in_use_keeps_that_recording_only(backup: Path) -> None:
    stem = backup / "2019/12/31/20191231-1200"
    put(backup / "2019/12/31/20191231-1300.mp4")
    put(backup / "2019/12/31/20191231-1400.mp4.part", mtime=time.time())  # upload arriving
    with open(f"{stem}.mp4", "rb"):
        result = run("-v", backup, 5)
    assert result.returncode == 0, result.stderr
    assert tree(backup / "2019") == ["12", "12/31", "12/31/20191231-1200.jpg",
                                     "12/31/20191231-1200.mp4", "12/31/20191231-1400.mp4.part"]
    assert "open by a process" in result.stdout
    assert days_left(backup) == ["2019/12/31", *DAYS[-5:]]


def test_only_recordings_leaves_other_files_and_their_days(backup: Path) -> None:
    put(backup / "2019/12/30/README.txt")
    result = run("--only-recordings", backup, 5)
    assert result.returncode == 0, result.stderr
    assert tree(backup / "2019") == ["12", "12/30", "12/30/README.txt"]


@pytest.mark.parametrize(("args", "message"), [
    (["{d}"], "got 1"),
    (["{d}", "30", "{d}"], "got 3"),
    (["{d}", "thirty"], "'thirty' is not a whole number"),
    (["{d}", "-3"], "'-3' is not a whole number"),
    (["{d}/nope", "30"], "nope: no such directory"),
])
def test_bad_input_is_one_line_and_exit_2(backup: Path, args: list[str], message: str) -> None:
    before = tree(backup)
    result = run(*[a.format(d=backup) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert tree(backup) == before


def test_help_shows_examples() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "python3 util/limit_days.py /srv/backup/cam1 30 /srv/backup/cam2 60" in result.stdout
