"""postproc reads and writes the catalog: nothing converted twice, sent twice, cut short or replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import raspberry_pancake.postproc.convert as convert_module
from raspberry_pancake.postproc.config import parse
from raspberry_pancake.postproc.convert import Converter, ConvertSettings, pending
from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.cli import ConfigError
from tests.postproc_servers import (
    FTP_PASSWORD,
    FtpServer,
    PostprocProcess,
    decoded_frames,
    h264_bytes,
    make_dirs,
    make_recording,
    open_catalog,
    send_event,
    wait_for,
    wait_socket,
)

REMOTE = "cam"




def _label(ftpd: FtpServer) -> str:
    return f"ftp://{ftpd.user}@127.0.0.1:{ftpd.port}/{REMOTE}"


class Run:
    """One postproc run on the test's catalog, its socket bound before the test goes on."""

    def __init__(self, tmp_path: Path, h264: Path, mp4: Path, catalog: Path, n: int,
                 ftpd: FtpServer | None = None) -> None:
        self.name = f"pp-cat-{uuid.uuid4().hex[:12]}"
        upload = [] if ftpd is None else [
            "--upload-after-convert", "1", "--upload-ftp", "127.0.0.1", str(ftpd.port),
            ftpd.user, "env:PP_FTP", REMOTE]
        self.proc = PostprocProcess([self.name, "--convert", str(mp4), "12", "--h264-dir",
                                     str(h264), "--catalog", str(catalog), *upload],
                                    tmp_path / f"postproc-{n}.log", env={"PP_FTP": FTP_PASSWORD})
        try:
            wait_socket(self.name)
        except BaseException:
            self.proc.close()
            raise

    def log(self) -> str:
        return self.proc.log_text()


def _pancake_recording(catalog: Catalog, path: Path, frames: int, closed: bool = True,
                       settled: bool = True) -> int:
    """A recording as pancake catalogues it (opened, and closed with its frames), its file on
    disk; settled: dated minutes back, so only the catalog can tell it from a finished one."""
    path.write_bytes(h264_bytes(frames))
    then = time.time() - 300
    if settled:
        os.utime(path, (then, then))
    rid = catalog.recording_opened("cam", "continuous", path, then)
    if closed:
        catalog.recording_closed(rid, then + frames / 12, frames, path.stat().st_size)
    return rid


# ---------------------------------------------------------------- loss 1: stricter mp4 retention

def test_mp4_retention_stricter_than_h264_converts_and_uploads_nothing_twice(
        tmp_path: Path, ftpd: FtpServer) -> None:
    """`limit_files_by_number.py h264 8 mp4 4`: the mp4s of recordings whose h264 is kept are
    deleted. Every start used to convert those h264s again and upload them again."""
    h264, mp4 = make_dirs(tmp_path)
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    names = [f"20240623-17{m:02d}" for m in (0, 15, 30, 45)]
    for n in names:
        _pancake_recording(catalog, h264 / f"{n}.h264", 12)
    first = Run(tmp_path, h264, mp4, db, 1, ftpd)
    try:
        wait_for(lambda: first.log().count(": uploaded ") == 4, 30)
    finally:
        assert first.proc.terminate() == 0
    for n in names[:3]:  # retention keeps fewer mp4s than h264s; it does not tell the catalog
        (mp4 / f"{n}.mp4").unlink()
    for run in (2, 3):
        later = Run(tmp_path, h264, mp4, db, run, ftpd)
        try:
            # A finished message repeated for a converted file, then a new segment: once the
            # new one is uploaded, any repeated work (oldest first) would have shown.
            send_event(later.name, {"h264": str(h264 / f"{names[0]}.h264")})
            new = h264 / f"20240623-18{run:02d}.h264"
            _pancake_recording(catalog, new, 12)
            send_event(later.name, {"h264": str(new)})
            target = ftpd.root / REMOTE / "2024/06/23" / f"{new.stem}.mp4"
            wait_for(target.exists, 30)
            # Recorded, not only at the server (stopped in between, it is sent again later).
            wait_for(lambda n=new.stem, p=later: f": uploaded {n}.mp4" in p.log(), 30)
        finally:
            assert later.proc.terminate() == 0
        assert later.log().count("convert: converted ") == 1, later.log()
        assert "converted before (the catalog says so)" in later.log()
    made = [*names, "20240623-1802", "20240623-1803"]
    assert sorted(ftpd.received) == sorted(f"{n}.mp4.part" for n in made), "each sent once"
    assert sorted(p.name for p in mp4.glob("*.mp4")) == [f"{n}.mp4" for n in made[3:]]
    for n in made:
        rec = catalog.recording_at(h264 / f"{n}.h264")
        assert rec is not None and catalog.conversion(rec.id) is not None
        assert catalog.is_uploaded(rec.id, _label(ftpd))


