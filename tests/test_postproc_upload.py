"""Uploads against a real OpenSSH sshd and a real FTP/FTPS server (pyftpdlib), all on loopback."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raspberry_pancake.postproc.upload.destination import Destination, UploadError, date_dirs
from raspberry_pancake.postproc.upload.ftp import FtpDestination
from raspberry_pancake.postproc.upload.sftp import SftpDestination
from raspberry_pancake.postproc.upload.targets import FtpTarget, ScpTarget
from raspberry_pancake.postproc.upload.trigger import UploadTrigger
from raspberry_pancake.postproc.upload.worker import Mp4, UploadWorker
from raspberry_pancake.shared.credentials import Secret
from tests.postproc_servers import (
    FtpServer,
    PostprocProcess,
    SshServer,
    StallingServer,
    TlsFiles,
    catalogued,
    make_recording,
    make_tls,
    open_catalog,
    sshd_available,
    wait_for,
)

needs_sshd = pytest.mark.skipif(not sshd_available(),
                                reason="OpenSSH sshd not installed (make test installs it)")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ftpd(tmp_path: Path) -> Iterator[FtpServer]:
    server = FtpServer(tmp_path / "ftproot")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


@pytest.fixture
def ftpsd(tmp_path: Path, tls: TlsFiles) -> Iterator[FtpServer]:
    server = FtpServer(tmp_path / "ftpsroot", tls=tls.server)
    try:
        yield server
    finally:
        server.stop()


def _ftps(server: FtpServer, ca: Path | None, remote: str = "bak") -> FtpDestination:
    target = FtpTarget("127.0.0.1", server.port, server.user, Secret(server.password, "test"),
                       remote, tls=True, ca_file=ca)
    return FtpDestination(target, connect_timeout=5, transfer_timeout=5)


def _mp4(tmp_path: Path, name: str = "20240623-1715.mp4", size: int = 300_000) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _item(mp4: Path) -> Mp4:
    """The mp4 catalogued as converted, as a worker takes it (catalog beside the file)."""
    return catalogued(open_catalog(mp4.parent / "catalog.db"), mp4)


def _worker(dest: Destination, tmp_path: Path, queue_size: int, stop: threading.Event,
            **kw: Any) -> UploadWorker:
    return UploadWorker(dest, queue_size, stop, open_catalog(tmp_path / "catalog.db"), tmp_path,
                        **kw)


def _sftp(server: SshServer, known_hosts: Path | None = None) -> SftpDestination:
    target = ScpTarget("root", "127.0.0.1", server.port, str(server.remote / "cam1"))
    return SftpDestination(target, known_hosts or server.known_hosts, server.client_key,
                           connect_timeout=5, transfer_timeout=5)


def test_date_dirs_from_name_or_mtime(tmp_path: Path) -> None:
    assert date_dirs(Path("/x/20200623-1715.mp4")) == ("2020", "06", "23")
    assert date_dirs(Path("/x/20200623-180511.mp4")) == ("2020", "06", "23")
    assert date_dirs(Path("/x/20201231-2345-2.mp4")) == ("2020", "12", "31")
    odd = tmp_path / "clip.mp4"
    odd.write_bytes(b"x")
    stamp = dt.datetime(2021, 3, 4, 12, 0).timestamp()
    os.utime(odd, (stamp, stamp))
    assert date_dirs(odd) == ("2021", "03", "04")
    bad_date = tmp_path / "20211340-1200.mp4"
    bad_date.write_bytes(b"x")
    os.utime(bad_date, (stamp, stamp))
    assert date_dirs(bad_date) == ("2021", "03", "04")


@needs_sshd
def test_sftp_upload_into_date_tree(tmp_path: Path, sshd: SshServer) -> None:
    dest = _sftp(sshd)
    stop = threading.Event()
    first = _mp4(tmp_path)
    second = _mp4(tmp_path, "20240624-000000.mp4", 1000)
    dest.upload(first, stop)
    dest.upload(second, stop)  # the same connection, another day's directory
    dest.close()
    got = sshd.remote / "cam1" / "2024" / "06" / "23" / first.name
    assert got.read_bytes() == first.read_bytes()
    assert (sshd.remote / "cam1/2024/06/24" / second.name).read_bytes() == second.read_bytes()
    assert not list(sshd.remote.rglob("*.part"))
    # An upload of the same name again (a file converted again) replaces the old one.
    first.write_bytes(b"new content")
    dest.upload(first, stop)
    dest.close()
    assert got.read_bytes() == b"new content"


@needs_sshd
def test_sftp_unknown_or_changed_host_key_is_refused(tmp_path: Path, sshd: SshServer) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(UploadError, match="not in"):
        _sftp(sshd, empty).upload(_mp4(tmp_path), threading.Event())
    assert empty.read_text() == "", "never added"
    other = tmp_path / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    with pytest.raises(UploadError, match="does not match"):
        _sftp(sshd, wrong).upload(_mp4(tmp_path), threading.Event())
    assert not list(sshd.remote.rglob("*.mp4*"))


@needs_sshd
def test_sftp_connection_killed_mid_transfer_leaves_part_and_retry_completes(
        tmp_path: Path, sshd: SshServer) -> None:
    mp4 = _mp4(tmp_path, size=8 * 1024 * 1024)
    dest = _sftp(sshd)
    stop = threading.Event()
    killed: list[int] = []

    def cut(sent: int, total: int) -> None:
        if sent >= total // 3 and not killed:
            killed.append(sshd.kill_sessions())
            time.sleep(0.2)  # let the kill land before more is written

    with pytest.raises(UploadError):
        dest.upload(mp4, stop, progress=cut)
    assert killed and killed[0] >= 1
    day = sshd.remote / "cam1/2024/06/23"
    assert [p.name for p in day.iterdir()] == [mp4.name + ".part"]
    assert (day / (mp4.name + ".part")).stat().st_size < mp4.stat().st_size
    dest.upload(mp4, stop)  # the retry: a new connection
    dest.close()
    assert [p.name for p in day.iterdir()] == [mp4.name]
    assert (day / mp4.name).read_bytes() == mp4.read_bytes()


@needs_sshd
def test_worker_retries_with_backoff_until_the_server_is_back(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "sshd", start=False)  # down when the first attempt is made
    stop = threading.Event()
    dest = _sftp(server)
    worker = _worker(dest, tmp_path, queue_size=4, stop=stop, backoff_first=0.2)
    worker.start()
    mp4 = _mp4(tmp_path)
    try:
        assert worker.offer(_item(mp4))
        time.sleep(0.5)
        assert worker.uploaded == 0
        server.start()  # the sshd (keys, config, port) comes up
        wait_for(lambda: worker.uploaded == 1, 20)
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
        server.stop()
    assert (server.remote / "cam1/2024/06/23" / mp4.name).read_bytes() == mp4.read_bytes()


def test_ftp_upload_into_date_tree(tmp_path: Path, ftpd: FtpServer) -> None:
    target = FtpTarget("127.0.0.1", ftpd.port, ftpd.user, Secret(ftpd.password, "test"),
                       "bakery/cam2")
    dest = FtpDestination(target, connect_timeout=5, transfer_timeout=5)
    stop = threading.Event()
    a = _mp4(tmp_path)
    b = _mp4(tmp_path, "20240623-171530-1.mp4", 12345)
    dest.upload(a, stop)
    dest.upload(b, stop)
    a.write_bytes(b"again")
    dest.upload(a, stop)
    dest.close()
    day = ftpd.root / "bakery/cam2/2024/06/23"
    assert sorted(p.name for p in day.iterdir()) == sorted([a.name, b.name])
    assert (day / a.name).read_bytes() == b"again"
    assert (day / b.name).read_bytes() == b.read_bytes()


def test_ftp_wrong_password_fails(tmp_path: Path, ftpd: FtpServer) -> None:
    target = FtpTarget("127.0.0.1", ftpd.port, ftpd.user, Secret("wrong", "test"), "bak")
    with pytest.raises(UploadError, match="refused"):
        FtpDestination(target, 5, 5).upload(_mp4(tmp_path), threading.Event())


def test_ftp_stalled_server_fails_within_the_timeout(tmp_path: Path) -> None:
    stall = StallingServer()
    try:
        target = FtpTarget("127.0.0.1", stall.port, "u", Secret("p", "test"), "bak")
        dest = FtpDestination(target, connect_timeout=1.0, transfer_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(UploadError):
            dest.upload(_mp4(tmp_path), threading.Event())
        assert time.monotonic() - started < 10, "bounded by the timeout, not hanging"
        assert stall.accepted, "it did connect; the server never answered"
    finally:
        stall.stop()


@pytest.mark.parametrize("protocol", ["ftp", "ftps"])
def test_ftp_stop_mid_transfer_leaves_only_part(tmp_path: Path, protocol: str,
                                                request: pytest.FixtureRequest) -> None:
    if protocol == "ftps":
        server: FtpServer = request.getfixturevalue("ftpsd")
        dest = _ftps(server, request.getfixturevalue("tls").ca)
    else:
        server = request.getfixturevalue("ftpd")
        dest = FtpDestination(FtpTarget("127.0.0.1", server.port, server.user,
                                        Secret(server.password, "test"), "bak"), 5, 5)
    stop = threading.Event()
    mp4 = _mp4(tmp_path, size=4 * 1024 * 1024)

    def halfway(sent: int, total: int) -> None:
        if sent > total // 2:
            stop.set()

    with pytest.raises(UploadError, match="stopping"):
        dest.upload(mp4, stop, progress=halfway)
    dest.close()
    day = server.root / "bak/2024/06/23"
    wait_for(lambda: day.is_dir() and list(day.iterdir()), 5)
    assert [p.name for p in day.iterdir()] == [mp4.name + ".part"]


def test_dead_destination_does_not_hold_back_a_live_one(tmp_path: Path, ftpd: FtpServer) -> None:
    stall = StallingServer()
    stop = threading.Event()
    live = _worker(FtpDestination(FtpTarget("127.0.0.1", ftpd.port, ftpd.user,
                                            Secret(ftpd.password, "t"), "live"), 5, 5),
                   tmp_path, queue_size=8, stop=stop)
    dead = _worker(FtpDestination(FtpTarget("127.0.0.1", stall.port, "u",
                                            Secret("p", "t"), "dead"), 30, 30),
                   tmp_path, queue_size=2, stop=stop)
    trigger = UploadTrigger([dead, live], after=2, minutes=(), stop=stop)
    for w in (live, dead):
        w.start()
    files = [_mp4(tmp_path, f"20240623-17{i:02d}.mp4", 1000) for i in range(6)]
    try:
        for f in files:
            trigger.converted(_item(f))
        wait_for(lambda: live.uploaded == 6, 20)
        # The dead one holds one file in its hung attempt, two queued, the rest dropped.
        assert dead.uploaded == 0 and dead.dropped >= 3
    finally:
        stop.set()
        for w in (live, dead):
            w.abort()
        assert live.join(5) and dead.join(5), "abort() cuts off a hung transfer at once"
        stall.stop()
    assert sorted(p.name for p in (ftpd.root / "live/2024/06/23").iterdir()) == \
        sorted(f.name for f in files)


def test_trigger_after_n_conversions(tmp_path: Path) -> None:
    offered: list[str] = []

    class Recorder(UploadWorker):
        def offer(self, mp4: Mp4) -> bool:
            offered.append(mp4.name)
            return True

    stop = threading.Event()
    rec = Recorder(FtpDestination(FtpTarget("127.0.0.1", 1, "u", Secret("p", "t"), "d")), 8, stop,
                   open_catalog(tmp_path / "catalog.db"), tmp_path)
    trigger = UploadTrigger([rec], after=3, minutes=(), stop=stop)
    for i in range(7):
        trigger.converted(Mp4(i, tmp_path / f"{i}.mp4"))
    assert offered == ["0.mp4", "1.mp4", "2.mp4", "3.mp4", "4.mp4", "5.mp4"]
    trigger.fire("minute 20")
    assert offered[-1] == "6.mp4"
    trigger.fire("minute 40")  # nothing pending: nothing offered
    assert len(offered) == 7


def test_trigger_at_minutes_skips_minutes_that_were_missed(tmp_path: Path) -> None:
    fired: list[str] = []

    class Recorder(UploadWorker):
        def offer(self, mp4: Mp4) -> bool:
            fired.append(mp4.name)
            return True

    # The wall clock as the trigger's thread sees it, two readings per wake-up: just before
    # the minute, then just after. The third wake-up follows a clock jump from 10:20 to 10:45,
    # over the trigger at minute 40.
    readings = iter([
        dt.datetime(2024, 6, 23, 10, 19, 59, 950000), dt.datetime(2024, 6, 23, 10, 20, 0, 10),
        dt.datetime(2024, 6, 23, 10, 20, 59, 950000), dt.datetime(2024, 6, 23, 10, 21, 0, 10),
        dt.datetime(2024, 6, 23, 10, 21, 59, 950000), dt.datetime(2024, 6, 23, 10, 45, 0, 10),
    ])
    stop = threading.Event()
    pending = [Mp4(i, tmp_path / n) for i, n in enumerate(
        ["20240623-1015.mp4", "20240623-1030.mp4", "20240623-1044.mp4"])]
    seen: list[dt.datetime] = []

    def clock() -> dt.datetime:
        try:
            now = next(readings)
        except StopIteration:
            stop.set()
            return dt.datetime(2024, 6, 23, 10, 45, 30)
        seen.append(now)
        if len(seen) == 3:
            trigger.converted(pending[1])  # converted between 10:20 and 10:21
        if len(seen) == 5:
            trigger.converted(pending[2])
        return now

    rec = Recorder(FtpDestination(FtpTarget("127.0.0.1", 1, "u", Secret("p", "t"), "d")), 8, stop,
                   open_catalog(tmp_path / "catalog.db"), tmp_path)
    trigger = UploadTrigger([rec], after=None, minutes=(20, 40), stop=stop, now=clock)
    trigger.converted(pending[0])
    trigger.start()
    assert trigger.join(10)
    # 10:20 fired with the first file; 10:21 is not a trigger; 10:40 was jumped over.
    assert fired == ["20240623-1015.mp4"]
    trigger.fire("minute 20")
    assert fired[1:] == ["20240623-1030.mp4", "20240623-1044.mp4"]


# ---------------------------------------------------------------- FTPS

@pytest.mark.parametrize("self_signed", [False, True], ids=["private-ca", "self-signed"])
def test_ftps_upload_lands_over_tls_and_plain_ftp_is_refused(tmp_path: Path,
                                                             self_signed: bool) -> None:
    tls = make_tls(tmp_path / "tls", self_signed=self_signed)
    server = FtpServer(tmp_path / "ftpsroot", tls=tls.server)
    try:
        dest = _ftps(server, tls.ca, "bakery/cam2")
        stop = threading.Event()
        a = _mp4(tmp_path)
        b = _mp4(tmp_path, "20240623-171530-1.mp4", 12345)
        dest.upload(a, stop)
        dest.upload(b, stop)  # the same control connection, a second data connection
        dest.close()
        # The server demands TLS on both channels (a PROT C transfer is refused), and every
        # data connection resumed the control connection's session, as vsftpd requires.
        assert server.tls_data == 2 and server.tls_resumed == 2
        day = server.root / "bakery/cam2/2024/06/23"
        assert sorted(p.name for p in day.iterdir()) == sorted([a.name, b.name])
        assert (day / a.name).read_bytes() == a.read_bytes()
        assert (day / b.name).read_bytes() == b.read_bytes()
        # The same server refuses plain FTP before the password is sent: the upload above
        # cannot have passed in clear.
        plain = FtpDestination(FtpTarget("127.0.0.1", server.port, server.user,
                                         Secret(server.password, "test"), "plain"), 5, 5)
        with pytest.raises(UploadError, match="TLS required"):
            plain.upload(_mp4(tmp_path, "20240623-1800.mp4", 10), stop)
        assert not (server.root / "plain").exists()
    finally:
        server.stop()


def test_ftps_data_connection_without_session_reuse_is_refused(
        tmp_path: Path, ftpsd: FtpServer, tls: TlsFiles) -> None:
    """The server side of the check above is real: a data connection that does not resume
    the session fails (what ftplib's own FTP_TLS does against vsftpd and ProFTPD)."""
    import ftplib
    import ssl

    ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(tls.ca)), timeout=5)
    try:
        ftp.connect("127.0.0.1", ftpsd.port)
        ftp.login(ftpsd.user, ftpsd.password)
        ftp.prot_p()
        with pytest.raises(ftplib.all_errors):
            ftp.storbinary("STOR x.mp4", open(_mp4(tmp_path, size=1000), "rb"))
    finally:
        ftp.close()
    assert ftpsd.tls_data >= 1 and ftpsd.tls_resumed == 0
    assert ftpsd.received == []


