"""The util/limit_*.py scripts with pancake's catalog: kept, marked, its order, and without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tmpfs

from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.retention import recording_time
from tests.postproc_servers import make_recording

ROOT = Path(__file__).resolve().parent.parent
OLD = time.time() - 3600
DESTS = ("backup-sftp", "backup-ftp")
# Oldest first. The first is converted only; the second uploaded to one destination of two;
# the third uploaded to both; the fourth, the newest, never converted.
STEMS = ["20240101-1000", "20240101-1100", "20240101-1200", "20240101-1300"]


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def run(script: str, *args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "util" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def old(path: Path) -> Path:
    os.utime(path, (OLD, OLD))
    return path


def stems(directory: Path) -> list[str]:
    return sorted({p.name.split(".")[0] for p in directory.iterdir()})


@dataclass
class Setup:
    db: Path
    h264: Path
    mp4: Path
    ids: dict[str, int]


UPLOADED_TO = {STEMS[1]: DESTS[:1], STEMS[2]: DESTS}


def fill(top: Path, kept: tuple[str, ...] = (), frames: int = 24,
         state: Path | None = None) -> Setup:
    """Real recordings (with .pts and .jpg sidecars) and their mp4s, and a real catalog that
    knows them as pancake and postproc would have written it."""
    h264, mp4 = top / "h264", top / "mp4"
    h264.mkdir()
    mp4.mkdir()
    db = (state or top / "state") / "pancake.db"
    db.parent.mkdir()
    ids = {}
    with Catalog.open(db, owner=True) as cat:
        for i, stem in enumerate(STEMS):
            path = make_recording(h264 / f"{stem}.h264", frames=frames,
                                  times_ms=[n * 40.0 for n in range(frames)])
            (h264 / f"{stem}.jpg").write_bytes(b"\xff\xd8 snapshot")
            start = (recording_time(stem) or (0.0, 0))[0]
            rid = cat.recording_opened("cam", "continuous", path, start)
            cat.recording_closed(rid, start + 60, frames, path.stat().st_size)
            ids[stem] = rid
            if i < 3:
                shutil.copyfile(path, mp4 / f"{stem}.mp4")  # the bytes stand in for an mp4
                cat.converted(rid, mp4 / f"{stem}.mp4", frames, frames / 25)
            for dest in UPLOADED_TO.get(stem, ()):
                cat.uploaded(rid, dest)
            if stem == STEMS[1]:
                cat.upload_attempted(rid, DESTS[1], "timed out")
            if stem in kept:
                cat.set_kept(rid, True)
    for p in [*h264.iterdir(), *mp4.iterdir()]:
        old(p)
    return Setup(db, h264, mp4, ids)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return fill(tmp_path)


def deleted(db: Path) -> tuple[set[str], set[str]]:
    """(stems of recordings, stems of mp4s) the catalog says retention deleted."""
    with Catalog.open(db) as cat:
        rows = cat.recordings("cam", 0, 2e9, include_deleted=True)
        gone = {r.stem for r in rows if r.deleted}
        mp4s = {r.stem for r in rows
                if (c := cat.conversion(r.id)) is not None and c.deleted}
    return gone, mp4s


# ---------------------------------------------------------------- kept


def _rule(script: str, directory: Path) -> list[str]:
    return {"limit_files_by_number.py": [str(directory), "0"],
            "limit_files_by_size.py": [str(directory), "0"],
            "limit_free_space.py": [str(directory), "99%"]}[script]


@pytest.mark.parametrize("script", ["limit_files_by_number.py", "limit_files_by_size.py",
                                    "limit_free_space.py"])
def test_a_kept_recording_survives_every_script(tmp_path: Path, script: str) -> None:
    s = fill(tmp_path, kept=(STEMS[1],))
    if script == "limit_free_space.py" and shutil.disk_usage(s.h264).free / \
            shutil.disk_usage(s.h264).total >= 0.99:
        pytest.skip("this filesystem is already 99% free: the rule would delete nothing")
    result = run(script, "-v", "--catalog", s.db, *_rule(script, s.h264), *_rule(script, s.mp4))
    assert result.returncode in (0, 1), result.stderr  # 99% free cannot be reached: 1
    # The kept recording stays whole: its video, its sidecars, and its mp4.
    assert stems(s.h264) == [STEMS[1]]
    assert sorted(p.name for p in s.h264.iterdir()) == [
        f"{STEMS[1]}.h264", f"{STEMS[1]}.jpg", f"{STEMS[1]}.pts"]
    assert stems(s.mp4) == [STEMS[1]]
    assert f"keep {s.h264 / STEMS[1]}.h264 (+ .jpg, .pts): kept in the catalog" in result.stdout
    gone, mp4s = deleted(s.db)
    assert gone == set(STEMS) - {STEMS[1]}
    assert mp4s == {STEMS[0], STEMS[2]}


def test_a_kept_recording_survives_limit_days(tmp_path: Path) -> None:
    """A YYYY/MM/DD tree the catalog knows (postproc's local copy on the recording machine):
    the kept recording's day stays with it, the other old day goes and is marked."""
    s = fill(tmp_path, kept=(STEMS[1],))
    top = tmp_path / "tree"
    with Catalog.open(s.db) as cat:
        for n, stem in enumerate(STEMS[:2]):
            day = top / "2024" / "01" / f"0{n + 1}"
            day.mkdir(parents=True)
            target = day / f"{stem}.mp4"
            shutil.copyfile(s.mp4 / f"{stem}.mp4", target)
            cat.converted(s.ids[stem], target, 24, 1.0)
            old(target)
        (top / "2024" / "01" / "05").mkdir()  # the newest day, kept by the rule
    result = run("limit_days.py", "-v", "--catalog", s.db, top, 1)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(top)) for p in top.rglob("*.mp4")) == [
        f"2024/01/02/{STEMS[1]}.mp4"]
    assert "kept in the catalog" in result.stdout
    assert deleted(s.db)[1] == {STEMS[0]}