def test_rescans_never_convert_again_what_the_catalog_says_was_converted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "RESCAN_INTERVAL", 0.0)  # rescan whenever idle
    h264, mp4 = make_dirs(tmp_path)
    catalog = open_catalog(tmp_path / "pancake.db")
    _pancake_recording(catalog, h264 / "20240623-1700.h264", 12)
    make_recording(h264 / "20240623-1715.h264", frames=12, settled=True)  # never catalogued
    done: list[str] = []
    rescans: list[int] = []

    def rescan() -> list[convert_module.Job]:
        jobs = pending(catalog, [h264])
        rescans.append(len(jobs))
        return jobs

    def converted(job: convert_module.Job, rid: int, out: Path) -> None:
        done.append(out.name)
        out.unlink()  # retention stricter on mp4s, at once

    stop = threading.Event()
    conv = Converter(ConvertSettings(mp4, 12.0), catalog, stop, converted, rescan=rescan)
    conv.start()
    try:
        wait_for(lambda: len(rescans) >= 20, 30)
    finally:
        stop.set()
    assert conv.join(5)
    assert sorted(done) == ["20240623-1700.mp4", "20240623-1715.mp4"], "each converted once"
    assert conv.converted == 2


# ---------------------------------------------------------------- loss 2: restart mid-segment

def test_restart_while_a_segment_is_open_makes_no_truncated_mp4(tmp_path: Path) -> None:
    """At start postproc converted every .h264 without an mp4, the segment pancake was still
    writing included: a truncated mp4, and the full segment never converted."""
    h264, mp4 = make_dirs(tmp_path)
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    seg = h264 / "20240623-1700.h264"
    # Half written, and (a slow camera, a paused pipeline) not touched for minutes: only the
    # catalog says it is still open.
    rid = _pancake_recording(catalog, seg, 12, closed=False)
    run = Run(tmp_path, h264, mp4, db, 1)
    try:
        run.proc.wait_log("accepting .h264")
        wait_for(lambda: "catch-up" in run.log() or "catalog" in run.log(), 10)
        time.sleep(1.0)  # what a start would have done, it has had the time to do
        assert not (mp4 / "20240623-1700.mp4").exists(), run.log()
        # pancake finishes the segment (24 frames), closes it and says so.
        seg.write_bytes(h264_bytes(24))
        catalog.recording_closed(rid, time.time(), 24, seg.stat().st_size)
        send_event(run.name, {"h264": str(seg)})
        wait_for(lambda: (mp4 / "20240623-1700.mp4").exists(), 20)
    finally:
        assert run.proc.terminate() == 0
    assert decoded_frames(mp4 / "20240623-1700.mp4") == 24, "the whole segment"
    conv = catalog.conversion(rid)
    assert conv is not None and conv.frames == 24


def test_a_segment_closed_while_postproc_was_down_is_converted_at_the_next_start(
        tmp_path: Path) -> None:
    """Its message lost (postproc stopped): the catalog says it is closed, catch-up takes it."""
    h264, mp4 = make_dirs(tmp_path)
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    seg = h264 / "20240623-1700.h264"
    rid = _pancake_recording(catalog, seg, 12, closed=False)
    first = Run(tmp_path, h264, mp4, db, 1)
    time.sleep(1.0)
    assert first.proc.terminate() == 0
    assert not list(mp4.glob("*.mp4"))
    seg.write_bytes(h264_bytes(36))
    catalog.recording_closed(rid, time.time(), 36, seg.stat().st_size)
    second = Run(tmp_path, h264, mp4, db, 2)
    try:
        wait_for(lambda: (mp4 / "20240623-1700.mp4").exists(), 20)
    finally:
        assert second.proc.terminate() == 0
    assert decoded_frames(mp4 / "20240623-1700.mp4") == 36


