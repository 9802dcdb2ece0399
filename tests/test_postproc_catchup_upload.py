"""Every converted mp4 reaches every destination: the upload journal and its catch-up."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raspberry_pancake.postproc.config import parse
from raspberry_pancake.postproc.main import Postproc
from raspberry_pancake.postproc.receiver import open_socket
from raspberry_pancake.postproc.upload.ftp import FtpDestination
from raspberry_pancake.postproc.upload.journal import JOURNAL_DIR, UploadJournal
from raspberry_pancake.postproc.upload.targets import FtpTarget
from raspberry_pancake.postproc.upload.worker import UploadWorker
from raspberry_pancake.shared.credentials import Secret
from tests.postproc_servers import (
    FtpServer,
    PostprocProcess,
    SshServer,
    make_recording,
    sshd_available,
    wait_for,
)

FTP_PASSWORD = "catch-up-ftp-pass"


@pytest.fixture
def ftpd(tmp_path: Path) -> Iterator[FtpServer]:
    server = FtpServer(tmp_path / "ftproot", password=FTP_PASSWORD)
    try:
        yield server
    finally:
        server.stop()


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    h264, mp4 = tmp_path / "h264", tmp_path / "mp4"
    h264.mkdir()
    mp4.mkdir()
    return h264, mp4


def _mp4s(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.mp4")) if directory.is_dir() else []


def _journal_names(journal: Path) -> list[str]:
    return [line for line in journal.read_text().splitlines() if not line.startswith("#")]


def _postproc(tmp_path: Path, ftpd: FtpServer, h264: Path, mp4: Path, run: int,
              *extra: str) -> PostprocProcess:
    name = f"pp-catch-{uuid.uuid4().hex[:12]}"
    return PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-ftp", "127.0.0.1", str(ftpd.port), ftpd.user,
                            "env:PP_FTP", "cam", *extra],
                           tmp_path / f"postproc-{run}.log", env={"PP_FTP": FTP_PASSWORD})


def test_journal_keeps_only_names_still_on_disk(tmp_path: Path) -> None:
    mp4 = tmp_path / "mp4"
    mp4.mkdir()
    for n in ("20240623-1700.mp4", "20240623-1715.mp4", "20240623-1730.mp4"):
        (mp4 / n).write_bytes(b"x")
    (mp4 / ".20240623-1745.tmp.mp4").write_bytes(b"a conversion in progress")
    (mp4 / "notes.txt").write_text("not a video")
    journal = UploadJournal(mp4, "ftp://cam@127.0.0.1:21/cam")
    assert journal.path.parent == mp4 / JOURNAL_DIR
    journal.path.parent.mkdir()
    # A name whose file a retention script deleted, and a last line torn by a power cut.
    journal.path.write_text("# uploaded to ftp://cam@127.0.0.1:21/cam\n20240623-1700.mp4\n"
                            "20240101-0000.mp4\n20240623-17")
    journal.load()
    assert _journal_names(journal.path) == ["20240623-1700.mp4"], "compacted on start"
    assert [p.name for p in journal.unacknowledged()] == ["20240623-1715.mp4",
                                                          "20240623-1730.mp4"]
    journal.record(mp4 / "20240623-1730.mp4")
    assert _journal_names(journal.path) == ["20240623-1700.mp4", "20240623-1730.mp4"]
    assert [p.name for p in journal.unacknowledged()] == ["20240623-1715.mp4"]
    (mp4 / "20240623-1700.mp4").unlink()  # retention again: nothing breaks
    assert [p.name for p in journal.unacknowledged()] == ["20240623-1715.mp4"]
    # A fresh start reads what was appended, fsync'd, and drops the deleted name.
    again = UploadJournal(mp4, "ftp://cam@127.0.0.1:21/cam")
    again.load()
    assert _journal_names(again.path) == ["20240623-1730.mp4"]
    assert [p.name for p in again.unacknowledged()] == ["20240623-1715.mp4"]
    # Another destination (another remote dir) has its own journal and owes everything.
    other = UploadJournal(mp4, "ftp://cam@127.0.0.1:21/elsewhere")
    other.load()
    assert other.path != again.path
    assert [p.name for p in other.unacknowledged()] == ["20240623-1715.mp4",
                                                        "20240623-1730.mp4"]


def test_catch_up_offers_oldest_first_within_the_queue_bound(tmp_path: Path,
                                                             ftpd: FtpServer) -> None:
    mp4 = tmp_path / "mp4"
    mp4.mkdir()
    names = [f"20240623-17{m:02d}.mp4" for m in range(5)]
    for n in reversed(names):  # written newest first: order must come from the names
        (mp4 / n).write_bytes(os.urandom(20_000))
    target = FtpTarget("127.0.0.1", ftpd.port, ftpd.user, Secret(FTP_PASSWORD, "t"), "cam")
    journal = UploadJournal(mp4, target.label)
    journal.load()
    journal.record(mp4 / names[1])  # acknowledged before: never offered again
    stop = threading.Event()
    worker = UploadWorker(FtpDestination(target, 5, 5), queue_size=2, stop=stop,
                          journal=journal)
    try:
        assert worker.catch_up() == 2  # the queue holds two; the third is dropped, logged
        assert worker.dropped == 1
        worker.start()
        # Once its queue is empty the worker runs the next catch-up itself: the rest follow.
        wait_for(lambda: worker.uploaded == 4, 20)
        assert worker.catch_up() == 0  # nothing left to offer
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
    assert ftpd.received == [n + ".part" for n in names if n != names[1]]
    assert _mp4s(ftpd.root / "cam/2024/06/23") == [n for n in names if n != names[1]]
    assert sorted(_journal_names(journal.path)) == names


def test_files_dropped_from_a_full_queue_are_uploaded_after_a_restart(
        tmp_path: Path, ftpd: FtpServer) -> None:
    h264, mp4 = _dirs(tmp_path)
    names = [f"20240623-18{m:02d}" for m in range(4)]
    for n in names:
        make_recording(h264 / f"{n}.h264", frames=48)
    ftpd.throttle(8 * 1024)  # a stalled destination: the first upload takes many seconds
    day = ftpd.root / "cam/2024/06/23"
    first = _postproc(tmp_path, ftpd, h264, mp4, 1, "--upload-queue-size", "1")
    try:
        wait_for(lambda: len(_mp4s(mp4)) == 4 and "dropped" in first.log_text(), 30)
    finally:
        assert first.terminate() == 0
    dropped = set(re.findall(r"full: dropped \S*/(\S+\.mp4)", first.log_text()))
    assert dropped, first.log_text()
    before = set(_mp4s(day))
    assert not dropped & before, "a dropped file was not uploaded in the first run"
    assert len(before) < 4

    ftpd.throttle(None)  # the destination is healthy again
    second = _postproc(tmp_path, ftpd, h264, mp4, 2, "--upload-queue-size", "1")
    try:
        wait_for(lambda: _mp4s(day) == [f"{n}.mp4" for n in names], 30)
    finally:
        assert second.terminate() == 0
    for n in names:
        assert (day / f"{n}.mp4").read_bytes() == (mp4 / f"{n}.mp4").read_bytes()
    assert "catch-up: offered" in second.log_text()
    assert FTP_PASSWORD not in first.log_text() + second.log_text()


@pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd not installed")
def test_upload_given_up_while_the_destination_was_down_is_done_on_the_next_start(
        tmp_path: Path) -> None:
    sshd = SshServer(tmp_path / "sshd", start=False)  # keys and port, nothing listening
    h264, mp4 = _dirs(tmp_path)
    make_recording(h264 / "20240623-1900.h264", frames=24)
    name = f"pp-catch-{uuid.uuid4().hex[:12]}"
    cfg = parse([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                 "--upload-after-convert", "1",
                 "--upload-scp", "root@127.0.0.1", str(sshd.port), str(sshd.remote / "cam"),
                 "--known-hosts", str(sshd.known_hosts), "--ssh-key", str(sshd.client_key)])
    cfg = dataclasses.replace(cfg, upload_attempts=2, upload_backoff_first=0.1)
    remote = sshd.remote / "cam/2024/06/23/20240623-1900.mp4"
    app = Postproc(cfg, open_socket(name))
    try:
        app.start()
        wait_for(lambda: app.workers[0].given_up == 1, 20)
    finally:
        assert app.stop()
    assert (mp4 / "20240623-1900.mp4").is_file() and not remote.exists()
    assert app.workers[0].uploaded == 0

    sshd.start()
    try:
        app = Postproc(cfg, open_socket(name))
        try:
            app.start()
            wait_for(lambda: app.workers[0].uploaded == 1, 20)
        finally:
            assert app.stop()
    finally:
        sshd.stop()
    assert remote.read_bytes() == (mp4 / "20240623-1900.mp4").read_bytes()
    assert app.converter.converted == 0, "converted once, in the first run"


def test_uploaded_files_are_not_uploaded_again_on_restart(tmp_path: Path,
                                                          ftpd: FtpServer) -> None:
    h264, mp4 = _dirs(tmp_path)
    names = [f"20240623-20{m:02d}" for m in range(3)]
    for n in names:
        make_recording(h264 / f"{n}.h264", frames=12)
    day = ftpd.root / "cam/2024/06/23"
    first = _postproc(tmp_path, ftpd, h264, mp4, 1)
    try:
        # The log line follows the journal's append: a stop cannot fall between the two.
        wait_for(lambda: first.log_text().count(": uploaded ") == 3, 30)
    finally:
        assert first.terminate() == 0
    # A retention script deletes the oldest recording and its mp4 while postproc is down;
    # a new recording arrives.
    (h264 / f"{names[0]}.h264").unlink()
    (mp4 / f"{names[0]}.mp4").unlink()
    make_recording(h264 / "20240623-2100.h264", frames=12)
    second = _postproc(tmp_path, ftpd, h264, mp4, 2)
    try:
        # The new file is uploaded after any catch-up of older ones (oldest first): once it
        # is there, a repeated upload would have shown.
        wait_for(lambda: (day / "20240623-2100.mp4").exists(), 30)
    finally:
        assert second.terminate() == 0
    assert ftpd.received == [f"{n}.mp4.part" for n in names] + ["20240623-2100.mp4.part"]
    (journal,) = (mp4 / JOURNAL_DIR).iterdir()
    # Compacted on start: the deleted name is gone; the new upload was appended.
    assert _journal_names(journal) == [f"{names[1]}.mp4", f"{names[2]}.mp4",
                                       "20240623-2100.mp4"]
