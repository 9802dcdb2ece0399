"""The catalog on real files: its API, WAL under two writer processes, kill -9, damage, rebuild."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raspberry_pancake.shared import catalog as cat
from raspberry_pancake.shared.catalog import (
    MIGRATIONS,
    Catalog,
    CatalogTooNew,
    CatalogUnavailable,
    check,
    import_journals,
    migrate,
    rebuild,
)
from raspberry_pancake.shared.remux import remux
from raspberry_pancake.shared.retention import recording_time
from raspberry_pancake.shared.statedir import catalog_path, ensure, state_dir
from tests.postproc_servers import ROOT, make_recording

OLD = time.time() - 3600


def old(path: Path) -> Path:
    """Stamp a file an hour old: closed for the rebuild, as after a restart."""
    os.utime(path, (OLD, OLD))
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "pancake.db"


@pytest.fixture
def catalog(db: Path) -> Iterator[Catalog]:
    db.parent.mkdir()
    with Catalog.open(db, owner=True) as c:
        yield c


# ---------------------------------------------------------------- the state directory


def test_state_dir_lookup_follows_flag_then_xdg_then_home(tmp_path: Path) -> None:
    home = {"HOME": "/home/pi"}
    assert state_dir(Path("/srv/x"), home) == Path("/srv/x")
    assert state_dir(None, {**home, "XDG_STATE_HOME": "/xdg"}) == Path("/xdg/pancake")
    # A relative XDG value is ignored, as the spec says.
    assert state_dir(None, {**home, "XDG_STATE_HOME": "rel"}) == Path(
        "/home/pi/.local/state/pancake")
    assert state_dir(None, home) == Path("/home/pi/.local/state/pancake")
    assert catalog_path(None, None, home) == Path("/home/pi/.local/state/pancake/pancake.db")
    assert catalog_path(Path("/a.db"), Path("/srv/x"), home) == Path("/a.db")
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    ensure(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    made = ensure(tmp_path / "a" / "b")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


# ---------------------------------------------------------------- the API


def test_a_day_of_recordings_events_conversions_uploads_and_log(catalog: Catalog,
                                                                tmp_path: Path) -> None:
    seg = tmp_path / "rec" / "20260101-1000.h264"
    rid = catalog.recording_opened("cam", "continuous", seg, 1000.0)
    assert catalog.recording(rid) == cat.Recording(rid, "cam", "continuous", seg, 1000.0, None,
                                                   None, None, False, False, False)
    assert catalog.pending_conversions() == []  # open: never converted
    catalog.recording_closed(rid, 1900.0, 10800, 5_000_000)
    assert [r.id for r in catalog.pending_conversions()] == [rid]
    ev = catalog.event_rose("cam", 1500.0, ["motion"], [])
    catalog.event_seen(ev, ["motion", "face"], ["alice"])
    clip = catalog.recording_opened("cam", "clip", tmp_path / "rec" / "20260101-102455.h264",
                                    1495.0)
    catalog.event_snapshot(ev, tmp_path / "rec" / "20260101-102455.jpg")
    catalog.event_clip(ev, clip)
    catalog.event_fell(ev, 1510.0)
    assert catalog.event(ev) == cat.Event(ev, "cam", 1500.0, 1510.0, ("motion", "face"),
                                          ("alice",), tmp_path / "rec" / "20260101-102455.jpg",
                                          clip)
    mp4 = tmp_path / "mp4" / "20260101-1000.mp4"
    assert not catalog.is_converted(seg)
    catalog.converted(rid, mp4, 10800, 900.0, t=2000.0)
    assert catalog.is_converted(seg)
    assert catalog.pending_conversions() == []
    assert [c.recording for c in catalog.pending_uploads("sftp://h/x")] == [rid]
    catalog.upload_attempted(rid, "sftp://h/x", "connection refused")
    up = catalog.upload(rid, "sftp://h/x")
    assert up is not None and (up.state, up.attempts, up.last_error) == (
        "failed", 1, "connection refused")
    assert not catalog.is_uploaded(rid, "sftp://h/x")
    catalog.upload_attempted(rid, "sftp://h/x")
    catalog.uploaded(rid, "sftp://h/x", t=2100.0)
    up = catalog.upload(rid, "sftp://h/x")
    assert up is not None and (up.state, up.attempts, up.done_at) == ("done", 2, 2100.0)
    assert catalog.is_uploaded(rid, "sftp://h/x")
    assert not catalog.is_uploaded(rid, "ftp://other")
    assert catalog.pending_uploads("sftp://h/x") == []
    # An attempt logged after the acknowledgement (a late retry's report) does not undo it.
    catalog.upload_attempted(rid, "sftp://h/x", "late")
    assert catalog.is_uploaded(rid, "sftp://h/x")
    assert not catalog.alerted(ev, "telegram")
    catalog.alert_sent(ev, "telegram", 1501.0)
    assert catalog.alerted(ev, "telegram")
    for i in range(5):
        catalog.log("recording", f"line {i}", "cam", t=3000.0 + i)
    catalog.log("disk", "low", None, t=3010.0)
    assert [x.text for x in catalog.log_lines(3)] == ["line 3", "line 4", "low"]
    assert [x.text for x in catalog.log_lines(2, "cam")] == ["line 3", "line 4"]
    other = catalog.recording_opened("yard", "continuous", tmp_path / "y" / "a.h264", 1200.0)
    assert [r.id for r in catalog.recordings("cam", 900.0, 1600.0)] == [rid, clip]
    assert [r.id for r in catalog.recordings("yard", 0, 1e10)] == [other]
    assert [e.id for e in catalog.events("cam", 1500.0, 1500.5)] == [ev]
    assert catalog.events("cam", 1500.5, 1e10) == []
    assert catalog.mark_deleted(seg)
    assert catalog.recordings("cam", 900.0, 1100.0) == []
    assert [r.id for r in catalog.recordings("cam", 900.0, 1100.0, include_deleted=True)] == [rid]
    assert not catalog.mark_deleted(tmp_path / "never.h264")


def test_names_stay_used_after_the_files_are_deleted(catalog: Catalog, tmp_path: Path) -> None:
    h264 = tmp_path / "rec" / "20260101-1000.h264"
    rid = catalog.recording_opened("cam", "continuous", h264, 1.0)
    catalog.recording_closed(rid, 2.0, 3)
    catalog.converted(rid, tmp_path / "mp4" / "20260101-1000-1.mp4", 3, 1.0)
    catalog.mark_deleted(h264)
    catalog.mark_deleted(tmp_path / "mp4" / "20260101-1000-1.mp4")
    assert catalog.name_used("cam", "20260101-1000")
    assert catalog.name_used("cam", "20260101-1000-1")  # the mp4's own name
    assert not catalog.name_used("cam", "20260101-1015")
    assert not catalog.name_used("yard", "20260101-1000")
    conv = catalog.conversion(rid)
    assert conv is not None and conv.deleted
    # Deleted mp4: still converted, so catch-up never makes it again.
    assert catalog.is_converted(h264) and catalog.pending_conversions() == []


def test_deletion_order_uploaded_everywhere_then_converted_then_rest(catalog: Catalog,
                                                                     tmp_path: Path) -> None:
    rec, elsewhere = tmp_path / "rec", tmp_path / "other"
    dests = ["sftp://a", "ftp://b"]

    def seg(name: str, start: float, closed: bool = True) -> int:
        rid = catalog.recording_opened("cam", "continuous", rec / f"{name}.h264", start)
        if closed:
            catalog.recording_closed(rid, start + 900, 100)
        return rid

    rest_old = seg("rest_old", 1)
    both = seg("both", 5)
    conv_one_dest = seg("conv_one_dest", 2)
    conv_only = seg("conv_only", 3)
    rest_new = seg("rest_new", 9)
    both_old = seg("both_old", 4)
    open_one = seg("open", 0, closed=False)
    kept = seg("kept", 0.5)
    gone = seg("gone", 0.6)
    far = catalog.recording_opened("cam", "continuous", elsewhere / "far.h264", 0.1)
    catalog.recording_closed(far, 1, 1)
    for rid in (both, conv_one_dest, conv_only, both_old, open_one, kept, gone, far):
        catalog.converted(rid, tmp_path / "mp4" / f"{rid}.mp4", 100, 900.0)
    for rid in (both, both_old, open_one, kept, gone, far):
        for d in dests:
            catalog.uploaded(rid, d)
    catalog.uploaded(conv_one_dest, "sftp://a")
    catalog.upload_attempted(conv_one_dest, "ftp://b", "timeout")
    catalog.uploaded(conv_only, "elsewhere://c")  # a destination no longer configured
    catalog.set_kept(kept, True)
    catalog.mark_deleted(rec / "gone.h264")
    order = [r.id for r in catalog.deletion_order([rec], dests)]
    assert order == [both_old, both, conv_one_dest, conv_only, rest_old, rest_new]
    assert [r.id for r in catalog.deletion_order([rec], dests, limit=2)] == [both_old, both]
    # No destination configured: converted is all there is to wait for.
    order = [r.id for r in catalog.deletion_order([rec], [])]
    assert order == [conv_one_dest, conv_only, both_old, both, rest_old, rest_new]
    assert catalog.deletion_order([rec, elsewhere], dests)[0].id == far
    catalog.set_kept(kept, False)
    assert kept in [r.id for r in catalog.deletion_order([rec], dests)]
    assert catalog.deletion_order([], dests) == []


def test_threads_of_one_process_each_get_a_connection(catalog: Catalog, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(50):
                rid = catalog.recording_opened(name, "continuous", tmp_path / name / f"{i}.h264",
                                               float(i))
                catalog.recording_closed(rid, i + 1.0, 5)
        except BaseException as exc:  # handed to the test thread, which fails on it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"t{n}",), name=f"writer-{n}")
               for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert [len(catalog.recordings(f"t{n}", 0, 1e10)) for n in range(4)] == [50] * 4


def test_a_failed_write_is_a_catalog_error_and_changes_nothing(catalog: Catalog,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "20260101-1000.h264"
    catalog.recording_opened("cam", "continuous", path, 1.0)
    with pytest.raises(cat.CatalogError, match="UNIQUE"):
        catalog.recording_opened("cam", "continuous", path, 2.0)
    with pytest.raises(cat.CatalogError), catalog.transaction() as c:
        c.execute("INSERT INTO log (time, kind, text) VALUES (1, 'x', 'rolled back')")
        c.execute("INSERT INTO nowhere VALUES (1)")
    assert catalog.log_lines(10) == []
    assert len(catalog.recordings("cam", 0, 1e10)) == 1


# ---------------------------------------------------------------- schema versions


def test_a_version_0_file_is_migrated_in_place(db: Path) -> None:
    db.parent.mkdir()
    # What an older program left: a SQLite file at user_version 0 with a table of its own.
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('kept')")
    conn.commit()
    conn.close()
    with Catalog.open(db) as c:  # not the owner: postproc may migrate too
        assert c.version() == cat.VERSION == len(MIGRATIONS) == 2
        assert not c.fresh
        rid = c.recording_opened("cam", "continuous", db.parent / "a.h264", 1.0)
        assert c.recording(rid) is not None
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_version_1_catalog_gains_boxes_cameras_and_learned_state(db: Path) -> None:
    """The catalog the previous release made (version 1, with an event in it) is migrated in
    place: its event keeps its labels and gains empty boxes."""
    db.parent.mkdir()
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == 0
    conn.execute("INSERT INTO events (camera, rise, labels) VALUES ('cam', 5.0, '[\"motion\"]')")
    conn.close()
    with Catalog.open(db) as c:
        assert c.version() == 2
        ev = c.event_at("cam", 5.0)
        assert ev is not None and (ev.labels, ev.boxes, ev.score) == (("motion",), (), None)
        c.event_seen(ev.id, ["face"], ["anna"], [[0.1, 0.2, 0.3, 0.4]], 0.7)
        c.event_seen(ev.id, ["face"], ["bob"], None, 0.5)  # boxes kept, the higher score kept
        c.event_boxes_snapshot(ev.id, db.parent / "x-boxes.jpg")
        got = c.event(ev.id)
        assert got is not None
        assert (got.labels, got.names, got.boxes, got.score, got.boxes_snapshot) == (
            ("motion", "face"), ("anna", "bob"), ((0.1, 0.2, 0.3, 0.4),), 0.7,
            db.parent / "x-boxes.jpg")
        assert c.event_at("cam", 5.02) is None and c.event_at("door", 5.0) is None
        assert [e.id for e in c.events_since(4.0)] == [ev.id] and c.events_since(6.0) == []
        # Cameras: from recordings, events and settings alike.
        c.recording_opened("door", "clip", db.parent / "b.h264", 1.0)
        assert c.camera_settings("cam") is None
        c.set_camera("cam", armed=False)
        c.set_camera("cam", continuous=False)
        c.set_camera("cam", armed=True, title="Front door")
        assert c.camera_settings("cam") == cat.CameraSettings("cam", "Front door", True, False)
        c.set_camera("garden")
        assert c.cameras() == ["cam", "door", "garden"]
        assert c.learned("cam", "motion") is None
        c.set_learned("cam", "motion", '{"a": 1}')
        c.set_learned("cam", "motion", '{"a": 2}')
        c.set_learned("door", "motion", "{}")
        assert c.learned("cam", "motion") == '{"a": 2}'
        assert c.forget_learned("cam") == 1
        assert c.learned("cam", "motion") is None and c.learned("door", "motion") == "{}"


def test_the_log_keeps_its_newest_lines(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cat, "LOG_KEPT", 150)
    for i in range(450):
        catalog.log("recording", f"line {i}", "cam", t=float(i))
    lines = catalog.log_lines(1000)
    # Pruned every 100 lines down to the newest 150 (at most 249 between prunes).
    assert 150 <= len(lines) < 250
    assert lines[-1].text == "line 449" and lines[0].text != "line 0"


def test_a_later_migration_step_keeps_the_rows(catalog: Catalog, db: Path) -> None:
    rid = catalog.recording_opened("cam", "continuous", db.parent / "a.h264", 1.0)
    catalog.close()
    conn = sqlite3.connect(db, isolation_level=None)
    steps = [*MIGRATIONS, ("ALTER TABLE recordings ADD COLUMN note TEXT",
                           "UPDATE recordings SET note = 'v2'")]
    assert migrate(conn, steps) == cat.VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == cat.VERSION + 1
    assert conn.execute("SELECT id, note FROM recordings").fetchall() == [(rid, "v2")]
    assert migrate(conn, steps) == cat.VERSION + 1  # nothing left to do
    conn.close()
    # A file newer than this program is refused and left as it is, never moved aside.
    before = db.read_bytes()
    with pytest.raises(CatalogTooNew):
        Catalog.open(db, owner=True)
    assert db.read_bytes() == before
    assert not list(db.parent.glob("*.corrupt-*"))


def test_a_failing_migration_step_leaves_the_old_version(catalog: Catalog, db: Path) -> None:
    catalog.close()
    conn = sqlite3.connect(db, isolation_level=None)
    steps = [*MIGRATIONS, ("CREATE TABLE half (x)", "THIS IS NOT SQL")]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, steps)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == cat.VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    conn.close()


# ---------------------------------------------------------------- damage and rebuild


def _disk(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """Real recordings: three segments with sidecars, a clip with its snapshot, one without a
    sidecar; mp4s for two of them (one cut short), and an mp4 whose h264 retention deleted."""
    rec, mp4 = tmp_path / "rec", tmp_path / "mp4"
    rec.mkdir()
    mp4.mkdir()
    files = {}
    for stem, frames in (("20260101-1000", 24), ("20260101-1015", 36), ("20260101-1030", 12)):
        files[stem] = make_recording(rec / f"{stem}.h264", frames,
                                     [i * 1000 / 12 for i in range(frames)])
    files["clip"] = make_recording(rec / "20260101-102455.h264", 18,
                                   [i * 1000 / 12 for i in range(18)])
    (rec / "20260101-102455.jpg").write_bytes(b"\xff\xd8jpeg")
    files["nosidecar"] = make_recording(rec / "20260101-1045.h264", 30)
    remux(files["20260101-1000"], mp4 / "20260101-1000.mp4", 12.0,
          files["20260101-1000"].with_suffix(".pts"))
    # A truncated mp4 (postproc restarted mid-segment in older versions): not converted.
    short = make_recording(tmp_path / "short.h264", 20, [i * 1000 / 12 for i in range(20)])
    remux(short, mp4 / "20260101-1015.mp4", 12.0, short.with_suffix(".pts"))
    gone = make_recording(tmp_path / "20251231-2345.h264", 24)
    remux(gone, mp4 / "20251231-2345.mp4", 12.0, None)
    (rec / "notes.h264").write_bytes(b"not a recording name")
    for p in [*rec.iterdir(), *mp4.iterdir()]:
        old(p)
    return rec, mp4, files


def test_garbage_catalog_moved_aside_then_rebuilt_from_real_files(
        db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec, mp4, files = _disk(tmp_path)
    db.parent.mkdir()
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with pytest.raises(CatalogUnavailable):  # postproc waits for pancake
        Catalog.open(db)
    assert db.read_bytes() == garbage
    with caplog.at_level(logging.ERROR), Catalog.open(db, owner=True) as c:
        assert c.fresh and c.moved_aside is not None
        assert c.moved_aside.name.startswith("pancake.db.corrupt-")
        assert c.moved_aside.read_bytes() == garbage
        lines = [r for r in caplog.records if r.name == cat.__name__]
        assert len(lines) == 1 and "damaged" in lines[0].getMessage()
        done = rebuild(c, [rec], mp4, "cam")
        assert (done.recordings, done.conversions, done.gone) == (5, 1, 1)
        by_stem = {r.stem: r for r in c.recordings("cam", 0, 1e10, include_deleted=True)}
        assert sorted(by_stem) == ["20251231-2345", "20260101-1000", "20260101-1015",
                                   "20260101-102455", "20260101-1030", "20260101-1045"]
        first = by_stem["20260101-1000"]
        start = recording_time("20260101-1000")
        assert start is not None
        assert (first.kind, first.frames, first.closed, first.deleted) == (
            "continuous", 24, True, False)
        assert first.start == start[0] and first.end == pytest.approx(start[0] + 23 / 12)
        assert first.size == files["20260101-1000"].stat().st_size
        assert by_stem["20260101-102455"].kind == "clip"
        assert by_stem["20260101-1045"].frames == 30  # counted in the file: no sidecar
        assert c.is_converted(files["20260101-1000"])
        assert not c.is_converted(files["20260101-1015"])  # the short mp4 is made again
        assert by_stem["20251231-2345"].deleted and c.name_used("cam", "20251231-2345")
        assert [r.stem for r in c.pending_conversions()] == [
            "20260101-1015", "20260101-102455", "20260101-1030", "20260101-1045"]
        assert c.pending_uploads("sftp://a")  # uploads count as not done
        # Idempotent: a second rebuild adds nothing.
        again = rebuild(c, [rec], mp4, "cam")
        assert (again.recordings, again.conversions, again.gone) == (0, 0, 0)
        assert [(d.kind, d.path.name) for d in check(c, [rec], mp4, "cam")] == [
            ("mp4 frames", "20260101-1015.mp4")]


@pytest.mark.parametrize("damage", ["truncated", "scribbled"])
def test_damaged_catalog_moved_aside(catalog: Catalog, db: Path, damage: str) -> None:
    with catalog.transaction() as c:
        c.executemany("INSERT INTO log (time, camera, kind, text) VALUES (?, 'cam', 'x', ?)",
                      [(float(i), f"a line long enough to fill pages {i:06d}")
                       for i in range(3000)])
    catalog.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size
    assert size > 100_000
    with db.open("r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:  # a page in the middle overwritten (an SD card's bad block): the schema reads
            f.seek(size // 2 // 4096 * 4096)
            f.write(b"\xa5" * 4096)
    damaged = db.read_bytes()
    with Catalog.open(db, owner=True) as c:
        assert c.fresh and c.moved_aside is not None
        assert c.moved_aside.read_bytes() == damaged
        assert c.log_lines(5) == []
        c.log("recording", "goes on", "cam")
        assert [x.text for x in c.log_lines(5)] == ["goes on"]


def test_a_reader_follows_the_catalog_the_owner_made_in_place_of_a_damaged_one(
        catalog: Catalog, db: Path) -> None:
    """postproc's connections must not go on writing the file pancake moved aside."""
    with Catalog.open(db) as other:  # postproc's
        rid = other.recording_opened("cam", "continuous", db.parent / "a.h264", 1.0)
        catalog.close()
        aside = cat._aside(db)  # what the owner does with a damaged file
        with pytest.raises(CatalogUnavailable):
            other.recording(rid)  # no catalog at the path: wait, never write the old one
        with Catalog.open(db, owner=True) as new:
            assert new.fresh
            other.log("conversion", "after", "cam")
            assert [ln.text for ln in new.log_lines(10)] == ["after"]
    with Catalog.open(aside) as old:
        assert old.log_lines(10) == [] and old.recording(rid) is not None


