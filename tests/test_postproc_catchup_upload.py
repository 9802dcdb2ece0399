"""Every converted mp4 reaches every destination: the catalog's uploads and their catch-up."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import uuid
from pathlib import Path

import pytest

from raspberry_pancake.postproc.config import parse
from raspberry_pancake.postproc.main import Postproc
from raspberry_pancake.postproc.receiver import open_socket
from raspberry_pancake.postproc.upload.ftp import FtpDestination
from raspberry_pancake.postproc.upload.targets import FtpTarget
from raspberry_pancake.postproc.upload.worker import UploadWorker
from raspberry_pancake.shared.credentials import Secret
from tests.postproc_servers import (
    FTP_PASSWORD,
    FtpServer,
    PostprocProcess,
    SshServer,
    catalogued,
    default_catalog,
    make_dirs,
    make_recording,
    open_catalog,
    sshd_available,
    wait_for,
)


def _mp4s(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.mp4")) if directory.is_dir() else []


def _postproc(tmp_path: Path, ftpd: FtpServer, h264: Path, mp4: Path, run: int,
              *extra: str) -> PostprocProcess:
    name = f"pp-catch-{uuid.uuid4().hex[:12]}"
    return PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-ftp", "127.0.0.1", str(ftpd.port), ftpd.user,
                            "env:PP_FTP", "cam", *extra],
                           tmp_path / f"postproc-{run}.log", env={"PP_FTP": FTP_PASSWORD})


def test_catch_up_offers_oldest_first_within_the_queue_bound(tmp_path: Path,
                                                             ftpd: FtpServer) -> None:
    mp4 = tmp_path / "mp4"
    mp4.mkdir()
    names = [f"20240623-17{m:02d}.mp4" for m in range(5)]
    for n in reversed(names):  # written newest first: order must come from the names
        (mp4 / n).write_bytes(os.urandom(20_000))
    target = FtpTarget("127.0.0.1", ftpd.port, ftpd.user, Secret(FTP_PASSWORD, "t"), "cam")
    catalog = open_catalog(tmp_path / "catalog.db")
    items = [catalogued(catalog, mp4 / n) for n in reversed(names)]
    catalog.uploaded(items[-2].recording, target.label)  # acknowledged: never offered again
    stop = threading.Event()
    worker = UploadWorker(FtpDestination(target, 5, 5), queue_size=2, stop=stop,
                          catalog=catalog, mp4_dir=mp4)
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
    assert all(catalog.is_uploaded(i.recording, target.label) for i in items)


def test_files_dropped_from_a_full_queue_are_uploaded_after_a_restart(
        tmp_path: Path, ftpd: FtpServer) -> None:
    h264, mp4 = make_dirs(tmp_path)
    names = [f"20240623-18{m:02d}" for m in range(4)]
    for n in names:
        make_recording(h264 / f"{n}.h264", frames=48, settled=True)
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
    h264, mp4 = make_dirs(tmp_path)
    make_recording(h264 / "20240623-1900.h264", frames=24, settled=True)
    name = f"pp-catch-{uuid.uuid4().hex[:12]}"
    cfg = parse([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                 "--catalog", str(tmp_path / "catalog.db"), "--upload-after-convert", "1",
                 "--upload-scp", "root@127.0.0.1", str(sshd.port), str(sshd.remote / "cam"),
                 "--known-hosts", str(sshd.known_hosts), "--ssh-key", str(sshd.client_key)])
    cfg = dataclasses.replace(cfg, upload_attempts=2, upload_backoff_first=0.1)
    remote = sshd.remote / "cam/2024/06/23/20240623-1900.mp4"
    catalog = open_catalog(cfg.catalog)
    app = Postproc(cfg, open_socket(name), catalog)
    try:
        app.start()
        wait_for(lambda: app.workers[0].given_up == 1, 20)
    finally:
        assert app.stop()
    assert (mp4 / "20240623-1900.mp4").is_file() and not remote.exists()
    assert app.workers[0].uploaded == 0

    sshd.start()
    try:
        app = Postproc(cfg, open_socket(name), catalog)
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
    h264, mp4 = make_dirs(tmp_path)
    names = [f"20240623-20{m:02d}" for m in range(3)]
    for n in names:
        make_recording(h264 / f"{n}.h264", frames=12, settled=True)
    day = ftpd.root / "cam/2024/06/23"
    first = _postproc(tmp_path, ftpd, h264, mp4, 1)
    try:
        # The log line follows the catalog's record: a stop cannot fall between the two.
        wait_for(lambda: first.log_text().count(": uploaded ") == 3, 30)
    finally:
        assert first.terminate() == 0
    # A retention script deletes the oldest recording and its mp4 while postproc is down;
    # a new recording arrives.
    (h264 / f"{names[0]}.h264").unlink()
    (mp4 / f"{names[0]}.mp4").unlink()
    make_recording(h264 / "20240623-2100.h264", frames=12, settled=True)
    second = _postproc(tmp_path, ftpd, h264, mp4, 2)
    try:
        # The new file is uploaded after any catch-up of older ones (oldest first): once it
        # is there, a repeated upload would have shown.
        wait_for(lambda: (day / "20240623-2100.mp4").exists(), 30)
        second.wait_log(": uploaded 20240623-2100.mp4")  # recorded, not only at the server
    finally:
        assert second.terminate() == 0
    assert ftpd.received == [f"{n}.mp4.part" for n in names] + ["20240623-2100.mp4.part"]
    assert not (mp4 / ".uploaded").exists(), "the catalog is the record: no journal written"
    catalog = open_catalog(default_catalog(tmp_path))
    label = f"ftp://{ftpd.user}@127.0.0.1:{ftpd.port}/cam"
    for n in [*names, "20240623-2100"]:
        rec = catalog.recording_at(h264 / f"{n}.h264")
        assert rec is not None and catalog.is_uploaded(rec.id, label), n


def test_old_journal_names_never_stand_for_a_camera_folders_mp4(tmp_path: Path) -> None:
    """The pre-catalog journals list MP4_DIR's files only: mp4_dir/front/NAME is not the
    NAME an old version sent, and is uploaded (into REMOTE/front/YYYY/MM/DD)."""
    import shutil

    from raspberry_pancake.postproc.upload.rclone import RcloneDestination
    from raspberry_pancake.postproc.upload.targets import RcloneTarget

    rclone = shutil.which("rclone")
    if rclone is None:
        pytest.skip("rclone not installed")
    mp4, remote = tmp_path / "mp4", tmp_path / "remote"
    (mp4 / "front").mkdir(parents=True)
    name = "20240623-1700.mp4"
    for path in (mp4 / name, mp4 / "front" / name):
        path.write_bytes(os.urandom(10_000))
    catalog = open_catalog(tmp_path / "catalog.db")
    old, front = catalogued(catalog, mp4 / name), catalogued(catalog, mp4 / "front" / name,
                                                            "front")
    dest = RcloneDestination(RcloneTarget(":local:", str(remote), rclone))
    stop = threading.Event()
    worker = UploadWorker(dest, 4, stop, catalog, mp4, legacy={name})
    try:
        assert worker.catch_up() == 1
        worker.start()
        wait_for(lambda: worker.uploaded == 1, 20)
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
    assert catalog.is_uploaded(old.recording, dest.label)  # the journal's word
    assert catalog.is_uploaded(front.recording, dest.label)
    assert (remote / "front/2024/06/23" / name).read_bytes() == (mp4 / "front" / name).read_bytes()
    assert not (remote / "2024").exists()
