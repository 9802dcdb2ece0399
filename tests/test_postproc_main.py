"""The whole post-processor as a daemon: catch-up, convert → upload → alert, clean SIGTERM."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postproc_servers import (
    FTP_PASSWORD,
    FakeBotApi,
    FtpServer,
    PostprocProcess,
    SshServer,
    bot_api,
    make_dirs,
    make_recording,
    mp4_packets,
    send_event,
    sshd_available,
    wait_for,
    wait_socket,
)

TOKEN = "987654:MAINTEST-token-secret"



@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with bot_api() as server:
        yield server



def test_catch_up_converts_and_uploads_what_was_recorded_while_down(
        tmp_path: Path, ftpd: FtpServer) -> None:
    h264, mp4 = make_dirs(tmp_path)
    names = ["20240623-1700", "20240623-1715", "20240623-171502"]
    for i, name in enumerate(names):
        times = [k * 100.0 for k in range(12)] if i == 0 else None
        make_recording(h264 / f"{name}.h264", frames=12, times_ms=times, settled=True)
    (mp4 / f".{names[1]}.tmp.mp4").write_bytes(b"left by a power cut")
    secret = tmp_path / "ftp-password"
    secret.write_text(FTP_PASSWORD + "\n")
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-ftp", "127.0.0.1", str(ftpd.port), ftpd.user,
                            f"@{secret}", "cams/one"], tmp_path / "postproc.log")
    try:
        day = ftpd.root / "cams/one/2024/06/23"
        wait_for(lambda: day.is_dir() and len(list(day.iterdir())) == 3
                 and not list(day.glob("*.part")), 30)
    finally:
        assert proc.terminate() == 0
    # Only the mp4s: no journal directory any more (the catalog is the record).
    assert sorted(p.name for p in mp4.iterdir() if p.is_file()) == [f"{n}.mp4" for n in names]
    assert sorted(p.name for p in day.iterdir()) == [f"{n}.mp4" for n in names]
    for n in names:
        assert (day / f"{n}.mp4").read_bytes() == (mp4 / f"{n}.mp4").read_bytes()
    # The first one had a sidecar: 10 fps true timing rather than --convert's 12.
    assert mp4_packets(mp4 / f"{names[0]}.mp4")[-1][0] == pytest.approx(1.1)
    assert mp4_packets(mp4 / f"{names[1]}.mp4")[-1][0] == pytest.approx(11 / 12)
    assert FTP_PASSWORD not in proc.log_text()


@pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd not installed")
def test_edge_alert_clip_video_and_uploads_to_both_destinations(
        tmp_path: Path, ftpd: FtpServer, api: FakeBotApi) -> None:
    sshd = SshServer(tmp_path / "sshd")
    h264, mp4 = make_dirs(tmp_path)
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess(
        [name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
         "--upload-after-convert", "1",
         "--upload-scp", "root@127.0.0.1", str(sshd.port), str(sshd.remote / "cam"),
         "--known-hosts", str(sshd.known_hosts), "--ssh-key", str(sshd.client_key),
         "--upload-ftp", "127.0.0.1", str(ftpd.port), ftpd.user, "env:PP_FTP", "cam",
         "--notify-telegram", "env:PP_TOKEN", "42", "--telegram-api-url", api.base_url],
        tmp_path / "postproc.log", env={"PP_TOKEN": TOKEN, "PP_FTP": FTP_PASSWORD})
    try:
        wait_socket(name)
        cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline and FTP_PASSWORD.encode() not in cmdline
        jpeg = h264 / "20240623-180511.jpg"
        jpeg.write_bytes(b"\xff\xd8snapshot\xff\xd9")
        send_event(name, {"detection": True, "time": time.time(), "jpeg": str(jpeg)})
        wait_for(lambda: api.calls_to("sendPhoto"), 15)
        clip = make_recording(h264 / "20240623-180511.h264", frames=24,
                              times_ms=[k * 83.333 for k in range(24)])
        send_event(name, {"h264": str(clip), "detection": True,
                          "pts": str(clip.with_suffix(".pts"))})
        send_event(name, {"detection": False})
        wait_for(lambda: api.calls_to("sendVideo") and len(api.calls_to("sendMessage")) == 1, 20)
        for root in (sshd.remote / "cam", ftpd.root / "cam"):
            final = root / "2024/06/23/20240623-180511.mp4"
            wait_for(final.exists, 20)
            assert final.read_bytes() == (mp4 / "20240623-180511.mp4").read_bytes()
    finally:
        assert proc.terminate() == 0
        sshd.stop()
    photo = api.calls_to("sendPhoto")[0]
    assert photo.files["photo"] == jpeg.stat().st_size
    assert api.calls_to("sendVideo")[0].files["video"] == \
        (mp4 / "20240623-180511.mp4").stat().st_size
    assert api.calls_to("sendMessage")[0].fields["text"].startswith("Detection over")
    text = proc.log_text()
    assert TOKEN not in text and FTP_PASSWORD not in text


def test_sigterm_mid_transfer_exits_0_promptly_leaving_only_part(tmp_path: Path) -> None:
    slow = FtpServer(tmp_path / "ftproot", password=FTP_PASSWORD)
    from pyftpdlib.handlers import ThrottledDTPHandler

    # 32 KB/s: the upload below takes tens of seconds.
    slow.server.handler.dtp_handler = type("Slow", (ThrottledDTPHandler,),
                                           {"read_limit": 32 * 1024})
    h264, mp4 = make_dirs(tmp_path)
    make_recording(h264 / "20240623-1800.h264", frames=96, settled=True)
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-ftp", "127.0.0.1", str(slow.port), slow.user,
                            "env:PP_FTP", "cam"],
                           tmp_path / "postproc.log", env={"PP_FTP": FTP_PASSWORD})
    day = slow.root / "cam/2024/06/23"
    try:
        wait_for(lambda: (day / "20240623-1800.mp4.part").exists(), 20)
        time.sleep(0.3)
        started = time.monotonic()
        code = proc.terminate(timeout=10)
        took = time.monotonic() - started
    finally:
        proc.close()
        slow.stop()
    assert code == 0
    assert took < 5.0, f"stopped in {took:.1f} s"
    assert [p.name for p in day.iterdir()] == ["20240623-1800.mp4.part"]
    assert "cut off by shutdown" in proc.log_text()