def test_kept_is_honoured_through_a_symlinked_directory(setup: Setup, tmp_path: Path) -> None:
    with Catalog.open(setup.db) as cat:
        cat.set_kept(setup.ids[STEMS[0]], True)
    link = tmp_path / "videos"
    link.symlink_to(setup.h264)
    result = run("limit_files_by_number.py", "--catalog", setup.db, link, 0)
    assert result.returncode == 0, result.stderr
    assert stems(setup.h264) == [STEMS[0]]
    assert deleted(setup.db)[0] == set(STEMS[1:])


# ---------------------------------------------------------------- marked


def test_deletions_are_marked_and_a_dry_run_marks_nothing(setup: Setup) -> None:
    before = sorted(p.name for p in setup.h264.iterdir())
    dry = run("limit_files_by_number.py", "--dry-run", "--catalog", setup.db,
              setup.h264, 2, setup.mp4, 1)
    assert dry.returncode == 0, dry.stderr
    assert sorted(p.name for p in setup.h264.iterdir()) == before
    assert deleted(setup.db) == (set(), set())
    # Number is about age: the two oldest would go, whatever was uploaded.
    assert [line.split()[2] for line in dry.stdout.splitlines()[:2]] == [
        str(setup.h264 / f"{s}.h264") for s in STEMS[:2]]
    assert dry.stdout.splitlines()[-1].startswith("would delete 4 item(s)")

    result = run("limit_files_by_number.py", "-v", "--catalog", setup.db,
                 setup.h264, 2, setup.mp4, 1)
    assert result.returncode == 0, result.stderr
    assert stems(setup.h264) == STEMS[2:]
    assert stems(setup.mp4) == [STEMS[2]]
    assert deleted(setup.db) == (set(STEMS[:2]), set(STEMS[:2]))
    assert "4 marked deleted in the catalog" in result.stdout.splitlines()[-1]


# ---------------------------------------------------------------- the order


def test_size_prefers_uploaded_everywhere_then_converted(setup: Setup) -> None:
    one = sum(p.stat().st_size for p in setup.h264.iterdir() if p.stem == STEMS[0])
    # Room for two of the four: by age the two oldest would go. With the catalog the one
    # uploaded to both destinations goes first, then the oldest of the converted ones (the
    # second is converted too, and uploaded to one destination only: not safe everywhere).
    result = run("limit_files_by_size.py", "--dry-run", "--catalog", setup.db,
                 setup.h264, 2 * one)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[2] for line in result.stdout.splitlines()
              if line.startswith("would delete ") and "item(s)" not in line]
    assert listed == [str(setup.h264 / f"{s}.h264") for s in (STEMS[2], STEMS[0])]
    assert "(converted and uploaded everywhere)" in result.stdout
    result = run("limit_files_by_size.py", "--catalog", setup.db, setup.h264, 2 * one)
    assert result.returncode == 0, result.stderr
    # What is left: the one uploaded to one destination only, and the never converted one.
    assert stems(setup.h264) == [STEMS[1], STEMS[3]]
    assert deleted(setup.db)[0] == {STEMS[0], STEMS[2]}


def test_without_the_catalog_size_goes_by_age(setup: Setup, tmp_path: Path) -> None:
    one = sum(p.stat().st_size for p in setup.h264.iterdir() if p.stem == STEMS[0])
    result = run("limit_files_by_size.py", "-v", setup.h264, 2 * one)  # no catalog by default
    assert result.returncode == 0, result.stderr
    assert stems(setup.h264) == STEMS[2:]
    assert result.stdout.splitlines()[-1].endswith(
        f"no catalog at {tmp_path / 'xdg' / 'pancake' / 'pancake.db'}: deleting by age "
        "only, nothing marked")
    assert result.stderr == ""
    assert deleted(setup.db) == (set(), set())


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "8m", "the order is also shown by the size test") as mnt:
        yield mnt