# ---------------------------------------------------------------- loss 3: a reused name

def test_a_reused_name_with_only_the_mp4_left_replaces_nothing(tmp_path: Path,
                                                                ftpd: FtpServer) -> None:
    """Retention removed an older recording's h264 and kept its mp4 (and its backup); a new
    recording of the same name (the clock went back, DST; another record directory) must
    take `-1`, locally and remotely."""
    h264, mp4 = make_dirs(tmp_path)
    other = tmp_path / "h264-clips"
    other.mkdir()
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    old = h264 / "20240623-1700.h264"
    rid = _pancake_recording(catalog, old, 12)
    first = Run(tmp_path, h264, mp4, db, 1, ftpd)
    try:
        wait_for(lambda: ": uploaded " in first.log(), 30)
    finally:
        assert first.proc.terminate() == 0
    kept = (mp4 / "20240623-1700.mp4").read_bytes()
    remote = ftpd.root / REMOTE / "2024/06/23"
    backup = (remote / "20240623-1700.mp4").read_bytes()
    old.unlink()
    catalog.mark_deleted(old)
    # The same name again, in the other record directory, and (never catalogued, copied in
    # by hand) an mp4 of a third recording's name with other frames.
    again = make_recording(other / "20240623-1700.h264", frames=36, settled=True)
    stray = mp4 / "20240623-1715.mp4"
    stray.write_bytes(b"someone's file")
    third = make_recording(other / "20240623-1715.h264", frames=24, settled=True)
    name = f"pp-cat-{uuid.uuid4().hex[:12]}"
    second = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                              "--h264-dir", str(other), "--catalog", str(db),
                              "--upload-after-convert", "1", "--upload-ftp", "127.0.0.1",
                              str(ftpd.port), ftpd.user, "env:PP_FTP", REMOTE],
                             tmp_path / "postproc-2.log", env={"PP_FTP": FTP_PASSWORD})
    try:
        wait_for(lambda: second.log_text().count(": uploaded ") == 2, 30)
    finally:
        assert second.terminate() == 0
    assert (mp4 / "20240623-1700.mp4").read_bytes() == kept, "the old mp4 is untouched"
    assert (remote / "20240623-1700.mp4").read_bytes() == backup, "and its backup"
    assert stray.read_bytes() == b"someone's file"
    assert decoded_frames(mp4 / "20240623-1700-1.mp4") == 36
    assert decoded_frames(mp4 / "20240623-1715-1.mp4") == 24
    assert sorted(p.name for p in remote.iterdir()) == [
        "20240623-1700-1.mp4", "20240623-1700.mp4", "20240623-1715-1.mp4"]
    assert "belongs to another recording" in second.log_text()
    for path, mp4_name in ((again, "20240623-1700-1.mp4"), (third, "20240623-1715-1.mp4")):
        rec = catalog.recording_at(path)
        assert rec is not None
        conv = catalog.conversion(rec.id)
        assert conv is not None and conv.mp4.name == mp4_name
    first_conv = catalog.conversion(rid)
    assert first_conv is not None and first_conv.mp4.name == "20240623-1700.mp4"


# ---------------------------------------------------------------- crashes and concurrency

