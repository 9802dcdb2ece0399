"""FTPS: a server that closes the data connection without TLS close_notify (EOF at unwrap)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raspberry_pancake.postproc.upload.destination import UploadError
from raspberry_pancake.postproc.upload.ftp import FtpDestination
from raspberry_pancake.postproc.upload.targets import FtpTarget
from raspberry_pancake.shared.credentials import Secret
from tests.postproc_servers import FtpServer, TlsFiles, make_tls


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def rude(tmp_path: Path, tls: TlsFiles) -> Iterator[FtpServer]:
    server = FtpServer(tmp_path / "ftpsroot", tls=tls.server, close_notify=False)
    try:
        yield server
    finally:
        server.stop()


def ftps(server: FtpServer, ca: Path) -> FtpDestination:
    target = FtpTarget("127.0.0.1", server.port, server.user, Secret(server.password, "test"),
                       "bak", tls=True, ca_file=ca)
    return FtpDestination(target, connect_timeout=5, transfer_timeout=5)


def mp4(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_eof_at_close_after_the_whole_file_and_226_is_success(tmp_path: Path, rude: FtpServer,
                                                              tls: TlsFiles) -> None:
    dest = ftps(rude, tls.ca)
    try:
        a = mp4(tmp_path, "20240623-1715.mp4", 300_000)
        b = mp4(tmp_path, "20240623-1730.mp4", 1234)
        dest.upload(a, threading.Event())
        dest.upload(b, threading.Event())  # the control connection is still usable
    finally:
        dest.close()
    day = rude.root / "bak/2024/06/23"
    assert (day / a.name).read_bytes() == a.read_bytes()
    assert (day / b.name).read_bytes() == b.read_bytes()
    assert rude.tls_data == 2 and rude.tls_resumed == 2


def test_eof_at_close_without_the_226_is_a_failure(tmp_path: Path, tls: TlsFiles) -> None:
    server = FtpServer(tmp_path / "ftpsroot", tls=tls.server, close_notify=False,
                       reply_after_store="451 Requested action aborted: local error")
    dest = ftps(server, tls.ca)
    try:
        a = mp4(tmp_path, "20240623-1715.mp4", 300_000)
        with pytest.raises(UploadError, match="451"):
            dest.upload(a, threading.Event())
    finally:
        dest.close()
        server.stop()
    assert not (server.root / "bak/2024/06/23" / a.name).exists()


def test_a_fifo_named_like_an_mp4_is_refused_not_waited_on(tmp_path: Path,
                                                          rude: FtpServer, tls: TlsFiles) -> None:
    import contextlib
    import os

    pipe = tmp_path / "20240623-1715.mp4"
    os.mkfifo(pipe)
    dest = ftps(rude, tls.ca)
    box: list[BaseException | None] = []

    def upload() -> None:
        try:
            dest.upload(pipe, threading.Event())
            box.append(None)
        except UploadError as exc:
            box.append(exc)

    t = threading.Thread(target=upload, name="test-upload", daemon=True)
    t.start()
    t.join(30)
    hung = t.is_alive()
    # Let a reader stuck in open() go (the fault tested), so the test process ends.
    with contextlib.suppress(OSError):
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    t.join(10)
    dest.close()
    assert not hung, "the upload waited on a FIFO"
    assert len(box) == 1 and isinstance(box[0], UploadError)
    assert str(box[0]) == "20240623-1715.mp4: not a regular file"