def test_ftps_untrusted_or_misnamed_certificate_is_refused(tmp_path: Path, ftpsd: FtpServer,
                                                           tls: TlsFiles) -> None:
    mp4 = _mp4(tmp_path)
    # Not signed by a CA the system trusts: refused, never silently accepted.
    with pytest.raises(UploadError, match="certificate is refused: unable to get local issuer "
                                          r"certificate \(trusting the system's CA roots\)"):
        _ftps(ftpsd, None).upload(mp4, threading.Event())
    # Signed by a CA we trust, but for another name: the host name is checked too.
    other = make_tls(tmp_path / "other", names=("backup.invalid",))
    misnamed = FtpServer(tmp_path / "misnamed", tls=other.server)
    try:
        with pytest.raises(UploadError, match="certificate is refused: IP address mismatch"):
            _ftps(misnamed, other.ca).upload(mp4, threading.Event())
    finally:
        misnamed.stop()
    # Another CA than the one that signed the server's certificate.
    with pytest.raises(UploadError, match="certificate is refused"):
        _ftps(ftpsd, other.ca).upload(mp4, threading.Event())
    assert ftpsd.received == [] and misnamed.received == []


def test_worker_gives_up_on_an_untrusted_server_and_keeps_serving(
        tmp_path: Path, ftpsd: FtpServer, caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    worker = _worker(_ftps(ftpsd, None), tmp_path, queue_size=4, stop=stop, backoff_first=0.05,
                     max_attempts=2)
    worker.start()
    try:
        with caplog.at_level(logging.WARNING):
            assert worker.offer(_item(_mp4(tmp_path, "20240623-1700.mp4", 1000)))
            wait_for(lambda: worker.given_up == 1, 20)
            assert worker.offer(_item(_mp4(tmp_path, "20240623-1715.mp4", 1000)))
            wait_for(lambda: worker.given_up == 2, 20)
        assert worker._thread.is_alive(), "a refused certificate is a failed attempt"
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
    fails = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert fails and all("certificate is refused" in r.getMessage() and r.exc_info is None
                         and "\n" not in r.getMessage() for r in fails)
    assert worker.uploaded == 0 and ftpsd.received == []


def test_abort_cuts_off_a_stalled_tls_handshake(tmp_path: Path) -> None:
    """A server that accepts AUTH TLS and then says nothing: abort() (shutdown) ends the
    attempt at once rather than after the timeout."""
    stall = StallingServer(script=[b"220 hello\r\n", b"234 go ahead\r\n"])
    try:
        target = FtpTarget("127.0.0.1", stall.port, "u", Secret("p", "t"), "bak", tls=True)
        dest = FtpDestination(target, connect_timeout=60, transfer_timeout=60)
        failed: list[BaseException] = []

        def attempt() -> None:
            try:
                dest.upload(_mp4(tmp_path, size=10), threading.Event())
            except UploadError as exc:
                failed.append(exc)

        thread = threading.Thread(target=attempt, name="test-ftps-attempt")
        thread.start()
        wait_for(lambda: stall.lines_read >= 1, 10)  # AUTH TLS was sent and answered
        time.sleep(0.2)  # into the handshake
        started = time.monotonic()
        dest.abort()
        thread.join(20)
        assert not thread.is_alive() and failed
        assert time.monotonic() - started < 15, "cut off, not left to the 60 s timeout"
    finally:
        stall.stop()


def test_postproc_uploads_over_ftps(tmp_path: Path, ftpsd: FtpServer, tls: TlsFiles) -> None:
    """The daemon: --upload-ftps with --ftps-ca and the password from the environment."""
    h264, mp4 = tmp_path / "h264", tmp_path / "mp4"
    h264.mkdir()
    mp4.mkdir()
    make_recording(h264 / "20240623-1700.h264", frames=12, settled=True)
    name = f"pp-ftps-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-ftps", "127.0.0.1", str(ftpsd.port), ftpsd.user,
                            "env:PP_FTPS", "cams/one", "--ftps-ca", str(tls.ca)],
                           tmp_path / "postproc.log", env={"PP_FTPS": ftpsd.password})
    try:
        final = ftpsd.root / "cams/one/2024/06/23/20240623-1700.mp4"
        wait_for(final.exists, 30)
        proc.wait_log("uploaded 20240623-1700.mp4")
    finally:
        assert proc.terminate() == 0
    assert final.read_bytes() == (mp4 / "20240623-1700.mp4").read_bytes()
    assert ftpsd.tls_data >= 1 and ftpsd.tls_resumed == ftpsd.tls_data
    text = proc.log_text()
    assert f"ftps://{ftpsd.user}@127.0.0.1:{ftpsd.port}/cams/one" in text
    assert ftpsd.password not in text