def test_kill_9_mid_conversion_leaves_a_catalog_that_opens_and_tells_the_truth(
        tmp_path: Path) -> None:
    h264, mp4 = make_dirs(tmp_path)
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    names = [f"20240623-{h:02d}00" for h in range(8)]
    for n in names:
        _pancake_recording(catalog, h264 / f"{n}.h264", 600)
    catalog.close()
    run = Run(tmp_path, h264, mp4, db, 1)
    try:
        # Killed while a conversion is under way (its temporary file is there).
        wait_for(lambda: list(mp4.glob(".*.tmp.mp4")) and len(list(mp4.glob("*.mp4"))) >= 1,
                 30, interval=0.005)
        run.proc.proc.send_signal(signal.SIGKILL)
        run.proc.proc.wait(10)
    finally:
        run.proc.close()
    after = Catalog.open(db, owner=False)  # opens: no damage to move aside
    try:
        for n in names:
            rec = after.recording_at(h264 / f"{n}.h264")
            assert rec is not None
            conv = after.conversion(rec.id)
            if conv is not None:  # what it says was converted is there, whole
                assert conv.mp4.is_file() and decoded_frames(conv.mp4) == conv.frames == 600
        converted_before = sum(after.conversion(r.id) is not None
                               for r in after.recordings("cam", 0, time.time()))
        assert converted_before < len(names), "killed mid-way, not after the end"
        again = Run(tmp_path, h264, mp4, db, 2)
        try:
            wait_for(lambda: all(
                (rec := after.recording_at(h264 / f"{n}.h264")) is not None
                and after.conversion(rec.id) is not None for n in names), 60)
        finally:
            assert again.proc.terminate() == 0
        # Each recording once: no `-1` copy of a file the kill left unrecorded.
        assert sorted(p.name for p in mp4.iterdir()) == [f"{n}.mp4" for n in names]
        for n in names:
            assert decoded_frames(mp4 / f"{n}.mp4") == 600
    finally:
        after.close()


# Another process writing the catalog as fast as pancake ever would and faster: a short
# transaction after another, each holding the write lock a little while.
_WRITER = """
import sys, time
from pathlib import Path
from raspberry_pancake.shared.catalog import Catalog
catalog = Catalog.open(Path(sys.argv[1]), owner=False)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    with catalog.transaction() as c:
        c.execute("INSERT INTO log (time, camera, kind, text) VALUES (?, 'cam', 'test', ?)",
                  (time.time(), f"line {n}"))
        time.sleep(0.02)
    n += 1
print(n)
"""


def test_two_processes_writing_at_once_never_show_database_is_locked(tmp_path: Path) -> None:
    h264, mp4 = make_dirs(tmp_path)
    db = tmp_path / "pancake.db"
    catalog = open_catalog(db)
    run = Run(tmp_path, h264, mp4, db, 1)
    root = Path(__file__).resolve().parent.parent
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), "20"], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent = 0
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            seg = h264 / f"20240623-{sent // 60:02d}{sent % 60:02d}.h264"
            _pancake_recording(catalog, seg, 6)
            send_event(run.name, {"h264": str(seg)})
            sent += 1
            time.sleep(0.2)
        wait_for(lambda: run.log().count("convert: converted ") == sent, 60)
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        assert run.proc.terminate() == 0
    assert writer.returncode == 0, out
    assert int(out.split()[-1]) > 100, "the other process did write all along"
    assert "locked" not in run.log() and "Traceback" not in run.log(), run.log()
    assert len(catalog.pending_conversions()) == 0


# ---------------------------------------------------------------- no pancake, old journals

def test_without_pancake_postproc_makes_the_catalog_and_keeps_the_old_journals(
        tmp_path: Path, ftpd: FtpServer) -> None:
    """An installation of the version before the catalog: h264s, their mp4s, and the journal
    of what the destination took. Nothing is converted or sent again."""
    h264, mp4 = make_dirs(tmp_path)
    names = ["20240623-1700", "20240623-1715"]
    for n in names:
        make_recording(h264 / f"{n}.h264", frames=12, settled=True)
    from raspberry_pancake.shared.remux import remux

    for n in names:
        remux(h264 / f"{n}.h264", mp4 / f"{n}.mp4", 12.0, None)
    journals = mp4 / ".uploaded"
    journals.mkdir()
    (journals / "0123456789ab.names").write_text(
        f"# uploaded to {_label(ftpd)}\n{names[0]}.mp4\n{names[1]}.mp4\n")
    make_recording(h264 / "20240623-1730.h264", frames=12, settled=True)  # never converted
    state = tmp_path / "state"
    name = f"pp-cat-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--state-dir", str(state), "--upload-after-convert", "1",
                            "--upload-ftp", "127.0.0.1", str(ftpd.port), ftpd.user,
                            "env:PP_FTP", REMOTE],
                           tmp_path / "postproc.log", env={"PP_FTP": FTP_PASSWORD})
    try:
        wait_for(lambda: ": uploaded " in proc.log_text(), 30)
        time.sleep(1.0)  # room for a repeated upload to show
    finally:
        assert proc.terminate() == 0
    assert ftpd.received == ["20240623-1730.mp4.part"], proc.log_text()
    assert proc.log_text().count("convert: converted ") == 1
    assert (state / "pancake.db").is_file()
    assert oct((state).stat().st_mode & 0o777) == oct(0o700)
    catalog = Catalog.open(state / "pancake.db", owner=False)
    for n in [*names, "20240623-1730"]:
        rec = catalog.recording_at(h264 / f"{n}.h264")
        assert rec is not None and catalog.is_uploaded(rec.id, _label(ftpd)), n


