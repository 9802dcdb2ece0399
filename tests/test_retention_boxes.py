"""Retention knows `STEM-boxes.jpg` (the edge snapshot with its boxes drawn) as STEM's sidecar."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raspberry_pancake.shared.retention import RecordingDir, split_name

ROOT = Path(__file__).resolve().parent.parent
OLD = time.time() - 3600


def touch(path: Path, mtime: float = OLD) -> Path:
    path.write_bytes(b"x" * 100)
    os.utime(path, (mtime, mtime))
    return path


def clip(directory: Path, stem: str, mtime: float = OLD) -> None:
    """A clip as pancake leaves it: video, timestamps, edge snapshot, snapshot with boxes."""
    for tail in (".h264", ".pts", ".jpg", "-boxes.jpg"):
        touch(directory / (stem + tail), mtime)


def test_split_name_knows_the_boxes_snapshot() -> None:
    assert split_name("20200623-171511-boxes.jpg") == ("20200623-171511", "-boxes.jpg")
    assert split_name("20200623-171511-2-boxes.jpg") == ("20200623-171511-2", "-boxes.jpg")
    assert split_name("20200623-1715-BOXES.JPG") == ("20200623-1715", "-boxes.jpg")
    # Not a recording's name: a plain picture, as before.
    assert split_name("holiday-boxes.jpg") == ("holiday-boxes", ".jpg")


def test_boxes_snapshot_groups_with_its_clip(tmp_path: Path) -> None:
    clip(tmp_path, "20200623-171511")
    clip(tmp_path, "20200623-171511-1")
    # An edge with no clip around it: the snapshot pair alone, named like a recording.
    touch(tmp_path / "20200623-180000.jpg")
    touch(tmp_path / "20200623-180000-boxes.jpg")
    touch(tmp_path / "holiday-boxes.jpg")
    with RecordingDir(tmp_path) as rdir:
        items = rdir.items()
        only = rdir.items(only_recordings=True)
    assert [i.stem for i in only] == ["20200623-171511", "20200623-171511-1", "20200623-180000"]
    assert all(i.recording for i in only)
    assert [f.name for f in only[0].files] == [
        "20200623-171511-boxes.jpg", "20200623-171511.h264", "20200623-171511.jpg",
        "20200623-171511.pts"]
    assert only[0].describe().endswith("20200623-171511.h264 (+ -boxes.jpg, .jpg, .pts)")
    assert [f.name for f in only[2].files] == ["20200623-180000-boxes.jpg",
                                               "20200623-180000.jpg"]
    assert sorted(i.stem for i in items) == ["20200623-171511", "20200623-171511-1",
                                             "20200623-180000", "holiday-boxes"]


def test_deleting_a_clip_deletes_its_boxes_snapshot(tmp_path: Path) -> None:
    clip(tmp_path, "20200623-171511")
    with RecordingDir(tmp_path) as rdir:
        (item,) = rdir.items(only_recordings=True)
        freed = rdir.delete(item)
    assert freed > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("only", [False, True])
def test_limit_by_number_counts_a_clip_once_with_its_boxes(tmp_path: Path,
                                                          only: bool) -> None:
    d = tmp_path / "h264"
    d.mkdir()
    stems = ["20200623-171511", "20200623-171611", "20200623-171711"]
    for i, stem in enumerate(stems):
        # mtimes opposite to the names: a boxes file taken for an item of its own would be
        # ordered by mtime and kept as "newest".
        clip(d, stem, OLD - i * 600)
    args = [sys.executable, str(ROOT / "util" / "limit_files_by_number.py"), str(d), "1"]
    if only:
        args.insert(2, "--only-recordings")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in d.iterdir()) == [
        "20200623-171711-boxes.jpg", "20200623-171711.h264", "20200623-171711.jpg",
        "20200623-171711.pts"]