# ---------------------------------------------------------------- FTP replies ftplib chokes on

def test_ftp_unparsable_size_reply_is_a_failed_attempt(tmp_path: Path) -> None:
    """ftplib's size() raises ValueError on `213 many`: it ended the worker's thread."""
    server = FtpServer(tmp_path / "root",
                       handler={"ftp_SIZE": lambda self, path: self.respond("213 many")})
    stop = threading.Event()
    target = FtpTarget("127.0.0.1", server.port, server.user, Secret(server.password, "t"),
                       "bak")
    worker = _worker(FtpDestination(target, 5, 5), tmp_path, queue_size=4, stop=stop,
                     backoff_first=0.05, max_attempts=2)
    worker.start()
    try:
        assert worker.offer(_item(_mp4(tmp_path, "20240623-1700.mp4", 1000)))
        wait_for(lambda: worker.given_up == 1 or not worker._thread.is_alive(), 20)
        assert worker._thread.is_alive() and worker.given_up == 1
    finally:
        stop.set()
        worker.abort()
        assert worker.join(5)
        server.stop()


def test_ftp_name_with_a_line_break_fails_that_file_only(tmp_path: Path,
                                                         ftpd: FtpServer) -> None:
    """ftplib refuses to send a command with a line break (ValueError): one file fails,
    the destination goes on."""
    target = FtpTarget("127.0.0.1", ftpd.port, ftpd.user, Secret(ftpd.password, "t"), "bak")
    dest = FtpDestination(target, 5, 5)
    with pytest.raises(UploadError):
        dest.upload(_mp4(tmp_path, "20240623-1700\nDELE x.mp4", 10), threading.Event())
    good = _mp4(tmp_path, "20240623-1715.mp4", 10)
    dest.upload(good, threading.Event())
    dest.close()
    assert (ftpd.root / "bak/2024/06/23" / good.name).read_bytes() == good.read_bytes()