def test_a_missing_catalog_is_made_by_the_owner_only(db: Path) -> None:
    db.parent.mkdir()
    with pytest.raises(CatalogUnavailable):
        Catalog.open(db)
    assert not db.exists()
    with Catalog.open(db, owner=True) as c:
        assert c.fresh and c.moved_aside is None
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with Catalog.open(db, owner=True) as c:
        assert not c.fresh


def test_check_reports_what_disagrees_with_the_disk(db: Path, tmp_path: Path) -> None:
    rec, mp4, files = _disk(tmp_path)
    db.parent.mkdir()
    with Catalog.open(db, owner=True) as c:
        rebuild(c, [rec], mp4, "cam")
        files["20260101-1030"].unlink()
        (mp4 / "20260101-1000.mp4").unlink()
        make_recording(rec / "20260101-1100.h264", 6)
        remux(files["20260101-1015"], mp4 / "20260101-1015.mp4", 12.0, None)  # replace short
        c.mark_deleted(files["clip"])  # retention said so: not "missing"
        files["clip"].unlink()
        found = {(d.kind, d.path.name) for d in check(c, [rec], mp4, "cam")}
        assert found == {("missing", "20260101-1030.h264"), ("unknown", "20260101-1100.h264"),
                         ("mp4 missing", "20260101-1000.mp4"),
                         ("mp4 unknown", "20260101-1015.mp4")}


