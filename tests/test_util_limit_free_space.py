"""util/limit_free_space.py on a real, small filesystem (an 8 MiB tmpfs mounted for the test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tmpfs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "util" / "limit_free_space.py"
MiB = 1024 * 1024
OLD = time.time() - 3600


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts look for pancake's catalog in the state directory: never the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def run(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: free space that the test controls exactly."""
    with tmpfs(tmp_path / "fs", "8m",
               "test_diskguard covers the same logic with injected disk usage") as mnt:
        yield mnt


def recording(directory: Path, stem: str, size: int) -> None:
    for ext, n in ((".h264", size), (".pts", 100), (".jpg", 100)):
        path = directory / (stem + ext)
        path.write_bytes(b"\1" * n)
        os.utime(path, (OLD, OLD))


STEMS = [f"20240101-{h:02d}00" for h in range(7)]


@pytest.fixture
def full(small_fs: Path) -> Path:
    h264 = small_fs / "h264"
    h264.mkdir()
    for stem in STEMS:
        recording(h264, stem, MiB)
    assert shutil.disk_usage(h264).free < 1 * MiB
    return h264


def stems(directory: Path) -> list[str]:
    return sorted({p.name.split(".")[0] for p in directory.iterdir()})


def test_deletes_oldest_until_enough_is_free(full: Path) -> None:
    result = run(full, "3M")
    assert result.returncode == 0, result.stderr
    assert shutil.disk_usage(full).free >= 3 * MiB
    # Three 1 MiB recordings free ~3 MiB plus what little was free: it takes exactly 3.
    assert stems(full) == STEMS[3:]
    assert not any(p.name.startswith(STEMS[2]) for p in full.iterdir())  # sidecars went too
    assert run(full, "3M").returncode == 0
    assert stems(full) == STEMS[3:]  # enough free already: nothing more goes


def test_percentage_of_the_filesystem(full: Path) -> None:
    assert run(full, "50%").returncode == 0
    usage = shutil.disk_usage(full)
    assert usage.free >= usage.total / 2
    assert stems(full) == STEMS[4:]


def test_dry_run_estimates_and_deletes_nothing(full: Path) -> None:
    result = run("-n", full, "3M")
    assert result.returncode == 0, result.stderr
    assert stems(full) == STEMS
    listed = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("would ")]
    assert listed[:-1] == [str(full / f"{s}.h264") for s in STEMS[:3]]


def test_in_use_and_other_files_stay_and_shortfall_is_exit_1(full: Path) -> None:
    other = full / "holiday.mov"
    other.write_bytes(b"\1" * (MiB // 2))
    os.utime(other, (0, 0))  # older than every recording
    with open(full / f"{STEMS[0]}.h264", "rb"):
        result = run("--only-recordings", full, "7M")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "short of 7.00 MiB" in result.stderr
    assert stems(full) == [STEMS[0], "holiday"]


def test_directories_in_the_order_given(small_fs: Path) -> None:
    first, second = small_fs / "h264", small_fs / "mp4"
    first.mkdir()
    second.mkdir()
    for stem in STEMS[:3]:
        recording(first, stem, MiB)
        recording(second, stem, MiB)
    recording(second, "20000101-0000", MiB)  # the oldest of all, but in the second directory
    # The first directory gives up everything (3 MiB is more than it holds) before the second
    # is asked for its oldest.
    result = run(first, "3M", second, "4M")
    assert result.returncode == 0, result.stderr
    assert shutil.disk_usage(first).free >= 4 * MiB
    assert stems(first) == []
    assert stems(second) == STEMS[:3]


@pytest.mark.parametrize(("args", "message"), [
    (["{d}", "lots"], "'lots' is not a size"),
    (["{d}", "100%"], "must be under 100%"),
    (["{d}"], "got 1"),
    (["{d}/none", "1G"], "none: no such directory"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(*[a.format(d=tmp_path) for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
