"""Uploads through the real rclone program: its local backend and `rclone serve webdav`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raspberry_pancake.postproc.upload.destination import UploadAborted, UploadError
from raspberry_pancake.postproc.upload.rclone import RcloneDestination
from raspberry_pancake.postproc.upload.targets import RcloneTarget
from raspberry_pancake.postproc.upload.worker import UploadWorker
from raspberry_pancake.shared.catalog import Catalog
from tests.postproc_servers import (
    PYTHON,
    ROOT,
    PostprocProcess,
    catalogued,
    default_catalog,
    free_port,
    make_dirs,
    make_recording,
    open_catalog,
    send_event,
    wait_for,
    wait_socket,
)

RCLONE = shutil.which("rclone")
pytestmark = pytest.mark.skipif(RCLONE is None, reason="rclone not installed")
DAV_PASSWORD = "dav-pass-never-shown"
DAY = "2024/06/23"


class WebDav:
    """`rclone serve webdav` of `root` on a loopback port; stop() and start() again on the
    same port (a remote that goes down and comes back)."""

    def __init__(self, root: Path, log: Path, user: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._user = user
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert RCLONE is not None
        auth = ["--user", self._user, "--pass", DAV_PASSWORD] if self._user else []
        with self._log.open("ab") as out:
            self._proc = subprocess.Popen(
                [RCLONE, "serve", "webdav", "--addr", f"127.0.0.1:{self.port}", *auth,
                 "--config", "/dev/null", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "Server started" in self._log.read_text(errors="replace")
                 .rsplit("--- start", 1)[-1], 10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        with self._log.open("a") as f:
            f.write("--- start\n")  # what start() waits for is a line after this one


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[WebDav]:
    server = WebDav(tmp_path / "dav", tmp_path / "webdav.log")
    try:
        yield server
    finally:
        server.stop()


def _target(remote: str, remote_dir: str, config: Path | None = None) -> RcloneTarget:
    assert RCLONE is not None
    return RcloneTarget(remote, remote_dir, RCLONE, config)


def _mp4(directory: Path, name: str, size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def _worker(dest: RcloneDestination, catalog: Catalog, mp4_dir: Path,
            stop: threading.Event) -> UploadWorker:
    return UploadWorker(dest, queue_size=8, stop=stop, catalog=catalog, mp4_dir=mp4_dir,
                        backoff_first=0.2, max_attempts=40)


def _rclone_children() -> list[int]:
    """Our rclone children still running (copyto, lsjson, moveto; not the test's servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and len(argv) > 1 and argv[1] in (
                b"copyto", b"lsjson", b"moveto"):
            found.append(int(entry.name))
    return found


def test_local_remote_gets_the_tree_through_a_part_then_a_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Slow enough that the .part is seen for a while (rclone reads RCLONE_* from the env).
    monkeypatch.setenv("RCLONE_BWLIMIT", "1M")
    mp4_dir, remote = tmp_path / "mp4", tmp_path / "remote"
    local = _mp4(mp4_dir, "20240623-1700.mp4", 1_500_000)
    catalog = open_catalog(tmp_path / "catalog.db")
    item = catalogued(catalog, local)
    dest = RcloneDestination(_target(":local:", str(remote / "cam")))
    day = remote / "cam" / DAY
    seen: list[list[str]] = []
    stop, watching = threading.Event(), threading.Event()

    def watch() -> None:
        while not watching.wait(0.02):
            names = sorted(p.name for p in day.iterdir()) if day.is_dir() else []
            if not seen or seen[-1] != names:
                seen.append(names)

    watcher = threading.Thread(target=watch, name="watch-remote")
    watcher.start()
    worker = _worker(dest, catalog, mp4_dir, stop)
    try:
        worker.start()
        worker.offer(item)
        wait_for(lambda: worker.uploaded == 1, 30)
    finally:
        watching.set()
        watcher.join(5)
        stop.set()
        worker.abort()
        assert worker.join(5)
    # The watcher may have stopped between the rename and its next look: one last look.
    last = sorted(p.name for p in day.iterdir()) if day.is_dir() else []
    if seen[-1:] != [last]:
        seen.append(last)
    assert ["20240623-1700.mp4.part"] in seen, seen
    assert seen[-1] == ["20240623-1700.mp4"], seen
    assert seen.index(["20240623-1700.mp4.part"]) < seen.index(["20240623-1700.mp4"])
    assert (day / local.name).read_bytes() == local.read_bytes()
    assert catalog.is_uploaded(item.recording, dest.label)
    assert any(line.kind == "upload" and "20240623-1700.mp4 uploaded" in line.text
               for line in catalog.log_lines(10))


