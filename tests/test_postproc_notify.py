"""Telegram alerts against a local HTTP server that speaks the Bot API."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import raspberry_pancake.postproc.notify as notify
from raspberry_pancake.postproc.config import TelegramTarget
from raspberry_pancake.postproc.notify import Alert, Notifier
from raspberry_pancake.shared.credentials import Secret, install_redaction
from tests.postproc_servers import FakeBotApi, bot_api, wait_for

TOKEN = "123456:TESTTOKEN-never-in-logs"


@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with bot_api() as server:
        yield server


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _notifier(api: FakeBotApi, stop: threading.Event, queue_size: int = 8,
              public: bool = False) -> Notifier:
    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, public, queue_size,
                 stop)
    n.start()
    return n


def test_edge_text_photo_and_video(tmp_path: Path, api: FakeBotApi,
                                   stop: threading.Event) -> None:
    jpeg = tmp_path / "edge.jpg"
    jpeg.write_bytes(b"\xff\xd8" + b"j" * 5000 + b"\xff\xd9")
    mp4 = tmp_path / "20240623-180511.mp4"
    mp4.write_bytes(b"m" * 20000)
    n = _notifier(api, stop)
    n.edge(True, 1719158711.0, None)
    n.edge(True, None, jpeg)
    n.clip(mp4)
    n.edge(False, None, None)
    n.clip(mp4, "Front door")
    wait_for(lambda: n.sent == 5, 15)
    messages = api.calls_to("sendMessage")
    assert [m.fields["chat_id"] for m in messages] == ["42", "42"]
    assert messages[0].fields["text"].startswith("Detection at ")
    assert messages[1].fields["text"].startswith("Detection over at ")
    photo = api.calls_to("sendPhoto")[0]
    assert photo.files["photo"] == 5004 and photo.fields["caption"].startswith("Detection at")
    video = api.calls_to("sendVideo")[0]
    assert video.files["video"] == 20000 and video.fields["caption"] == f"Clip {mp4.name}"
    assert api.calls_to("sendVideo")[1].fields["caption"] == f"Clip {mp4.name} (Front door)"
    assert all(c.token == TOKEN for c in api.calls)
    assert n.join(0.1) is False, "still running until stopped"
    stop.set()
    assert n.join(5)


def test_429_retry_after_is_honoured(api: FakeBotApi, stop: threading.Event) -> None:
    api.script("sendMessage", (429, {"retry_after": 1, "description": "Too Many Requests"}))
    n = _notifier(api, stop)
    n.submit(Alert("hello"))
    wait_for(lambda: n.sent == 1, 15)
    calls = api.calls_to("sendMessage", status=None)
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 0.95, "waited retry_after before trying again"


@pytest.mark.parametrize("status", [400, 413])
def test_400_and_413_are_not_retried_forever(tmp_path: Path, api: FakeBotApi,
                                             stop: threading.Event, status: int) -> None:
    mp4 = tmp_path / "20240623-180511.mp4"
    mp4.write_bytes(b"m" * 1000)
    api.script("sendVideo", *[(status, {"description": "no"})] * 50)
    api.script("sendMessage", *[(status, {"description": "no"})] * 50)
    n = _notifier(api, stop)
    n.clip(mp4)
    n.submit(Alert("after"))
    wait_for(lambda: n.failed == 2, 15)
    time.sleep(0.3)
    # One try each, and the video's fallback text: never a loop.
    assert len(api.calls_to("sendVideo", status=None)) == 1
    assert len(api.calls_to("sendMessage", status=None)) == 2


def test_clip_over_the_public_limit_becomes_text(tmp_path: Path, api: FakeBotApi,
                                                 stop: threading.Event,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "PUBLIC_UPLOAD_LIMIT", 10_000)
    big = tmp_path / "20240623-180511.mp4"
    big.write_bytes(b"m" * 10_001)
    n = _notifier(api, stop, public=True)
    n.clip(big)
    wait_for(lambda: n.sent == 1, 15)
    assert not api.calls_to("sendVideo", status=None)
    text = api.calls_to("sendMessage")[0].fields["text"]
    assert big.name in text and "limit" in text


def test_full_queue_drops_and_logs(api: FakeBotApi, stop: threading.Event,
                                   caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, False, 2, stop)
    # Not started: nothing drains the queue.
    assert n.submit(Alert("one")) and n.submit(Alert("two"))
    assert not n.submit(Alert("three"))
    assert n.dropped == 1 and "three" in caplog.text


def test_network_failure_retries_a_few_times_then_gives_up(stop: threading.Event,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(notify, "BACKOFF_FIRST", 0.05)
    # Nothing listens on this port (bound, never accepted, then closed).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = Notifier(TelegramTarget(Secret(TOKEN, "t"), "42"), f"http://127.0.0.1:{port}/bot",
                 False, 8, stop)
    n.start()
    n.submit(Alert("lost"))
    wait_for(lambda: n.failed == 1, 15)


def test_token_never_in_the_log(tmp_path: Path, api: FakeBotApi, stop: threading.Event) -> None:
    log_path = tmp_path / "log.txt"
    handler = logging.FileHandler(log_path)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # even at DEBUG, where an HTTP library would print URLs
    install_redaction([Secret(TOKEN, "test")])
    try:
        api.script("sendMessage", (429, {"retry_after": 1}), (400, {"description": "bad"}),
                   (500, {"description": "oops"}))
        n = _notifier(api, stop)
        n.submit(Alert("a"))
        n.submit(Alert("b"))
        wait_for(lambda: n.sent + n.failed == 2, 20)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    text = log_path.read_text()
    assert "flood control" in text and "refused" in text, text
    assert TOKEN not in text
    assert "TESTTOKEN" not in text


def test_video_retried_after_a_network_error_is_sent_whole(tmp_path: Path, api: FakeBotApi,
                                                            stop: threading.Event) -> None:
    # The clip is streamed from an open file, not read into memory: a retry must start over
    # from its first byte.
    mp4 = tmp_path / "20240623-180512.mp4"
    mp4.write_bytes(b"v" * 300_000)
    api.script("sendVideo", (502, {"description": "Bad Gateway"}))
    n = _notifier(api, stop)
    n.clip(mp4)
    wait_for(lambda: n.sent == 1, 15)
    calls = api.calls_to("sendVideo", status=None)
    assert [c.status for c in calls] == [502, 200]
    assert [c.files["video"] for c in calls] == [300_000, 300_000]


def _openssl(*args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca_dir(base: Path, name: str) -> Path:
    """A CA in a hashed directory, as update-ca-certificates leaves /etc/ssl/certs."""
    base.mkdir()
    key, pem = base / "ca.key", base / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(pem), "-days", "2", "-subj", f"/CN={name}")
    _openssl("rehash", str(base))
    return base


def test_tls_context_reads_the_system_ca_directory_and_still_verifies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import ssl

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    good = _ca_dir(tmp_path / "good", "pancake test CA")
    other = _ca_dir(tmp_path / "other", "some other CA")
    server_key, csr, server_pem = (tmp_path / "srv.key", tmp_path / "srv.csr",
                                   tmp_path / "srv.pem")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(server_key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(good / "ca.pem"), "-CAkey",
             str(good / "ca.key"), "-CAcreateserial", "-out", str(server_pem), "-days", "2",
             "-extfile", str(ext))

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"ok": true, "result": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_pem, server_key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="test-https", daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    try:
        ctx = notify.tls_context(good)
        assert ctx is not None
        assert ctx.cert_store_stats()["x509"] == 0, "nothing loaded before a handshake"
        stop = threading.Event()
        assert notify.BotApi(url, TOKEN, stop, ctx).call("getMe", {}) == "ok"
        assert ctx.cert_store_stats()["x509_ca"] == 1, "only the root the chain needed"
        refused = notify.tls_context(other)
        assert refused is not None
        with pytest.raises(notify.NetworkError, match="CERTIFICATE_VERIFY_FAILED"):
            notify.BotApi(url, TOKEN, stop, refused).call("getMe", {})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    # No hashed names (or no directory): ssl's own defaults.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ca.pem").write_bytes((good / "ca.pem").read_bytes())
    assert notify.tls_context(plain) is None
    assert notify.tls_context(tmp_path / "missing") is None
    # The user's own choice of CA file is OpenSSL's to honour.
    monkeypatch.setenv("SSL_CERT_FILE", str(good / "ca.pem"))
    assert notify.tls_context(good) is None


def test_snapshot_deleted_before_sending_gives_the_text_at_once(
        tmp_path: Path, api: FakeBotApi, stop: threading.Event,
        caplog: pytest.LogCaptureFixture) -> None:
    jpeg = tmp_path / "20240623-180511.jpg"
    jpeg.write_bytes(b"\xff\xd8snap\xff\xd9")
    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, False, 8, stop)
    n.edge(True, 1719158711.0, jpeg)
    jpeg.unlink()  # retention ran between the edge and the send
    n.start()
    wait_for(lambda: n.sent == 1, 15)
    assert not api.calls_to("sendPhoto", status=None)
    assert api.calls_to("sendMessage")[0].fields["text"].endswith("(snapshot not sent)")
    # Not taken for a network error and retried.
    assert "retry" not in caplog.text and "HTTP implementation" not in caplog.text


@pytest.mark.parametrize("epoch", [float("nan"), float("inf"), 1e20, -1e300, 10**400],
                         ids=["nan", "inf", "1e20", "-1e300", "10**400"])
def test_edge_text_with_an_impossible_time_says_now(epoch: float) -> None:
    before = dt.datetime.now().replace(microsecond=0)
    text = notify.edge_text(True, epoch)
    stamp = dt.datetime.strptime(text.removeprefix("Detection at "), "%Y-%m-%d %H:%M:%S")
    assert before <= stamp <= dt.datetime.now()


@pytest.mark.parametrize("retry_after", [10**30, float("nan"), "soon", [1]],
                         ids=["huge", "nan", "text", "list"])
def test_unreadable_flood_reply_fails_that_alert_only(api: FakeBotApi, stop: threading.Event,
                                                      caplog: pytest.LogCaptureFixture,
                                                      retry_after: object) -> None:
    api.script("sendMessage", (429, {"retry_after": retry_after}))
    n = _notifier(api, stop)
    n.submit(Alert("first"))
    wait_for(lambda: n.failed == 1 or n.join(0), 15)
    n.submit(Alert("second"))
    wait_for(lambda: n.sent == 1 or n.join(0), 15)
    assert not n.join(0), "the notifier thread goes on"
    assert [c.fields["text"] for c in api.calls_to("sendMessage")] == ["second"]
    assert "unreadable reply to 'first'" in caplog.text


@pytest.mark.parametrize(("event", "place", "first_line"), [
    ({"labels": ["motion"], "boxes": [[0.1, 0.1, 0.3, 0.4]]}, "front door",
     "motion, 12 % of the picture, front door"),
    ({"labels": ["motion"], "boxes": [[0.0, 0.0, 0.01, 0.01]]}, None,
     "motion, 1 % of the picture"),
    ({"labels": ["face"], "names": ["Anna"]}, "front door", "Anna at front door"),
    ({"labels": ["face"], "names": ["Anna", "unknown", "Ben"]}, "hall",
     "Anna, Ben and an unknown person at hall"),
    ({"labels": ["face"], "names": ["unknown"]}, "front door", "Unknown person at front door"),
    ({"labels": ["doorbell", "motion"]}, "gate", "doorbell, motion, gate"),
])
def test_caption_says_who_or_what_and_where(event: dict[str, object], place: str | None,
                                            first_line: str) -> None:
    text = notify.caption({**event, "detection": True, "time": 1719158711.0}, place)
    head, when = text.split("\n")
    assert head == first_line
    assert when == dt.datetime.fromtimestamp(1719158711.0).strftime("%Y-%m-%d %H:%M:%S")


def test_caption_without_labels_is_the_original_text() -> None:
    assert notify.caption({"detection": True, "time": 1719158711.0}, None) == \
        notify.edge_text(True, 1719158711.0)
    assert notify.caption({"detection": True, "time": 1719158711.0}, "front").endswith(
        " (front)")


def test_detection_sends_the_caption_and_records_the_alert(
        tmp_path: Path, api: FakeBotApi, stop: threading.Event) -> None:
    jpeg = tmp_path / "boxes.jpg"
    jpeg.write_bytes(b"\xff\xd8" + b"b" * 3000 + b"\xff\xd9")
    recorded: list[tuple[str, float, str]] = []
    tries: list[int] = []

    def record(camera: str, rise: float, channel: str) -> bool:
        # The catalog has the event only from the second look on (pancake writes it late).
        tries.append(1)
        if len(tries) < 2:
            return False
        recorded.append((camera, rise, channel))
        return True

    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, False, 8, stop,
                 record=record)
    n.start()
    n.detection({"detection": True, "time": 1719158711.5, "labels": ["face"],
                 "names": ["Anna"]}, "front", "Front door", jpeg)
    n.detection({"detection": False, "time": 1719158720.0}, "front", "Front door", None)
    wait_for(lambda: recorded, 15)
    photo = api.calls_to("sendPhoto")[0]
    assert photo.files["photo"] == 3004
    assert photo.fields["caption"].startswith("Anna at Front door\n")
    assert api.calls_to("sendMessage")[0].fields["text"].startswith("Detection over at ")
    assert recorded == [("front", 1719158711.5, "telegram")]  # the fall is no new alert


def test_health_is_one_message_per_camera_per_interval(api: FakeBotApi,
                                                       stop: threading.Event) -> None:
    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, False, 8, stop,
                 health_interval=1.5)
    n.start()
    n.health("front", "offline", "Front door", None)
    n.health("back", "offline", "back", None)  # another camera: its own window
    wait_for(lambda: n.sent == 2, 15)
    n.health("front", "live", "Front door", None)  # held: within front's window
    time.sleep(0.5)
    texts = [c.fields["text"] for c in api.calls_to("sendMessage")]
    assert len(texts) == 2 and all("no picture" in t for t in texts)
    # When the window ends, the return is told (it still stands).
    wait_for(lambda: n.sent == 3, 15)
    assert "Front door: the camera delivers pictures again" in \
        api.calls_to("sendMessage")[2].fields["text"]
    # A flap that ends where it started, inside the window, says nothing.
    n.health("front", "offline", "Front door", None)
    n.health("front", "live", "Front door", None)
    time.sleep(2.5)
    assert n.sent == 3