def test_old_upload_journals_imported_once(db: Path, tmp_path: Path) -> None:
    rec, mp4, files = _disk(tmp_path)
    journal = mp4 / ".uploaded"
    journal.mkdir()
    (journal / "0123456789ab.names").write_text(
        "# uploaded to sftp://pi@backup:22/cam\n20260101-1000.mp4\n20251231-2345.mp4\n"
        "20260101-1015.mp4\ntorn-li")
    (journal / "badbadbadbad.names").write_text("no label\n20260101-1000.mp4\n")
    db.parent.mkdir()
    with Catalog.open(db, owner=True) as c:
        rebuild(c, [rec], mp4, "cam")
        # 1015's mp4 is not counted as converted (short), so its journal line is skipped.
        assert import_journals(c, mp4) == 2
        rid = c.recording_at(files["20260101-1000"])
        assert rid is not None and c.is_uploaded(rid.id, "sftp://pi@backup:22/cam")
        assert c.pending_uploads("sftp://pi@backup:22/cam") == []
        assert import_journals(c, mp4) is None


# ---------------------------------------------------------------- processes


CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
from pathlib import Path
from raspberry_pancake.shared.catalog import Catalog, CatalogError
cat = Catalog.open(Path({db!r}))
name, until = {name!r}, time.time() + {seconds}
n = errors = 0
while time.time() < until:
    try:
        rid = cat.recording_opened(name, "continuous", Path(f"/rec/{{name}}/{{n}}.h264"), n)
        ev = cat.event_rose(name, n, ["motion"])
        cat.event_clip(ev, rid)
        cat.recording_closed(rid, n + 1.0, 25)
        cat.converted(rid, Path(f"/mp4/{{name}}/{{n}}.mp4"), 25, 1.0)
        cat.recordings(name, n - 100, n + 1)
        n += 1
    except CatalogError as exc:
        errors += 1
        print("error:", exc, file=sys.stderr)