def test_webdav_remote_down_then_back_gets_every_file(tmp_path: Path, webdav: WebDav) -> None:
    mp4_dir = tmp_path / "mp4"
    catalog = open_catalog(tmp_path / "catalog.db")
    first = catalogued(catalog, _mp4(mp4_dir, "20240623-1700.mp4", 200_000))
    second = catalogued(catalog, _mp4(mp4_dir, "20240623-1715.mp4", 200_000))
    dest = RcloneDestination(_target(f":webdav,url='{webdav.url}':", "cam"),
                             connect_timeout=2, transfer_timeout=5)
    stop = threading.Event()
    worker = _worker(dest, catalog, mp4_dir, stop)
    day = webdav.root / "cam" / DAY
    try:
        worker.start()
        worker.offer(first)
        wait_for(lambda: worker.uploaded == 1, 20)
        webdav.stop()
        worker.offer(second)

        def failed_twice() -> bool:
            up = catalog.upload(second.recording, dest.label)
            return up is not None and up.attempts >= 2

        wait_for(failed_twice, 20)
        up = catalog.upload(second.recording, dest.label)
        assert up is not None and up.last_error and "connection refused" in up.last_error
        assert not (day / "20240623-1715.mp4").exists()
        webdav.start()
        wait_for(lambda: worker.uploaded == 2, 20)
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
    assert sorted(p.name for p in day.iterdir()) == ["20240623-1700.mp4", "20240623-1715.mp4"]
    for item in (first, second):
        assert (day / item.name).read_bytes() == item.path.read_bytes()
        assert catalog.is_uploaded(item.recording, dest.label)


def test_named_remote_of_rclone_config_keeps_its_password_to_itself(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert RCLONE is not None
    server = WebDav(tmp_path / "dav", tmp_path / "webdav.log", user="cam")
    try:
        obscured = subprocess.run([RCLONE, "obscure", DAV_PASSWORD], capture_output=True,
                                  text=True, check=True).stdout.strip()
        config = tmp_path / "rclone.conf"
        config.write_text(f"[nas]\ntype = webdav\nurl = {server.url}\nvendor = other\n"
                          f"user = cam\npass = {obscured}\n")
        local = _mp4(tmp_path / "mp4", "20240623-1700.mp4", 50_000)
        dest = RcloneDestination(_target("nas:", "cctv", config))
        with caplog.at_level(logging.DEBUG):
            dest.upload(local, threading.Event(), camera="front")
        assert (server.root / "cctv/front" / DAY / local.name).read_bytes() == local.read_bytes()
        assert "--config" in dest._argv("lsjson") and str(config) in dest._argv("lsjson")

        # The same remote with a wrong password: a clear failure, and still no secret shown.
        config.write_text(config.read_text().replace(obscured, obscured[:-2] + "xx"))
        with caplog.at_level(logging.DEBUG), pytest.raises(UploadError) as failed:
            dest.upload(local, threading.Event())
    finally:
        server.stop()
    assert "401" in str(failed.value) or "nauthori" in str(failed.value), failed.value
    shown = caplog.text + str(failed.value)
    assert DAV_PASSWORD not in shown and obscured not in shown


def test_connection_string_secrets_are_masked(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()  # nothing listens: every attempt fails, with rclone's stderr
    target = _target(f":webdav,url='http://cam:{DAV_PASSWORD}@127.0.0.1:{closed}',"
                     f"bearer_token=tok-{DAV_PASSWORD}:", "cam")
    assert DAV_PASSWORD not in target.label and "***" in target.label
    local = _mp4(tmp_path / "mp4", "20240623-1700.mp4", 1000)
    with caplog.at_level(logging.DEBUG), pytest.raises(UploadError) as failed:
        RcloneDestination(target, connect_timeout=2, transfer_timeout=3).upload(
            local, threading.Event())
    assert "connection refused" in str(failed.value)
    assert "rclone copyto: " in caplog.text  # rclone's stderr, logged
    assert DAV_PASSWORD not in caplog.text + str(failed.value)


def test_stop_kills_rclone_at_once_and_leaves_only_the_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCLONE_BWLIMIT", "100k")  # 3 MB: half a minute if nothing cuts it off
    mp4_dir, remote = tmp_path / "mp4", tmp_path / "remote"
    local = _mp4(mp4_dir, "20240623-1700.mp4", 3_000_000)
    dest = RcloneDestination(_target(":local:", str(remote)))
    stop = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            dest.upload(local, stop)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="rclone-upload")
    thread.start()
    part = remote / DAY / (local.name + ".part")
    try:
        wait_for(lambda: part.is_file() and part.stat().st_size > 0, 20)
        assert _rclone_children()
    finally:
        started = time.monotonic()
        stop.set()
        dest.abort()
        thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5  # a user's Ctrl-C, not rclone's 30 s
    assert len(outcome) == 1 and isinstance(outcome[0], UploadAborted), outcome
    assert not _rclone_children()
    assert not (remote / DAY / local.name).exists()


def _postproc(tmp_path: Path, h264: Path, mp4: Path, remote: Path, run: int,
              name: str) -> PostprocProcess:
    return PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1", "--upload-rclone",
                            f":local:{remote}"], tmp_path / f"postproc-{run}.log")