def test_ftp_latin1_banner_does_not_end_the_connection(tmp_path: Path) -> None:
    """A server speaking Latin-1 (an old NAS) raised UnicodeDecodeError out of the worker."""
    server = FtpServer(tmp_path / "root",
                       handler={"encoding": "latin-1", "banner": "Willkommen in München"})
    try:
        target = FtpTarget("127.0.0.1", server.port, server.user,
                           Secret(server.password, "t"), "bak")
        dest = FtpDestination(target, 5, 5)
        mp4 = _mp4(tmp_path, size=1000)
        dest.upload(mp4, threading.Event())
        dest.close()
        assert (server.root / "bak/2024/06/23" / mp4.name).read_bytes() == mp4.read_bytes()
    finally:
        server.stop()


@needs_sshd
def test_every_destination_uploads_a_cameras_files_into_its_folder(
        tmp_path: Path, sshd: SshServer, ftpd: FtpServer) -> None:
    """A recording of camera `front` (pancake --config) goes to REMOTE/front/YYYY/MM/DD; the
    default camera's keep REMOTE/YYYY/MM/DD. The camera is the catalog's, not the message's."""
    mp4_dir = tmp_path / "mp4"
    (mp4_dir / "front").mkdir(parents=True)
    catalog = open_catalog(tmp_path / "catalog.db")
    front = catalogued(catalog, _mp4(mp4_dir / "front", "20240623-1700.mp4", 20_000), "front")
    cam = catalogued(catalog, _mp4(mp4_dir, "20240623-1700.mp4", 10_000))
    # Another postproc's mp4 folder sharing the catalog: not this worker's to send.
    other = catalogued(catalog, _mp4(tmp_path, "20240623-1800.mp4", 1000), "front")
    ftp = FtpDestination(FtpTarget("127.0.0.1", ftpd.port, ftpd.user,
                                   Secret(ftpd.password, "test"), "shop"), 5, 5)
    stop = threading.Event()
    workers = [UploadWorker(d, 8, stop, catalog, mp4_dir) for d in (_sftp(sshd), ftp)]
    try:
        for w in workers:
            assert w.catch_up() == 2
            w.start()
        wait_for(lambda: all(w.uploaded == 2 for w in workers), 30)
    finally:
        stop.set()
        for w in workers:
            w.abort()
            assert w.join(5)
    for root in (sshd.remote / "cam1", ftpd.root / "shop"):
        assert (root / "front/2024/06/23/20240623-1700.mp4").read_bytes() == \
            front.path.read_bytes()
        assert (root / "2024/06/23/20240623-1700.mp4").read_bytes() == cam.path.read_bytes()
        assert not list(root.rglob("20240623-1800.mp4"))
    assert not any(catalog.is_uploaded(other.recording, w.dest.label) for w in workers)
    lines = [(line.camera, line.text) for line in catalog.log_lines(10) if line.kind == "upload"]
    assert ("front", f"20240623-1700.mp4 uploaded to {ftp.label}") in lines
