"""postproc's own Bot API client: streamed uploads, TLS verification, every error path logged
without the token, against local servers that speak the Bot API over real sockets."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import raspberry_pancake.postproc.notify as notify
from raspberry_pancake.postproc.config import TelegramTarget
from raspberry_pancake.postproc.notify import Alert, Notifier
from raspberry_pancake.shared.credentials import Secret
from tests.postproc_servers import FakeBotApi, bot_api, make_tls, wait_for

TOKEN = "123456:TESTTOKEN-never-in-logs"


@dataclass(frozen=True)
class Reply:
    """How the server answers one request: a Bot API JSON reply (`body` None: a real
    message result), or `raw` bytes as they are (then `hold`: keep the connection open, as a
    keep-alive server would), or `silent`: nothing until the test ends."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    hold: bool = False
    silent: bool = False
    trickle: bool = False  # `raw` a byte at a time, each its own TCP segment


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Path  # the raw body, as it arrived


@dataclass
class RawBotApi:
    """A Bot API server on loopback that writes each request's body to a file as it arrives
    (never holding it in memory) and answers from a script, else with a real 200 reply."""

    base: Path
    tls: ssl.SSLContext | None = None
    replies: list[Reply] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        api = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with lock:
                    body = api.base / f"request-{len(api.requests)}.bin"
                    reply = api.replies.pop(0) if api.replies else Reply()
                left = int(self.headers.get("Content-Length") or 0)
                with body.open("wb") as f:
                    while left:
                        chunk = self.rfile.read(min(left, 65536))
                        if not chunk:
                            break
                        f.write(chunk)
                        left -= len(chunk)
                with lock:
                    api.requests.append(Request(self.path, dict(self.headers), body))
                if reply.silent:
                    api.closing.wait(60)
                    return
                if reply.raw is not None:
                    if reply.trickle:
                        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        for i in range(len(reply.raw)):
                            self.wfile.write(reply.raw[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.002)
                    else:
                        self.wfile.write(reply.raw)
                    self.wfile.flush()
                    if reply.hold:
                        api.closing.wait(60)
                    self.close_connection = True
                    return
                data = json.dumps(reply.body if reply.body is not None else {
                    "ok": True, "result": {"message_id": 1, "date": 0,
                                           "chat": {"id": 42, "type": "private"}}}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        scheme = "https" if self.tls is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}/bot"
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-rawbotapi",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawBotApi]:
    server = RawBotApi(tmp_path / "server")
    yield server
    server.stop()


@pytest.fixture
def logfile(tmp_path: Path) -> Iterator[Path]:
    """Everything logged, at DEBUG, with no redaction filter in the way: what the notifier
    itself writes must already be clean."""
    path = tmp_path / "log.txt"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.removeHandler(handler)
    root.setLevel(old)
    handler.close()


def _notifier(url: str, stop: threading.Event, public: bool = False) -> Notifier:
    n = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), url, public, 8, stop)
    n.start()
    return n