def test_postproc_uploads_once_across_a_restart_and_per_camera(tmp_path: Path) -> None:
    h264, mp4 = make_dirs(tmp_path)
    remote = tmp_path / "remote"
    name = f"pp-rclone-{uuid.uuid4().hex[:12]}"
    first = _postproc(tmp_path, h264, mp4, remote, 1, name)
    try:
        wait_socket(name)
        make_recording(h264 / "20240623-1700.h264", frames=12)
        send_event(name, {"h264": str(h264 / "20240623-1700.h264")})
        wait_for(lambda: (remote / DAY / "20240623-1700.mp4").is_file(), 30)
        first.wait_log(": uploaded 20240623-1700.mp4")
    finally:
        assert first.terminate() == 0
    # Gone from the remote: a second upload would bring it back.
    (remote / DAY / "20240623-1700.mp4").unlink()

    second = _postproc(tmp_path, h264, mp4, remote, 2, name)
    try:
        wait_socket(name)
        (h264 / "front").mkdir()
        make_recording(h264 / "front/20240623-1715.h264", frames=12)
        send_event(name, {"h264": str(h264 / "front/20240623-1715.h264"), "camera": "front"})
        # Uploaded after the start's catch-up: once it is there, a repeat would have shown.
        wait_for(lambda: (remote / "front" / DAY / "20240623-1715.mp4").is_file(), 30)
        # The file is there a moment before the upload is recorded: stopped in between, the
        # upload is sent again at the next start (by design), and the catalog says not yet.
        second.wait_log(": uploaded 20240623-1715.mp4")
    finally:
        assert second.terminate() == 0
    assert not (remote / DAY / "20240623-1700.mp4").exists()
    assert (mp4 / "front/20240623-1715.mp4").read_bytes() == \
        (remote / "front" / DAY / "20240623-1715.mp4").read_bytes()
    assert sorted(p.name for p in mp4.iterdir() if p.is_file()) == ["20240623-1700.mp4"]
    catalog = open_catalog(default_catalog(tmp_path))
    rec = catalog.recording_at(h264 / "front/20240623-1715.h264")
    assert rec is not None and rec.camera == "front"
    assert catalog.is_uploaded(rec.id, f"rclone :local:{remote}")


def test_postproc_without_rclone_says_so_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [PYTHON, str(ROOT / "postproc.py"), "pp-none", "--convert", str(tmp_path), "12",
         "--upload-after-convert", "1", "--upload-rclone", "nas:cctv"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
        env={**os.environ, "PATH": str(empty)})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "rclone program is not installed" in lines[0], done.stderr


def test_a_part_left_by_an_attempt_cut_off_is_replaced(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    local = _mp4(tmp_path / "mp4", "20240623-1700.mp4", 100_000)
    (remote / DAY).mkdir(parents=True)
    (remote / DAY / (local.name + ".part")).write_bytes(local.read_bytes()[:5000])
    RcloneDestination(_target(":local:", str(remote))).upload(local, threading.Event())
    assert sorted(p.name for p in (remote / DAY).iterdir()) == [local.name]
    assert (remote / DAY / local.name).read_bytes() == local.read_bytes()
