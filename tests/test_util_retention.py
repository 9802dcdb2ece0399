"""shared.retention(_cli): names, sizes, the "still being written" rule, grouping, safe deletion."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from raspberry_pancake.shared.retention import (
    Amount,
    BusyCheck,
    RecordingDir,
    open_inodes,
    parse_amount,
    parse_min_free,
    recording_time,
)
from raspberry_pancake.shared.retention_cli import parse_count

OLD = time.time() - 3600


def touch(path: Path, data: bytes = b"x" * 100, mtime: float = OLD) -> Path:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("1200000", Amount(bytes=1200000)),
    ("500M", Amount(bytes=500 * 1024**2)),
    ("2G", Amount(bytes=2 * 1024**3)),
    ("2g", Amount(bytes=2 * 1024**3)),
    ("1.5G", Amount(bytes=3 * 1024**3 // 2)),
    ("64KiB", Amount(bytes=64 * 1024)),
    ("10MB", Amount(bytes=10 * 1024**2)),
    ("1T", Amount(bytes=1024**4)),
    ("0", Amount(bytes=0)),
    ("10%", Amount(percent=10.0)),
    ("2.5%", Amount(percent=2.5)),
])
def test_parse_amount_accepts(text: str, expected: Amount) -> None:
    assert parse_amount(text, percent_ok=True) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5", "5X", "1.5", "100%", "150%", "M", "5 %%",
                                  "1e9", "99999999999T"])
def test_parse_amount_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_amount(text, percent_ok=True)
    assert "\n" not in str(info.value)
    assert repr(text) in str(info.value)


def test_percent_only_where_it_makes_sense() -> None:
    with pytest.raises(ValueError, match="percentage"):
        parse_amount("10%", percent_ok=False)
    assert parse_amount("10", percent_ok=False).of(0) == 10


def test_amount_of_a_filesystem() -> None:
    assert Amount(percent=10).of(1000) == 100
    assert Amount(percent=5).of(1001) == 51  # rounded up: never less free than asked
    assert Amount(bytes=7).of(10**12) == 7


def test_parse_min_free() -> None:
    assert parse_min_free("5%") == Amount(percent=5.0)
    assert parse_min_free("2G") == Amount(bytes=2 * 1024**3)
    assert parse_min_free("1200000") == Amount(bytes=1200000)
    with pytest.raises(ValueError, match=r"^--min-free: 'lots' is not a size"):
        parse_min_free("lots")


def test_parse_count() -> None:
    assert parse_count("8") == 8
    assert parse_count("0") == 0
    for bad in ("-1", "8.5", "eight", ""):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_recording_time_reads_local_time_and_suffix() -> None:
    minute = datetime(2020, 6, 23, 17, 15).timestamp()
    assert recording_time("20200623-1715") == (minute, 0)
    assert recording_time("20200623-171511") == (minute + 11, 0)
    assert recording_time("20200623-1715-2") == (minute, 2)
    assert recording_time("20200623-171511-13") == (minute + 11, 13)
    for bad in ("20200623-171", "20201323-1715", "20200623-2515", "20200623-1715-0",
                "x20200623-1715", "20200623_1715", "20200623-1715-a", "notes"):
        assert recording_time(bad) is None, bad


def test_items_group_sidecars_and_order_by_name(tmp_path: Path) -> None:
    # mtimes deliberately say the opposite of the names: the name wins.
    for i, stem in enumerate(["20200101-1200", "20200101-1200-1", "20200101-120030",
                              "20191231-235959"]):
        for ext in (".h264", ".pts", ".jpg"):
            touch(tmp_path / (stem + ext), mtime=OLD - i * 100)
    touch(tmp_path / "notes.txt", mtime=datetime(2019, 1, 1).timestamp())
    touch(tmp_path / "notes.jpg", mtime=OLD)
    (tmp_path / "sub").mkdir()
    with RecordingDir(tmp_path) as rdir:
        items = rdir.items()
        only = rdir.items(only_recordings=True)
    assert [i.stem for i in items] == ["notes.txt", "20191231-235959", "20200101-1200",
                                       "20200101-1200-1", "20200101-120030", "notes"]
    assert [i.stem for i in only] == ["20191231-235959", "20200101-1200", "20200101-1200-1",
                                      "20200101-120030"]
    assert [f.name for f in only[0].files] == ["20191231-235959.h264", "20191231-235959.jpg",
                                               "20191231-235959.pts"]
    assert only[0].size == 300


def test_symlinks_are_neither_items_nor_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = touch(outside / "20200101-1200.h264")
    inside = tmp_path / "rec"
    inside.mkdir()
    (inside / "20200101-1200.h264").symlink_to(secret)
    (inside / "20200101-1300.pts").symlink_to(secret)
    touch(inside / "20200101-1300.h264")
    with RecordingDir(inside) as rdir:
        items = rdir.items()
        assert [[f.name for f in i.files] for i in items] == [["20200101-1300.h264"]]
        rdir.delete(items[0])
    assert secret.exists()
    assert sorted(p.name for p in inside.iterdir()) == ["20200101-1200.h264", "20200101-1300.pts"]


def test_delete_leaves_a_name_that_changed_since_the_scan(tmp_path: Path) -> None:
    touch(tmp_path / "20200101-1200.h264")
    touch(tmp_path / "20200101-1200.pts")
    with RecordingDir(tmp_path) as rdir:
        (item,) = rdir.items()
        # Made before the old one goes, so it cannot reuse its inode number.
        os.replace(touch(tmp_path / "new", b"new file, same name"), tmp_path / "20200101-1200.pts")
        rdir.delete(item)
    assert [p.name for p in tmp_path.iterdir()] == ["20200101-1200.pts"]


def test_busy_check_sees_files_open_in_other_processes(tmp_path: Path) -> None:
    held = touch(tmp_path / "20200101-1200.h264")
    free = touch(tmp_path / "20200101-1300.h264")
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); "
         "time.sleep(60)", str(held)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "open\n"
        assert (held.stat().st_dev, held.stat().st_ino) in open_inodes()
        with RecordingDir(tmp_path) as rdir:
            first, second = rdir.items()
        busy = BusyCheck()
        assert busy.reason(first) == "open by a process"
        assert busy.reason(second) is None
    finally:
        child.kill()
        child.wait()
    busy.refresh()
    assert busy.reason(first) is None
    assert free.exists()


def test_busy_check_recent_and_future_mtimes(tmp_path: Path) -> None:
    now = time.time()
    touch(tmp_path / "20200101-1200.h264", mtime=now - 30)
    touch(tmp_path / "20200101-1300.h264", mtime=now - 90)
    touch(tmp_path / "20200101-1400.h264", mtime=now + 3600)  # clock moved back since
    with RecordingDir(tmp_path) as rdir:
        recent, old, future = rdir.items()
    busy = BusyCheck(is_open=lambda _p: False)
    assert busy.reason(recent) is not None and "modified" in str(busy.reason(recent))
    assert busy.reason(old) is None
    assert busy.reason(future) is None


def test_busy_check_uses_the_callers_is_open(tmp_path: Path) -> None:
    touch(tmp_path / "20200101-1200.h264")
    touch(tmp_path / "20200101-1200.pts")
    asked: list[str] = []

    def is_open(path: str) -> bool:
        asked.append(path)
        return path.endswith(".pts")

    with RecordingDir(tmp_path) as rdir:
        (item,) = rdir.items()
    assert BusyCheck(is_open=is_open).reason(item) == "being written"
    assert asked == [str(tmp_path / "20200101-1200.h264"), str(tmp_path / "20200101-1200.pts")]