def _parts(request: Request) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, payload) of a multipart/form-data body."""
    ctype = request.headers["Content-Type"]
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + request.body.read_bytes())
    parts = {}
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts[str(part.get_param("name", header="content-disposition"))] = (
            part.get_filename(), payload)
    return parts


def test_video_upload_arrives_whole_and_equal_to_the_file(tmp_path: Path, raw: RawBotApi,
                                                          stop: threading.Event) -> None:
    mp4 = tmp_path / "20240623-180511.mp4"
    mp4.write_bytes(os.urandom(3_000_000) + b"\r\n--" + os.urandom(1000))
    n = _notifier(raw.base_url, stop)
    n.clip(mp4, "Haustür")
    wait_for(lambda: n.sent == 1, 30)
    [request] = raw.requests
    assert request.path == f"/bot{TOKEN}/sendVideo"
    assert int(request.headers["Content-Length"]) == request.body.stat().st_size
    assert "Transfer-Encoding" not in request.headers
    parts = _parts(request)
    assert parts["video"][0] == mp4.name
    assert hashlib.sha256(parts["video"][1]).digest() == hashlib.sha256(mp4.read_bytes()).digest()
    assert parts["chat_id"] == (None, b"42")
    assert parts["caption"] == (None, f"Clip {mp4.name} (Haustür)".encode())
    assert parts["supports_streaming"] == (None, b"true")


def test_upload_is_streamed_not_read_into_memory(tmp_path: Path, raw: RawBotApi,
                                                 stop: threading.Event) -> None:
    video = tmp_path / "big.mp4"
    with video.open("wb") as f:
        for _ in range(20):
            f.write(os.urandom(1_000_000))
    api = notify.BotApi(raw.base_url, TOKEN, stop)
    tracemalloc.start()
    try:
        api.call("sendVideo", {"chat_id": "42"}, notify.Upload("video", video, "video/mp4"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"{peak} bytes at the peak for a 20 MB upload"
    assert _parts(raw.requests[0])["video"][1] == video.read_bytes()


def test_over_the_self_hosted_limit_becomes_text(tmp_path: Path, stop: threading.Event,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "SELF_HOSTED_UPLOAD_LIMIT", 10_000)
    big = tmp_path / "20240623-180511.mp4"
    big.write_bytes(b"m" * 10_001)
    with bot_api() as api:
        n = _notifier(api.base_url, stop)
        n.clip(big)
        wait_for(lambda: n.sent == 1, 15)
        assert not api.calls_to("sendVideo", status=None)
        assert "limit" in api.calls_to("sendMessage")[0].fields["text"]


def _tls_server(base: Path, names: tuple[str, ...]) -> tuple[RawBotApi, Path]:
    files = make_tls(base / "tls", names, self_signed=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.server)
    return RawBotApi(base / "server", tls=ctx), files.ca


@pytest.mark.parametrize(("names", "trusted"), [(("127.0.0.1",), False), (("127.0.0.2",), True)],
                         ids=["self-signed", "another-host"])
def test_a_certificate_that_does_not_verify_is_refused(
        tmp_path: Path, stop: threading.Event, monkeypatch: pytest.MonkeyPatch, logfile: Path,
        names: tuple[str, ...], trusted: bool) -> None:
    monkeypatch.setattr(notify, "BACKOFF_FIRST", 0.05)
    server, ca = _tls_server(tmp_path, names)
    try:
        if trusted:  # the CA is trusted, but the certificate names another host
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        n = _notifier(server.base_url, stop)
        n.submit(Alert("hello"))
        wait_for(lambda: n.failed == 1, 30)
        assert server.requests == [], "nothing of the request went over the connection"
    finally:
        server.stop()
    text = logfile.read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in text and "gave up" in text, text
    assert TOKEN not in text and "TESTTOKEN" not in text


def test_a_certificate_that_verifies_is_used(tmp_path: Path, stop: threading.Event,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca = _tls_server(tmp_path, ("127.0.0.1",))
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        n = _notifier(server.base_url, stop)
        n.submit(Alert("hello"))
        wait_for(lambda: n.sent == 1, 30)
        assert json.loads(server.requests[0].body.read_bytes())["text"] == "hello"
    finally:
        server.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Each: the replies, what the log says, how many requests (no retry: 1).
ERRORS: dict[str, tuple[list[Reply], str, int]] = {
    "400 chat not found": ([Reply(400, {"ok": False, "error_code": 400,
                                        "description": "Bad Request: chat not found"})],
                           "refused 'a': Bad Request: chat not found", 1),
    "401 invalid token": ([Reply(401, {"ok": False, "error_code": 401,
                                       "description": "Unauthorized"})], "refused", 1),
    "403 forbidden": ([Reply(403, {"ok": False, "error_code": 403, "description":
                                   "Forbidden: bot was blocked by the user"})], "refused", 1),
    # A server that quotes the request line back: the URL, so the token.
    "404 quoting the URL": ([Reply(404, {"ok": False, "error_code": 404, "description":
                                         f"Not Found: POST /bot{TOKEN}/sendMessage"})],
                            "refused", 1),
    "409 conflict": ([Reply(409, {"ok": False, "error_code": 409,
                                  "description": "Conflict"})], "refused", 1),
    "413 from nginx": ([Reply(raw=b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: "
                              b"text/html\r\nContent-Length: 13\r\n\r\n<html></html>")],
                       "request entity too large (413)", 1),
    "migrated chat": ([Reply(400, {"ok": False, "error_code": 400, "description":
                                   "Bad Request: group chat was upgraded to a supergroup chat",
                                   "parameters": {"migrate_to_chat_id": -1001234567890}})],
                      "New chat id: -1001234567890", 1),
    "429 retry_after soon": ([Reply(429, {"ok": False, "error_code": 429, "description":
                                          "Too Many Requests", "parameters":
                                          {"retry_after": "soon"}})], "unreadable reply", 1),
    "500 four times": ([Reply(500, {"ok": False, "error_code": 500, "description":
                                    f"Internal error at /bot{TOKEN}"})] * 4,
                       "gave up on 'a' after 4 attempts", 4),
    "200 not JSON": ([Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")],
                     "unreadable reply", 1),
    "200 ok without result": ([Reply(200, {"ok": True})], "unreadable reply", 1),
    "not HTTP": ([Reply(raw=b"SSH-2.0-OpenSSH_9.2\r\n\r\n")] * 4, "not an HTTP reply", 4),
    "cut off": ([Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{\"ok\"")] * 4,
                "cut off", 4),
    "no reply": ([Reply(silent=True)] * 4, "timed out waiting for the reply", 4),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_error_is_one_line_without_the_token(raw: RawBotApi, stop: threading.Event,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    logfile: Path, case: str) -> None:
    monkeypatch.setattr(notify, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(notify, "READ_TIMEOUT", 0.5)
    replies, says, requests = ERRORS[case]
    raw.replies.extend(replies)
    n = _notifier(raw.base_url, stop)
    n.submit(Alert("a"))
    wait_for(lambda: n.failed == 1, 30)
    n.submit(Alert("b"))  # the thread goes on, and the next alert goes out
    wait_for(lambda: n.sent == 1, 30)
    assert len(raw.requests) == requests + 1
    text = logfile.read_text()
    assert says in text, text
    assert TOKEN not in text and "TESTTOKEN" not in text, text
    assert "Traceback" not in text


def test_connection_refused_and_a_deleted_file_without_the_token(
        tmp_path: Path, stop: threading.Event, monkeypatch: pytest.MonkeyPatch,
        logfile: Path) -> None:
    monkeypatch.setattr(notify, "BACKOFF_FIRST", 0.05)
    n = _notifier(f"http://127.0.0.1:{_closed_port()}/bot", stop)
    n.submit(Alert("lost"))
    wait_for(lambda: n.failed == 1, 30)
    with bot_api() as api:
        jpeg = tmp_path / "gone.jpg"
        m = Notifier(TelegramTarget(Secret(TOKEN, "test"), "42"), api.base_url, False, 8, stop)
        m.edge(True, None, jpeg)  # never written: retention took it
        m.start()
        wait_for(lambda: m.sent == 1, 15)
    text = logfile.read_text()
    assert "Connection refused" in text and "cannot read the file" in text, text
    assert TOKEN not in text and "TESTTOKEN" not in text


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"ok\":\r\n"
           b"15\r\ntrue, \"result\": true}\r\n0\r\n\r\n")


@pytest.mark.parametrize("reply", [
    Reply(raw=CHUNKED),
    Reply(raw=CHUNKED, trickle=True, hold=True),
    Reply(raw=b"HTTP/1.0 200 OK\r\n\r\n{\"ok\": true, \"result\": true}"),
], ids=["chunked", "chunked-byte-by-byte-kept-open", "to-the-end"])
def test_replies_in_other_framings_are_read(raw: RawBotApi, stop: threading.Event,
                                            monkeypatch: pytest.MonkeyPatch,
                                            reply: Reply) -> None:
    # Were the reply misread or read to the end of a connection kept open, this would wait
    # READ_TIMEOUT, longer than wait_for.
    monkeypatch.setattr(notify, "READ_TIMEOUT", 300.0)
    raw.replies.append(reply)
    n = _notifier(raw.base_url, stop)
    n.submit(Alert("a"))
    wait_for(lambda: n.sent == 1, 15)


def test_a_server_that_keeps_the_connection_open_is_not_waited_for(
        raw: RawBotApi, stop: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the reply read to the end of the connection, this would wait READ_TIMEOUT.
    monkeypatch.setattr(notify, "READ_TIMEOUT", 300.0)
    body = b'{"ok": true, "result": true}'
    raw.replies.append(Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body), hold=True))
    n = _notifier(raw.base_url, stop)
    n.submit(Alert("a"))
    wait_for(lambda: n.sent == 1, 30)


def test_stop_cuts_off_a_request_in_progress(tmp_path: Path, raw: RawBotApi,
                                             stop: threading.Event,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    raw.replies.append(Reply(silent=True))
    n = _notifier(raw.base_url, stop)
    n.submit(Alert("a"))
    wait_for(lambda: raw.requests, 15)
    stop.set()
    # postproc joins everything within 4.5 s of a stop (main.STOP_DEADLINE).
    assert n.join(4.5)
    assert "alert cut off by shutdown" in caplog.text
    assert n.failed == 0 and len(raw.requests) == 1


def test_sendmessage_fields_are_the_bot_apis(raw: RawBotApi, stop: threading.Event) -> None:
    n = _notifier(raw.base_url, stop)
    n.submit(Alert("Anna at Front door\n2026-01-01 10:15:02"))
    wait_for(lambda: n.sent == 1, 15)
    [request] = raw.requests
    assert request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body.read_bytes()) == {
        "chat_id": "42", "text": "Anna at Front door\n2026-01-01 10:15:02"}


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/bot", "http://127.0.0.1:8081"],
                         ids=["bad-port", "no-/bot"])
def test_a_bad_api_url_is_one_line_per_alert_without_the_token(
        stop: threading.Event, logfile: Path, url: str) -> None:
    n = _notifier(url, stop)
    n.submit(Alert("a"))
    wait_for(lambda: n.failed == 1, 15)
    assert not n.join(0), "the notifier thread goes on"
    text = logfile.read_text()
    assert "is not an http(s) URL" in text, text
    assert TOKEN not in text and "TESTTOKEN" not in text


def test_fake_bot_api_still_answers_the_client(stop: threading.Event) -> None:
    """The tests' stand-in and the client agree on the Bot API (getMe, as a real server)."""
    api: FakeBotApi
    with bot_api() as api:
        me = notify.BotApi(api.base_url, TOKEN, stop).call("getMe", {})
    assert isinstance(me, dict) and me["is_bot"] is True