print(json.dumps({{"n": n, "errors": errors}}))
"""


def test_two_processes_writing_at_once_never_see_a_locked_database(catalog: Catalog,
                                                                   db: Path) -> None:
    seconds = 4
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(
        root=str(ROOT), db=str(db), name=name, seconds=seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    # And this process reads all the while, as the page would.
    reads = 0
    while any(p.poll() is None for p in procs):
        catalog.recordings("a", 0, 1e10)
        catalog.deletion_order([Path("/rec/a"), Path("/rec/b")], [])
        reads += 1
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "locked" not in err and "error" not in err, err
        results.append(json.loads(out))
    assert all(r["errors"] == 0 and r["n"] > 20 for r in results), results
    for name, r in zip("ab", results, strict=True):
        rows = catalog.recordings(name, 0, 1e10)
        assert len(rows) == r["n"] and all(x.closed and x.frames == 25 for x in rows)
        assert len(catalog.events(name, 0, 1e10)) == r["n"]
    assert reads > 0


KILLED = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from raspberry_pancake.shared.catalog import Catalog
cat = Catalog.open(Path({db!r}))
for n in range(50):
    rid = cat.recording_opened("cam", "continuous", Path(f"/rec/{{n}}.h264"), n)
    cat.recording_closed(rid, n + 1.0, 25)
with cat.transaction() as c:
    c.execute("INSERT INTO recordings (camera, kind, path, dir, stem, start) "
              "VALUES ('cam', 'continuous', '/rec/torn.h264', '/rec', 'torn', 99)")
    c.execute("UPDATE recordings SET frames = -1")
    print("in the transaction", flush=True)
    time.sleep(60)
"""


def test_kill_9_in_the_middle_of_a_transaction_leaves_a_consistent_catalog(
        catalog: Catalog, db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(root=str(ROOT), db=str(db))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "in the transaction", proc.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    catalog.close()
    with Catalog.open(db, owner=True) as c:  # the owner's quick_check passes: no damage
        assert not c.fresh and c.moved_aside is None
        rows = c.recordings("cam", 0, 1e10)
        assert len(rows) == 50 and all(r.closed and r.frames == 25 for r in rows)
        assert c.recording_at(Path("/rec/torn.h264")) is None
        # The dead writer's lock is gone: writing goes on at once.
        c.recording_opened("cam", "continuous", Path("/rec/after.h264"), 100)


def test_a_newer_rollback_journal_file_is_not_switched_to_wal(tmp_path: Path) -> None:
    """A catalog from a newer version is left exactly as it is, journal mode included."""
    db = tmp_path / "pancake.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(CatalogTooNew):
        Catalog.open(db, owner=True)
    assert db.read_bytes() == before
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
