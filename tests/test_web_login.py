"""--login on the real pancake.py: sessions, logout, XSRF, websocket origin, throttling, proxies, TLS."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import bcrypt
import pytest
from conftest import Pancake
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpclient import HTTPClientError
from tornado.web import decode_signed_value
from web_helpers import (
    HOST,
    ROOT,
    LoginResult,
    WsClient,
    free_port,
    get,
    make_hash_file,
    post_login,
    start_pancake,
    xsrf,
)

from raspberry_pancake.recorder import config as recorder_config
from raspberry_pancake.recorder.web import app as web
from raspberry_pancake.recorder.web import auth, handlers, live

PASSWORD = "correct horse battery"
# 72 bytes exactly: bcrypt's limit. Its 73-byte extension must not log in (bcrypt 4 truncated).
LONG_PASSWORD = "p" * 71 + "!"


@pytest.fixture(scope="module")
def hashed() -> bytes:
    return auth.hash_password(PASSWORD.encode())


@pytest.fixture
def hash_file(tmp_path: Path, hashed: bytes) -> Path:
    return make_hash_file(tmp_path, hashed)


@pytest.fixture
def server(hash_file: Path, tmp_path: Path, pancakes: list[Pancake]) -> Iterator[Pancake]:
    daemon = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    yield daemon
    assert daemon.stop()[0] == 0, daemon.log()


def session_of(result: LoginResult) -> str:
    cookie = result.cookie(handlers.SESSION_COOKIE)
    assert cookie, f"no session cookie: {result.status} {result.headers}"
    return f"{handlers.SESSION_COOKIE}={cookie}"


def request(port: int, method: str, path: str, body: str = "",
            headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheaders(), r.read()
    finally:
        conn.close()


def login_with(port: int, password: str, headers: dict[str, str]) -> LoginResult:
    """A login POST carrying extra headers (a proxy's, or a client's trying to look like one)."""
    import time

    token = xsrf(port)
    body = urlencode({"password": password, "next": "/", "_xsrf": token})
    start = time.monotonic()
    status, got, page = request(port, "POST", "/login", body, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"_xsrf={token}",
        **headers})
    return LoginResult(status, got, page, time.monotonic() - start)


def logout(port: int, cookie: str) -> tuple[int, list[tuple[str, str]]]:
    token = xsrf(port)
    status, headers, _ = request(port, "POST", "/logout", f"_xsrf={token}", {
        "Cookie": f"{cookie}; _xsrf={token}",
        "Content-Type": "application/x-www-form-urlencoded"})
    return status, headers


def cookie_flags(line: str) -> list[str]:
    return [part.strip().lower() for part in line.split(";")]


# --- sessions -------------------------------------------------------------------------------


def test_every_route_needs_a_session(server: Pancake) -> None:
    status, headers, _ = get(server.port, "/")
    assert status == 302 and headers["location"] == "/login?next=%2F"
    status, _, body = get(server.port, "/status")
    assert status == 401 and b"login required" in body
    status, _, body = get(server.port, "/login")
    assert status == 200 and b'type="password"' in body
    status, _, _ = get(server.port, "/static/style.css")
    assert status == 200
    # A forged cookie is no session either.
    status, _, _ = get(server.port, "/", {"Cookie": f"{handlers.SESSION_COOKIE}=x|y|z"})
    assert status == 302

    async def websocket() -> None:
        with pytest.raises(HTTPClientError) as refused:
            await WsClient.connect(server.port)
        assert refused.value.code == 403

    asyncio.run(websocket())


def test_right_password_opens_a_session_with_safe_cookie_flags(server: Pancake) -> None:
    result = post_login(server.port, PASSWORD, next_="/?cam=1")
    assert result.status == 302
    assert dict((k.lower(), v) for k, v in result.headers)["location"] == "/?cam=1"
    flags = cookie_flags(result.set_cookie_line(handlers.SESSION_COOKIE))
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert any(f.startswith("expires=") for f in flags), "the session must expire"
    assert "secure" not in flags  # plain HTTP here; the TLS and proxy tests check Secure
    cookie = session_of(result)
    status, _, page = get(server.port, "/", {"Cookie": cookie})
    assert status == 200 and b'id="frame"' in page and b"Log out" in page
    status, _, body = get(server.port, "/status", {"Cookie": cookie})
    assert status == 200 and b"jpeg_encodes" in body

    async def websocket() -> None:
        client = await WsClient.connect(server.port, {"Cookie": cookie})
        assert await client.next_frame(10) is not None
        client.close()

    asyncio.run(websocket())


def test_open_redirects_are_not_followed(server: Pancake) -> None:
    result = post_login(server.port, PASSWORD, next_="//evil.example/")
    assert result.status == 302
    assert dict((k.lower(), v) for k, v in result.headers)["location"] == "/"


def test_logout_ends_the_session(server: Pancake) -> None:
    cookie = session_of(post_login(server.port, PASSWORD))
    status, headers = logout(server.port, cookie)
    assert status == 302 and dict(headers)["Location"] == "/login"
    cleared = [v for k, v in headers if k.lower() == "set-cookie"
               and v.startswith(handlers.SESSION_COOKIE + "=")]
    assert cleared and cleared[0].startswith(f'{handlers.SESSION_COOKIE}=""')
    # Even a copy of the old cookie is dead now.
    status, _, _ = get(server.port, "/", {"Cookie": cookie})
    assert status == 302
    status, _, _ = get(server.port, "/status", {"Cookie": cookie})
    assert status == 401


def test_logout_is_post_only_and_needs_the_xsrf_token(server: Pancake) -> None:
    """A GET (an <img src=/logout> on any page) or a POST without the token ends nothing."""
    cookie = session_of(post_login(server.port, PASSWORD))
    status, _, _ = get(server.port, "/logout", {"Cookie": cookie})
    assert status == 405
    status, _, _ = request(server.port, "POST", "/logout", "", {"Cookie": cookie})
    assert status == 403
    status, _, _ = get(server.port, "/", {"Cookie": cookie})
    assert status == 200, "the session ended without a valid logout"
    # The page's own control is that POST, with the token.
    _, _, page = get(server.port, "/", {"Cookie": cookie})
    form = re.search(rb'<form method="post" action="/logout".*?</form>', page, re.S)
    assert form and b'name="_xsrf"' in form.group(0)


def test_logout_closes_that_sessions_websockets_only(server: Pancake) -> None:
    mine = session_of(post_login(server.port, PASSWORD))
    theirs = session_of(post_login(server.port, PASSWORD))

    async def scenario() -> None:
        a = await WsClient.connect(server.port, {"Cookie": mine})
        b = await WsClient.connect(server.port, {"Cookie": theirs})
        assert await a.next_frame(10) is not None and await b.next_frame(10) is not None
        await asyncio.get_running_loop().run_in_executor(None, logout, server.port, mine)
        while await asyncio.wait_for(a.conn.read_message(), 10) is not None:
            pass  # status texts, then the close
        assert a.conn.close_code == live.LOGGED_OUT
        await b.ack()
        assert await b.next_frame(10) is not None, "the other session was closed too"
        b.close()

    asyncio.run(scenario())


def test_a_logged_out_cookie_stays_dead_after_a_restart(
        tmp_path: Path, hash_file: Path, pancakes: list[Pancake]) -> None:
    first = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    gone = session_of(post_login(first.port, PASSWORD))
    kept = session_of(post_login(first.port, PASSWORD))
    assert logout(first.port, gone)[0] == 302
    assert first.stop()[0] == 0, first.log()

    second = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    assert get(second.port, "/", {"Cookie": gone})[0] == 302, "a logged-out session came back"
    assert get(second.port, "/", {"Cookie": kept})[0] == 200, "a restart logged a session out"

    async def websocket() -> None:
        with pytest.raises(HTTPClientError) as refused:
            await WsClient.connect(second.port, {"Cookie": gone})
        assert refused.value.code == 403

    asyncio.run(websocket())
    assert second.stop()[0] == 0

    # Where it is kept: the state directory (XDG_STATE_HOME here), private, no session id in it.
    state = tmp_path / "state" / "pancake"
    revoked = state / auth.REVOKED_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(revoked.stat().st_mode) == 0o600
    secret = hash_file.with_name(hash_file.name + ".secret").read_bytes().strip()
    raw = decode_signed_value(secret, handlers.SESSION_COOKIE, gone.split("=", 1)[1].strip('"'))
    assert raw is not None
    sid = raw.decode().partition(":")[2]
    text = revoked.read_text()
    assert list(json.loads(text)["revoked"]) == [hashlib.sha256(sid.encode()).hexdigest()]
    assert sid not in text


def test_cookie_secret_is_private_and_a_new_password_ends_every_session(
        tmp_path: Path, hash_file: Path, pancakes: list[Pancake]) -> None:
    first = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    cookie = session_of(post_login(first.port, PASSWORD))
    first.stop()
    secret_path = hash_file.with_name(hash_file.name + ".secret")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(secret_path.read_bytes().strip().decode())) >= 32
    hash_file.write_bytes(auth.hash_password(b"another one") + b"\n")
    second = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    assert get(second.port, "/", {"Cookie": cookie})[0] == 302
    second.stop()


def test_an_unusable_state_directory_is_one_line_and_exit_2(tmp_path: Path,
                                                           hash_file: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", HOST, "--login", str(hash_file)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "XDG_STATE_HOME": str(blocker)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "XDG_STATE_HOME" in lines[0] and "Traceback" not in proc.stderr


def test_revocations_are_shared_by_pancakes_on_one_state_directory(tmp_path: Path) -> None:
    """Two cameras, two processes, one password: a logout on one is refused by the other."""
    a, b = auth.Revocations(tmp_path), auth.Revocations(tmp_path)
    a.load()
    b.load()
    a.revoke("session-one")
    assert "session-one" in b
    b.revoke("session-two")
    assert "session-one" in a and "session-two" in a
    assert "session-three" not in a


def test_logouts_are_kept_in_the_state_dir_even_with_the_catalog_elsewhere(
        tmp_path: Path) -> None:
    state, elsewhere = tmp_path / "state", tmp_path / "db"
    elsewhere.mkdir()
    cfg = recorder_config.parse(["--source", "testsrc", "--catalog", str(elsewhere / "p.db"),
                                 "--state-dir", str(state)])
    assert web._revocations(cfg).path.parent == state
    assert cfg.masks_dir == state / "masks"


# --- XSRF, origin, passwords ---------------------------------------------------------------


def test_post_without_xsrf_is_refused(server: Pancake) -> None:
    result = post_login(server.port, PASSWORD, token=None)
    assert result.status == 403
    assert result.cookie(handlers.SESSION_COOKIE) is None
    # A token in the form that does not match the cookie is refused too.
    token = xsrf(server.port)
    status, _, _ = request(server.port, "POST", "/login", f"_xsrf={token}&password={PASSWORD}", {
        "Cookie": "_xsrf=2|00000000|00000000000000000000000000000000|1",
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403


def test_websocket_with_a_session_but_a_foreign_origin_is_refused(server: Pancake) -> None:
    cookie = session_of(post_login(server.port, PASSWORD))

    async def scenario() -> None:
        with pytest.raises(HTTPClientError) as refused:
            await WsClient.connect(server.port, {"Cookie": cookie,
                                                 "Origin": "http://evil.example"})
        assert refused.value.code == 403
        with pytest.raises(HTTPClientError) as refused:
            await WsClient.connect(server.port, {"Cookie": cookie,
                                                 "Origin": "http://evil.example",
                                                 "Sec-Fetch-Site": "cross-site"})
        assert refused.value.code == 403
        same = await WsClient.connect(server.port, {"Cookie": cookie,
                                                    "Origin": f"http://{HOST}:{server.port}"})
        assert await same.next_frame(10) is not None
        same.close()

    asyncio.run(scenario())


# tornado.web.Application's settings, as its documentation lists them.
TORNADO_SETTINGS = {
    "autoreload", "debug", "default_handler_class", "default_handler_args", "compress_response",
    "gzip", "log_function", "serve_traceback", "ui_modules", "ui_methods",
    "websocket_ping_interval", "websocket_ping_timeout", "websocket_max_message_size",
    "cookie_secret", "key_version", "login_url", "xsrf_cookies", "xsrf_cookie_version",
    "xsrf_cookie_name", "xsrf_cookie_kwargs", "autoescape", "compiled_template_cache",
    "template_path", "template_loader", "template_whitespace", "static_hash_cache",
    "static_path", "static_url_prefix", "static_handler_class", "static_handler_args",
}


def test_the_app_has_only_settings_tornado_knows() -> None:
    """cross_origin_protection=True was silently ignored: the XSRF token and the websocket
    Origin check (the two tests above) are the protection."""
    app = web.make_app(None, None, None, False, None)  # type: ignore[arg-type]
    assert set(app.settings) - TORNADO_SETTINGS == set()


def test_passwords_over_72_bytes_are_refused_cleanly(tmp_path: Path,
                                                    pancakes: list[Pancake]) -> None:
    hash_file = make_hash_file(tmp_path, auth.hash_password(LONG_PASSWORD.encode()))
    daemon = start_pancake(pancakes, ["--login", str(hash_file)], tmp_path)
    too_long = post_login(daemon.port, LONG_PASSWORD + "x")  # 73 bytes, right first 72
    assert too_long.status == 401 and b"Wrong password" in too_long.body
    huge = post_login(daemon.port, "x" * 1_000_000)
    assert huge.status == 401 and b"Wrong password" in huge.body
    assert post_login(daemon.port, LONG_PASSWORD).status == 302
    stored = hash_file.read_bytes().strip()
    assert not auth.check_password(LONG_PASSWORD.encode() + b"x", stored)
    assert not auth.check_password("é".encode() * 37, stored)  # 37 characters, 74 bytes


# --- throttling and proxies ----------------------------------------------------------------


def test_wrong_password_is_refused_and_each_failure_is_slower(server: Pancake) -> None:
    first = post_login(server.port, "wrong one")
    assert first.status == 401 and b"Wrong password" in first.body
    assert first.cookie(handlers.SESSION_COOKIE) is None
    assert first.elapsed >= 1.0
    second = post_login(server.port, "wrong two")
    assert second.status == 401
    assert second.elapsed >= 2.0
    # The right password still works afterwards (and resets the count).
    assert post_login(server.port, PASSWORD).status == 302


def test_wrong_logins_waiting_their_turn_do_not_freeze_the_live_view(server: Pancake) -> None:
    cookie = session_of(post_login(server.port, PASSWORD))
    answers: list[int] = []
    token = xsrf(server.port)
    together = threading.Barrier(10)

    def wrong() -> None:
        together.wait()
        try:
            answers.append(post_login(server.port, "not it", token=token).status)
        except (OSError, http.client.HTTPException):
            pass  # the server stopped before this attempt's turn came: expected

    async def scenario() -> list[float]:
        client = await WsClient.connect(server.port, {"Cookie": cookie})
        await client.run_acking(1.0)
        threads = [threading.Thread(target=wrong, daemon=True) for _ in range(10)]
        for t in threads:
            t.start()
        start = len(client.frames)
        await client.run_acking(4.0)
        during = [f.at for f in client.frames[start - 1:]]  # from the last frame before them
        client.close()
        return during

    during = asyncio.run(scenario())
    # What a viewer would notice: the picture stopping while someone guesses passwords.
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) > 5, f"{len(during) - 1} frames in 4 s beside ten logins"
    assert max(gaps) < 2.0, f"the live view stalled for {max(gaps):.2f} s"
    # The attempts were real: the first was answered (wrong) during the window.
    assert answers and all(code == 401 for code in answers), answers


SPOOFED = {"X-Forwarded-For": "203.0.113.7", "X-Real-Ip": "203.0.113.7",
           "X-Forwarded-Proto": "https"}


def test_without_trust_proxy_a_client_cannot_name_its_own_address(server: Pancake) -> None:
    """Forwarded headers from a direct client are ignored: no dodging the throttle, no
    claiming HTTPS."""
    for n in range(2):  # two failures from 127.0.0.1: the next one waits 4 s
        assert login_with(server.port, "wrong", {"X-Forwarded-For": f"198.51.100.{n}"}
                          ).status == 401
    third = login_with(server.port, "wrong", SPOOFED)
    assert third.status == 401 and third.elapsed >= 4.0, third.elapsed
    ok = login_with(server.port, PASSWORD, SPOOFED)
    assert "secure" not in cookie_flags(ok.set_cookie_line(handlers.SESSION_COOKIE))
    server.wait_for("login from 127.0.0.1")
    assert "203.0.113.7" not in server.log()


def test_with_trust_proxy_the_forwarded_client_counts(
        tmp_path: Path, hash_file: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--login", str(hash_file), "--trust-proxy"], tmp_path)
    behind = {"X-Forwarded-For": "198.51.100.1", "X-Real-Ip": "198.51.100.1"}
    for _ in range(3):  # one client behind the proxy fails three times: its next waits 8 s
        assert login_with(daemon.port, "wrong", behind).status == 401
    # Another client behind the same proxy is not slowed down by the first one.
    other = login_with(daemon.port, "wrong", {"X-Forwarded-For": "198.51.100.2"})
    assert other.status == 401 and other.elapsed < 6.0, other.elapsed
    daemon.wait_for("login from 198.51.100.1")
    assert daemon.stop()[0] == 0


def test_with_trust_proxy_https_at_the_proxy_makes_every_cookie_secure(
        tmp_path: Path, hash_file: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--login", str(hash_file), "--trust-proxy"], tmp_path)
    behind = {"X-Forwarded-For": "198.51.100.1", "X-Real-Ip": "198.51.100.1"}
    page_status, page_headers, _ = request(daemon.port, "GET", "/login", "",
                                           {"X-Forwarded-Proto": "https"})
    xsrf_line = next(v for k, v in page_headers if k.lower() == "set-cookie")
    assert page_status == 200 and "secure" in cookie_flags(xsrf_line)
    ok = login_with(daemon.port, PASSWORD, {**behind, "X-Forwarded-Proto": "https"})
    assert ok.status == 302
    assert "secure" in cookie_flags(ok.set_cookie_line(handlers.SESSION_COOKIE))
    plain = login_with(daemon.port, PASSWORD, {"X-Forwarded-Proto": "http"})
    assert "secure" not in cookie_flags(plain.set_cookie_line(handlers.SESSION_COOKIE))
    assert daemon.stop()[0] == 0


def test_throttle_is_per_address() -> None:
    throttle = auth.LoginThrottle(base=0.2, maximum=1.0)

    async def scenario() -> tuple[bool, bool]:
        async def fail() -> bool:
            return False

        async def succeed() -> bool:
            return True

        slow = asyncio.create_task(throttle.run("client-a", fail))
        fast = asyncio.create_task(throttle.run("client-b", succeed))
        ok = await fast
        slow_done_when_fast_was = slow.done()  # b's answer did not wait for a's delay
        assert await slow is False
        return ok, slow_done_when_fast_was

    ok, slow_was_done = asyncio.run(scenario())
    assert ok is True and slow_was_done is False
    assert [throttle.delay(n) for n in range(6)] == [0.0, 0.2, 0.4, 0.8, 1.0, 1.0]


# --- the hash file, TLS, the network warning -----------------------------------------------


@pytest.mark.parametrize("content", [None, b"", b"\n", b"not a hash\n",
                                     b"$2b$12$" + b"a" * 52 + b"\n", b"\xff\xfe garbage"])
def test_unusable_hash_file_stops_startup(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "password.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(recorder_config.ConfigError) as err:
        auth.load_hash(path)
    assert "\n" not in str(err.value) and "password.txt" in str(err.value)


def _pancake_refuses(tmp_path: Path, *flags: str) -> str:
    """Run pancake.py with `flags`: it must exit 2 with one line, no traceback; the line."""
    proc = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", HOST, *flags],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_real_pancake_refuses_a_corrupt_hash_file(tmp_path: Path) -> None:
    bad = tmp_path / "password.txt"
    bad.write_text("sha512:deadbeef\n")
    assert "bcrypt" in _pancake_refuses(tmp_path, "--login", str(bad))


def test_real_pancake_refuses_an_unloadable_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    assert "cert.pem" in _pancake_refuses(tmp_path, "--certfile", str(cert),
                                          "--keyfile", str(key))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pancake test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_serves_https_and_wss_with_secure_cookies(
        tmp_path: Path, hash_file: Path, pancakes: list[Pancake]) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(certfile))
    flags = ["--login", str(hash_file), "--certfile", str(certfile), "--keyfile", str(keyfile)]
    daemon = start_pancake(pancakes, flags, tmp_path)
    conn = http.client.HTTPSConnection(HOST, daemon.port, timeout=30, context=ctx)
    conn.request("GET", "/login")
    r = conn.getresponse()
    page = r.read()
    xsrf_line = next(v for k, v in r.getheaders() if k.lower() == "set-cookie")
    assert r.status == 200 and "secure" in cookie_flags(xsrf_line)
    found = re.search(rb'name="_xsrf" value="([^"]+)"', page)
    assert found
    token = found.group(1).decode()
    conn.request("POST", "/login", body=urlencode({"_xsrf": token, "password": PASSWORD}),
                 headers={"Cookie": f"_xsrf={token}",
                          "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 302
    line = next(v for k, v in r.getheaders() if k.lower() == "set-cookie"
                and v.startswith(handlers.SESSION_COOKIE))
    assert "secure" in cookie_flags(line) and "httponly" in cookie_flags(line)
    cookie = line.split(";")[0]

    async def wss() -> None:
        client = await WsClient.connect(daemon.port, {"Cookie": cookie}, scheme="wss",
                                        ssl_ctx=ctx)
        assert await client.next_frame(10) is not None
        client.close()

    asyncio.run(wss())
    # Plain HTTP on the TLS port gets nothing useful.
    with pytest.raises((http.client.HTTPException, OSError)):
        get(daemon.port, "/status")


def test_hash_is_bcrypt_cost_12(hashed: bytes) -> None:
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(PASSWORD.encode(), hashed)
    assert auth.session_tag(hashed) != auth.session_tag(auth.hash_password(PASSWORD.encode()))


def test_the_open_page_warning_says_how_to_add_a_password(tmp_path: Path) -> None:
    hash_file = make_hash_file(tmp_path, b"$2b$12$" + b"a" * 53)
    for bind, warned in [("", True), ("0.0.0.0", True), ("192.168.1.20", True),
                         ("pi.local", True), ("127.0.0.1", False), ("::1", False),
                         ("localhost", False)]:
        line = web.open_to_network(recorder_config.parse(["--bind", bind]))
        assert (line is not None) == warned, bind
        if line is not None:
            assert "util/set_password.py password.txt" in line and "--login password.txt" in line
    assert web.open_to_network(recorder_config.parse(["--login", str(hash_file)])) is None


def test_real_pancake_on_loopback_does_not_warn(tmp_path: Path, pancakes: list[Pancake]) -> None:
    """(Tests stay on loopback, so the warning itself is checked above, on the config.)"""
    daemon = start_pancake(pancakes, [], tmp_path)
    assert daemon.stop()[0] == 0
    assert "no password" not in daemon.log()