def test_catalog_and_state_dir_flags(tmp_path: Path) -> None:
    mp4 = tmp_path / "mp4"
    mp4.mkdir()
    base = ["pp", "--convert", str(mp4), "12"]
    assert parse([*base, "--catalog", str(tmp_path / "x.db")]).catalog == tmp_path / "x.db"
    cfg = parse([*base, "--state-dir", str(tmp_path / "st")])
    assert cfg.catalog == tmp_path / "st" / "pancake.db" and cfg.state_dir == tmp_path / "st"
    with pytest.raises(ConfigError, match="does not exist"):
        parse([*base, "--catalog", str(tmp_path / "nowhere" / "x.db")])
    with pytest.raises(SystemExit):  # one line from argparse, exit 2
        parse([*base, "--catalog", str(tmp_path / "x.db"), "--state-dir", str(tmp_path)])
    done = subprocess.run([sys.executable, "postproc.py", *base, "--catalog", str(mp4)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"postproc.py: error: --catalog: {str(mp4)!r} is a directory"]


def test_conversions_and_uploads_leave_short_lines_in_the_catalog_log(tmp_path: Path) -> None:
    """The page's log (issue 10): a conversion done or failed, an upload done or given up,
    each one line with its camera, and no secret."""
    from raspberry_pancake.postproc.upload.ftp import FtpDestination
    from raspberry_pancake.postproc.upload.targets import FtpTarget
    from raspberry_pancake.postproc.upload.worker import Mp4, UploadWorker
    from raspberry_pancake.shared.credentials import Secret
    from tests.postproc_servers import free_port

    h264, mp4 = make_dirs(tmp_path)
    catalog = open_catalog(tmp_path / "catalog.db")
    (mp4 / "back").write_text("a file where the camera's folder would go")
    front = make_recording(h264 / "20240623-1700.h264", frames=6)
    back = make_recording(h264 / "20240623-1715.h264", frames=6)
    for camera, path in (("front", front), ("back", back)):
        rid = catalog.recording_opened(camera, "continuous", path, time.time() - 60)
        catalog.recording_closed(rid, time.time() - 59, 6)
    made: list[Mp4] = []
    stop = threading.Event()
    conv = Converter(ConvertSettings(mp4, fps=12.0), catalog, stop,
                     lambda job, rid, out: made.append(Mp4(rid, out)))
    conv.catch_up(pending(catalog, [h264]))
    conv.start()
    try:
        wait_for(lambda: conv.converted + conv.failed == 2, 30)
    finally:
        stop.set()
        assert conv.join(5)
    assert conv.failed == 1 and [m.path.relative_to(mp4).as_posix() for m in made] == [
        "front/20240623-1700.mp4"]

    # Nothing listens there: every attempt fails, and the second is the last.
    target = FtpTarget("127.0.0.1", free_port(), "cam", Secret(FTP_PASSWORD, "test"), REMOTE)
    stop = threading.Event()
    worker = UploadWorker(FtpDestination(target, 2, 2), 4, stop, catalog, mp4,
                          backoff_first=0.05, max_attempts=2)
    worker.start()
    try:
        worker.offer(made[0])
        wait_for(lambda: worker.given_up == 1, 20)
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
    lines = [(line.camera, line.kind, line.text) for line in catalog.log_lines(20)]
    assert ("front", "conversion", "20240623-1700.h264 -> 20240623-1700.mp4") in lines
    assert any(cam == "back" and kind == "conversion" and "conversion failed" in text
               for cam, kind, text in lines), lines
    assert any(cam == "front" and kind == "upload" and "gave up after 2 attempts" in text
               for cam, kind, text in lines), lines
    assert all(len(text) <= 250 and FTP_PASSWORD not in text for _, _, text in lines)