def test_free_space_deletes_in_the_catalogs_order(small_fs: Path, tmp_path: Path) -> None:
    # The catalog off the small filesystem: its -wal and -shm must not eat the margin.
    s = fill(small_fs, state=tmp_path / "state")
    one = sum(p.stat().st_size for p in s.mp4.iterdir() if p.stem == STEMS[0])
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\1" * (shutil.disk_usage(small_fs).free - one // 2))
    want = shutil.disk_usage(small_fs).free + one // 4
    # The mp4 directory first: the mp4 uploaded everywhere goes, and that is enough.
    result = run("limit_free_space.py", "--catalog", s.db, s.mp4, str(want))
    assert result.returncode == 0, result.stderr
    assert stems(s.mp4) == [STEMS[0], STEMS[1]]
    assert deleted(s.db) == (set(), {STEMS[2]})
    # Then the h264 directory, needing one more: the uploaded one again, not the oldest.
    want = shutil.disk_usage(small_fs).free + one // 4
    result = run("limit_free_space.py", "--catalog", s.db, s.h264, str(want))
    assert result.returncode == 0, result.stderr
    assert stems(s.h264) == [STEMS[0], STEMS[1], STEMS[3]]
    assert deleted(s.db)[0] == {STEMS[2]}


# ---------------------------------------------------------------- no catalog, a bad one


def test_a_named_catalog_that_is_missing_is_one_line(setup: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pancake.db"
    result = run("limit_files_by_number.py", "--catalog", missing, setup.h264, 2)
    assert result.returncode == 0
    assert result.stderr == (f"limit_files_by_number.py: no catalog at {missing}: "
                             "deleting by age only, nothing marked\n")
    assert stems(setup.h264) == STEMS[2:]
    assert not missing.exists() and not missing.parent.exists()


def test_the_state_dirs_catalog_is_found_with_no_flag(setup: Setup, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    state = tmp_path / "xdg" / "pancake"
    state.parent.mkdir()
    setup.db.parent.rename(state)
    with Catalog.open(state / "pancake.db") as cat:
        cat.set_kept(setup.ids[STEMS[0]], True)
    result = run("limit_files_by_number.py", setup.h264, 0)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")  # quiet for cron
    assert stems(setup.h264) == [STEMS[0]]
    # --state-dir finds it too.
    with Catalog.open(state / "pancake.db") as cat:
        cat.set_kept(setup.ids[STEMS[0]], False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))
    result = run("limit_files_by_number.py", "-v", "--state-dir", state, setup.h264, 0)
    assert result.returncode == 0, result.stderr
    assert "1 marked deleted in the catalog" in result.stdout
    assert stems(setup.h264) == []


@pytest.mark.parametrize("script", ["limit_files_by_number.py", "limit_files_by_size.py",
                                    "limit_free_space.py", "limit_days.py"])
def test_a_garbage_catalog_is_one_line_and_left_untouched(setup: Setup, script: str) -> None:
    garbage = b"this is not an SQLite database\n" * 100
    setup.db.unlink()
    setup.db.write_bytes(garbage)
    args = [str(setup.h264), "0" if script != "limit_free_space.py" else "99%"]
    if script == "limit_days.py":
        day = setup.h264.parent / "tree" / "2024" / "01" / "01"
        day.mkdir(parents=True)
        (day / "x.mp4").write_bytes(b"x")
        old(day / "x.mp4")
        (setup.h264.parent / "tree" / "2024" / "01" / "02").mkdir()
        args = [str(setup.h264.parent / "tree"), "1"]
    result = run(script, "--catalog", setup.db, *args)
    assert result.returncode in ((0, 1) if script == "limit_free_space.py" else (0,))
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{script}: catalog unavailable (")
    assert lines[0].endswith("deleting by age only, nothing marked")
    assert "Traceback" not in result.stderr
    # The job is done as without a catalog; the file is pancake's to move aside.
    if script == "limit_days.py":
        assert not day.exists()
    else:
        assert stems(setup.h264) == []
    assert setup.db.read_bytes() == garbage
    assert sorted(p.name for p in setup.db.parent.iterdir()) == ["pancake.db"]


def test_a_directory_as_catalog_is_bad_input(setup: Setup) -> None:
    result = run("limit_files_by_number.py", "--catalog", setup.h264, setup.h264, 1)
    assert result.returncode == 2
    assert result.stderr == (f"limit_files_by_number.py: error: {setup.h264}: a directory, "
                             "not a catalog file (--state-dir names the directory holding it)\n")
    assert stems(setup.h264) == STEMS
