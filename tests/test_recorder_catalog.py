"""The real pancake.py on testsrc writing a real catalog: recordings, events, crashes, damage, names."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Listener, Pancake, run_pancake, schedule_customize, tmpfs
from recordings import decode

from raspberry_pancake.recorder.catalog_writer import CatalogConfig, CatalogWriter
from raspberry_pancake.shared.catalog import Catalog, Recording
from raspberry_pancake.shared.remux import read_sidecar
from tests.postproc_servers import make_recording

FPS = 12
BASE = ["--source", "testsrc", "--fps", str(FPS), "--resolution", "320", "240"]
EVER = (0.0, 1e12)
MiB = 1024 * 1024
OLD = time.time() - 3600


def everything(db: Path, deleted: bool = False) -> list[Recording]:
    with Catalog.open(db) as c:
        return c.recordings("cam", *EVER, include_deleted=deleted)


def wait_until(what: str, predicate: object, p: Pancake, timeout: float = 20.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if p.proc.poll() is not None:
            raise AssertionError(f"pancake exited {p.proc.returncode}:\n{p.log()}")
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s\n{p.log()}")


def pts_lines(h264: Path) -> list[float]:
    return read_sidecar(h264.with_suffix(".pts"))


def test_recordings_and_events_are_catalogued_as_they_happen(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    seg_dir, clip_dir, db = tmp_path / "h264", tmp_path / "clips", tmp_path / "cat.db"
    seg_dir.mkdir()
    clip_dir.mkdir()
    t0 = time.time() + 1.0
    # One detection long enough that its two edges get a clip each.
    custom = schedule_customize(tmp_path / "customize.py", [(3.0, 9.0)], t0)
    p = run_pancake(pancakes, [
        *BASE, "--record-continuous", str(seg_dir), "--record-split", "3",
        "--record-detection", "edge", str(clip_dir), "--detect", "no-image",
        "--detect-interval", "0.2", "--customize", str(custom), "--emit", listener.name,
        "--catalog", str(db), "--title", "Front door"], tmp_path)
    while time.time() < t0 + 14.0 and p.proc.poll() is None:
        time.sleep(0.2)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert "Traceback" not in p.log()
    time.sleep(0.3)
    messages = listener.events()

    # Every file on disk is one closed row: its kind, start, end, frames and size true.
    announced = {m["h264"]: m for m in messages if "h264" in m}
    on_disk = sorted([*seg_dir.glob("*.h264"), *clip_dir.glob("*.h264")])
    rows = {r.path: r for r in everything(db)}
    assert sorted(rows) == on_disk, p.log()
    for path in on_disk:
        row, times, shown = rows[path], pts_lines(path), decode(path, 0)
        assert row.closed and not row.deleted and not row.kept, row
        assert row.kind == ("clip" if path.parent == clip_dir else "continuous"), row
        assert row.frames == len(times) == shown.frames, (row, len(times))
        assert row.size == path.stat().st_size
        assert row.start == pytest.approx(announced[str(path)]["time"], abs=0.002)
        assert row.end == pytest.approx(row.start + times[-1], abs=0.002)

    # The messages kept their shape; the catalog has one event with both edges.
    edges = [m for m in messages if "detection" in m and "h264" not in m]
    assert [m["detection"] for m in edges] == [True, False]
    assert all(set(m) == {"detection", "time", "jpeg"} for m in edges), edges
    with Catalog.open(db) as c:
        events = c.events("cam", *EVER)
        lines = c.log_lines(1000, "cam")
        settings = c.camera_settings("cam")
    # The title is kept for postproc's captions and Home Assistant's device name.
    assert settings is not None and settings.title == "Front door", settings
    assert len(events) == 1, events
    # The page's log: each file's start and end, the detection's edges.
    texts = [ln.text for ln in lines]
    for path in on_disk:
        assert f"{path.name} started ({rows[path].kind})" in texts, texts
        assert any(t.startswith(f"{path.name} finished: ") for t in texts), texts
    assert [t for t in texts if t.startswith("detection")] == [
        "detection: detection", "detection ended"], texts
    event = events[0]
    assert event.rise == pytest.approx(edges[0]["time"], abs=0.002)
    assert event.fall == pytest.approx(edges[1]["time"], abs=0.002)
    assert event.labels == ("detection",) and event.names == ()
    # Each snapshot takes its clip's name (retention's sidecar), the event's is the rise's.
    clips = sorted(clip_dir.glob("*.h264"))
    assert len(clips) == 2, clips
    for m, clip in zip(edges, clips, strict=True):
        assert m["jpeg"] == str(clip.with_suffix(".jpg")), (m, clips)
    assert event.snapshot == clips[0].with_suffix(".jpg")
    assert event.clip == rows[clips[0]].id


def test_kill_9_mid_segment_then_the_next_start_closes_it(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    rec, db = tmp_path / "h264", tmp_path / "cat.db"
    rec.mkdir()
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--catalog", str(db)],
                    tmp_path)
    wait_until("a segment catalogued and 2 s written", lambda: db.exists() and everything(db)
               and len(pts_lines(everything(db)[0].path)) >= 2 * FPS, p)
    p.stop(signal.SIGKILL)

    # The file opens, passes SQLite's check, and says only what is true: one file, open.
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    rows = everything(db, deleted=True)
    assert len(rows) == 1, rows
    crashed = rows[0]
    assert crashed.path.exists() and crashed.kind == "continuous"
    assert not crashed.closed and crashed.end is None and crashed.frames is None

    # The next start closes it with what its file and sidecar hold, for postproc to convert.
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--catalog", str(db)],
                    tmp_path)
    p.wait_for("left open by an earlier run")
    wait_until("the new segment catalogued", lambda: len(everything(db)) == 2, p)
    assert p.stop()[0] == 0, p.log()
    by_path = {r.path: r for r in everything(db)}
    row = by_path[crashed.path]
    times = pts_lines(crashed.path)
    assert row.closed and row.frames == len(times) and row.id == crashed.id
    assert row.end == pytest.approx(crashed.start + times[-1], abs=0.002)
    second = next(r for r in by_path.values() if r.id != crashed.id)
    assert second.closed and second.path.exists() and second.path != crashed.path


def test_a_garbage_catalog_is_moved_aside_and_rebuilt_while_recording(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    rec, state = tmp_path / "h264", tmp_path / "mystate"
    rec.mkdir()
    old = make_recording(rec / "20240101-1200.h264", 24, [i * 1000 / 12 for i in range(24)])
    for f in (old, old.with_suffix(".pts")):
        os.utime(f, (OLD, OLD))
    state.mkdir()
    db = state / "pancake.db"
    db.write_bytes(b"this is not a database" * 100)
    # --state-dir alone: the catalog is its pancake.db.
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--state-dir",
                               str(state)], tmp_path)
    p.wait_for("filled from the record directories")
    wait_until("a new segment catalogued", lambda: len(everything(db)) == 2, p)
    assert p.stop()[0] == 0, p.log()
    log = p.log()
    assert "is damaged" in log and "Traceback" not in log, log
    aside = list(state.glob("pancake.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not"), aside
    rows = {r.path.name: r for r in everything(db)}
    assert rows["20240101-1200.h264"].frames == 24 and rows["20240101-1200.h264"].closed
    new = [r for name, r in rows.items() if name != "20240101-1200.h264"]
    assert len(new) == 1 and new[0].closed and new[0].frames and new[0].frames > 0


def test_a_newer_catalog_is_left_alone_and_recording_goes_on(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    rec, db = tmp_path / "h264", tmp_path / "cat.db"
    rec.mkdir()
    with sqlite3.connect(db) as raw:
        raw.execute("CREATE TABLE future (x TEXT)")
        raw.execute("INSERT INTO future VALUES ('from a newer version')")
        raw.execute("PRAGMA user_version = 99")
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--record-split", "2",
                               "--catalog", str(db), "--emit", listener.name], tmp_path)
    wait_until("two segments recorded", lambda: len(
        [m for m in listener.events() if "h264" in m]) >= 2, p)
    assert p.stop()[0] == 0, p.log()
    log = p.log()
    # Neither moved aside nor migrated: what the newer version wrote is all still there.
    assert not list(tmp_path.glob("cat.db.corrupt-*"))
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 99
        assert raw.execute("SELECT x FROM future").fetchall() == [("from a newer version",)]
        assert not raw.execute("SELECT 1 FROM sqlite_master WHERE name = 'recordings'").fetchall()
    assert log.count("newer than this program's") == 1, log  # said once, not per write
    assert "recording goes on" in log and "Traceback" not in log


def test_a_name_only_an_mp4_still_has_gets_a_suffix(tmp_path: Path,
                                                    pancakes: list[Pancake]) -> None:
    rec, mp4, db = tmp_path / "h264", tmp_path / "mp4", tmp_path / "cat.db"
    rec.mkdir()
    mp4.mkdir()
    # Retention deleted these minutes' h264s but kept their mp4s (local, and on the backup):
    # the catalog has their mp4 names only. Three minutes: the start may cross into the next.
    now = time.time()
    stems = [time.strftime("%Y%m%d-%H%M", time.localtime(now + 60 * i)) for i in range(3)]
    with Catalog.open(db, owner=True) as c:
        for i, stem in enumerate(stems):
            rid = c.recording_opened("cam", "continuous", tmp_path / f"gone-{i}.h264", now)
            c.recording_closed(rid, now + 60, 720)
            c.converted(rid, mp4 / f"{stem}.mp4", 720, 60.0)
            c.mark_deleted(tmp_path / f"gone-{i}.h264")
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--catalog", str(db)],
                    tmp_path)
    wait_until("a segment", lambda: list(rec.glob("*.h264")), p)
    assert p.stop()[0] == 0, p.log()
    made = sorted(f.name for f in rec.glob("*.h264"))
    assert len(made) == 1 and made[0].endswith("-1.h264"), made
    assert made[0][:-len("-1.h264")] in stems, made
    assert [r.path.name for r in everything(db)] == made


def test_the_disk_guard_deletes_converted_first_and_never_a_kept_one(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        rec = fs / "h264"
        rec.mkdir()
        db = tmp_path / "cat.db"
        stems = [f"20240101-{h:02d}00" for h in range(6)]
        with Catalog.open(db, owner=True) as c:
            for h, stem in enumerate(stems):
                path = rec / f"{stem}.h264"
                for ext, n in ((".h264", MiB), (".pts", 100), (".jpg", 100)):
                    f = path.with_suffix(ext)
                    f.write_bytes(b"\1" * n)
                    os.utime(f, (OLD, OLD))
                rid = c.recording_opened("cam", "continuous", path, OLD + h)
                c.recording_closed(rid, OLD + h + 60, 720, MiB)
                if h in (2, 3, 5):  # converted (their mp4s are elsewhere, or deleted since)
                    c.converted(rid, tmp_path / f"{stem}.mp4", 720, 60.0)
                if h in (2, 3):  # uploaded to one of the two destinations postproc has
                    c.uploaded(rid, "sftp://pi@backup.example:22/bak")
                if h == 5:
                    for dest in ("sftp://pi@backup.example:22/bak", "ftp://nick@ftp.example:21/b"):
                        c.uploaded(rid, dest)
                if h == 0:
                    c.set_kept(rid, True)
        # More free than the disk can give: everything that may go, goes, in order.
        p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--min-free", "7M",
                                   "--catalog", str(db)], tmp_path)
        wait_until("five recordings deleted", lambda: p.log().count("to free space") >= 5, p)
        time.sleep(1.0)  # a sixth would show now
        assert p.stop()[0] == 0, p.log()
        order = [line.split("deleted ")[1].split(".h264")[0].rsplit("/", 1)[1]
                 for line in p.log().splitlines() if "to free space" in line]
        # Uploaded to every destination postproc has, then converted, then the rest.
        assert order == [stems[5], stems[2], stems[3], stems[1], stems[4]], p.log()
        assert (rec / f"{stems[0]}.h264").exists()  # kept
        rows = {r.stem: r for r in everything(db, deleted=True)}
        assert {s for s in stems if rows[s].deleted} == set(stems[1:])
        assert not rows[stems[0]].deleted


def test_an_unavailable_catalog_is_retried_and_what_waited_is_written(tmp_path: Path) -> None:
    # The catalog thread alone (the real class, a real file): its directory appears only later.
    rec, db = tmp_path / "h264", tmp_path / "later" / "cat.db"
    rec.mkdir()
    writer = CatalogWriter(CatalogConfig(db, None, (rec,), retry=0.3))
    writer.start()
    try:
        assert writer.wait_ready(10) and writer.current() is None
        f = make_recording(rec / "20240101-1200.h264", 24, [i * 1000 / 12 for i in range(24)])
        writer.opened(f, "continuous", 1000.0)
        writer.closed(f, "continuous", 1000.0, 1002.0, 24)
        token = writer.rose(1001.0, ("detection",))
        writer.fell(token, 1001.5)
        assert not writer.name_used("20240101-1200")  # cannot say: the directories decide
        (tmp_path / "later").mkdir()
        deadline = time.monotonic() + 20
        while writer.written < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.written == 4 and writer.dropped == 0
        assert writer.name_used("20240101-1200")
    finally:
        writer.stop()
        writer.join(5)
    assert not writer.is_alive()
    rows = everything(db)
    assert [(r.path, r.closed, r.frames, r.start, r.end) for r in rows] == [
        (f, True, 24, 1000.0, 1002.0)]  # pancake's own times, not the rebuild's guess
    with Catalog.open(db) as c:
        assert [(e.rise, e.fall) for e in c.events("cam", *EVER)] == [(1001.0, 1001.5)]
