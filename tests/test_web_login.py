"""--login: sessions, XSRF, websocket origin, long passwords, throttling, TLS — on a real server."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import itertools
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpclient import HTTPClientError
from web_helpers import (
    HOST,
    ServerThread,
    WsClient,
    get,
    make_hash_file,
    post_login,
    xsrf,
)

from raspberry_pancake.recorder.web import app as web
from raspberry_pancake.recorder.web import auth, handlers

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
def server(hash_file: Path) -> Iterator[ServerThread]:
    with ServerThread(["--login", str(hash_file)], fps=30) as srv:
        yield srv


def session_of(result: object) -> str:
    cookie = result.cookie(handlers.SESSION_COOKIE)  # type: ignore[attr-defined]
    assert cookie, "no session cookie"
    return f"{handlers.SESSION_COOKIE}={cookie}"


def test_every_route_needs_a_session(server: ServerThread) -> None:
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


def test_right_password_opens_a_session_with_safe_cookie_flags(server: ServerThread) -> None:
    result = post_login(server.port, PASSWORD, next_="/?cam=1")
    assert result.status == 302
    assert dict((k.lower(), v) for k, v in result.headers)["location"] == "/?cam=1"
    line = result.set_cookie_line(handlers.SESSION_COOKIE)
    flags = [part.strip().lower() for part in line.split(";")]
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert any(f.startswith("expires=") for f in flags), "the session must expire"
    assert "secure" not in flags  # plain HTTP here; the TLS test checks Secure
    cookie = session_of(result)
    status, _, page = get(server.port, "/", {"Cookie": cookie})
    assert status == 200 and b'id="frame"' in page and b"Log out" in page
    status, _, body = get(server.port, "/status", {"Cookie": cookie})
    assert status == 200 and b"jpeg_encodes" in body

    async def websocket() -> None:
        client = await WsClient.connect(server.port, {"Cookie": cookie})
        assert await client.next_frame(5) is not None
        client.close()

    asyncio.run(websocket())


def test_open_redirects_are_not_followed(server: ServerThread) -> None:
    result = post_login(server.port, PASSWORD, next_="//evil.example/")
    assert result.status == 302
    assert dict((k.lower(), v) for k, v in result.headers)["location"] == "/"


def test_logout_ends_the_session(server: ServerThread) -> None:
    cookie = session_of(post_login(server.port, PASSWORD))
    token = xsrf(server.port)
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    conn.request("POST", "/logout", body=f"_xsrf={token}",
                 headers={"Cookie": f"{cookie}; _xsrf={token}",
                          "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 302 and r.getheader("Location") == "/login"
    cleared = [v for k, v in r.getheaders() if k.lower() == "set-cookie"
               and v.startswith(handlers.SESSION_COOKIE + "=")]
    assert cleared and cleared[0].startswith(f'{handlers.SESSION_COOKIE}=""')
    # Even a copy of the old cookie is dead now.
    status, _, _ = get(server.port, "/", {"Cookie": cookie})
    assert status == 302
    status, _, _ = get(server.port, "/status", {"Cookie": cookie})
    assert status == 401


def test_wrong_password_is_refused_and_each_failure_is_slower(server: ServerThread) -> None:
    first = post_login(server.port, "wrong one")
    assert first.status == 401 and b"Wrong password" in first.body
    assert first.cookie(handlers.SESSION_COOKIE) is None
    assert first.elapsed >= 1.0
    second = post_login(server.port, "wrong two")
    assert second.status == 401
    assert second.elapsed >= 2.0
    # The right password still works afterwards (and resets the count).
    assert post_login(server.port, PASSWORD).status == 302


def test_post_without_xsrf_is_refused(server: ServerThread) -> None:
    result = post_login(server.port, PASSWORD, token=None)
    assert result.status == 403
    assert result.cookie(handlers.SESSION_COOKIE) is None
    # A token in the form that does not match the cookie is refused too.
    token = xsrf(server.port)
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    conn.request("POST", "/login", body=f"_xsrf={token}&password={PASSWORD}",
                 headers={"Cookie": "_xsrf=2|00000000|00000000000000000000000000000000|1",
                          "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 403


def test_websocket_with_a_session_but_a_foreign_origin_is_refused(server: ServerThread) -> None:
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
        assert await same.next_frame(5) is not None
        same.close()

    asyncio.run(scenario())


def test_passwords_over_72_bytes_are_refused_cleanly(tmp_path: Path) -> None:
    hash_file = make_hash_file(tmp_path, auth.hash_password(LONG_PASSWORD.encode()))
    with ServerThread(["--login", str(hash_file)], camera=False) as srv:
        too_long = post_login(srv.port, LONG_PASSWORD + "x")  # 73 bytes, right first 72
        assert too_long.status == 401 and b"Wrong password" in too_long.body
        huge = post_login(srv.port, "x" * 1_000_000)
        assert huge.status == 401 and b"Wrong password" in huge.body
        assert post_login(srv.port, LONG_PASSWORD).status == 302
    stored = hash_file.read_bytes().strip()
    assert not auth.check_password(LONG_PASSWORD.encode() + b"x", stored)
    assert not auth.check_password("é".encode() * 37, stored)  # 37 characters, 74 bytes


def test_parallel_wrong_logins_do_not_stall_the_live_view(server: ServerThread) -> None:
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

    async def scenario() -> tuple[list[float], list[float]]:
        client = await WsClient.connect(server.port, {"Cookie": cookie})
        await client.run_acking(1.5)
        before = [f.at for f in client.frames]
        threads = [threading.Thread(target=wrong, daemon=True) for _ in range(10)]
        for t in threads:
            t.start()
        start = len(client.frames)
        await client.run_acking(2.5)
        during = [f.at for f in client.frames[start - 1:]]  # from the last frame before them
        client.close()
        return before, during

    before, during = asyncio.run(scenario())
    assert len(during) > 10, f"{len(during) - 1} frames in 2.5 s beside ten logins"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    rate_before = (len(before) - 1) / (before[-1] - before[0])
    rate_during = (len(during) - 1) / (during[-1] - during[0])
    assert max(gaps) < 0.5, f"the live view stalled for {max(gaps):.2f} s"
    assert rate_during >= 0.8 * rate_before, (rate_before, rate_during)
    # The attempts were real: the first was answered (wrong) during the window.
    assert answers and all(code == 401 for code in answers), answers


def test_throttle_is_per_address() -> None:
    throttle = auth.LoginThrottle(base=0.2, maximum=1.0)

    async def scenario() -> tuple[float, float]:
        async def fail() -> bool:
            return False

        async def succeed() -> bool:
            return True

        t = time.monotonic()
        slow = asyncio.create_task(throttle.run("client-a", fail))
        fast = asyncio.create_task(throttle.run("client-b", succeed))
        assert await fast is True
        fast_took = time.monotonic() - t
        assert await slow is False
        return fast_took, time.monotonic() - t

    fast_took, slow_took = asyncio.run(scenario())
    assert slow_took >= 0.2
    assert fast_took < slow_took
    assert [throttle.delay(n) for n in range(6)] == [0.0, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize("content", [None, b"", b"\n", b"not a hash\n",
                                     b"$2b$12$" + b"a" * 52 + b"\n", b"\xff\xfe garbage"])
def test_unusable_hash_file_stops_startup(tmp_path: Path, content: bytes | None) -> None:
    from raspberry_pancake.recorder.config import ConfigError

    path = tmp_path / "password.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        auth.load_hash(path)
    assert "\n" not in str(err.value) and "password.txt" in str(err.value)


def test_real_pancake_refuses_a_corrupt_hash_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    from web_helpers import ROOT, free_port

    bad = tmp_path / "password.txt"
    bad.write_text("sha512:deadbeef\n")
    proc = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", "127.0.0.1",
                           "--login", str(bad)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bcrypt" in lines[0] and "Traceback" not in proc.stderr


def test_cookie_secret_is_private_persistent_and_survives_a_restart(hash_file: Path) -> None:
    with ServerThread(["--login", str(hash_file)], camera=False) as srv:
        cookie = session_of(post_login(srv.port, PASSWORD))
    secret_path = hash_file.with_name(hash_file.name + ".secret")
    assert secret_path.stat().st_mode & 0o777 == 0o600
    secret = secret_path.read_bytes().strip()
    assert len(bytes.fromhex(secret.decode())) >= 32
    with ServerThread(["--login", str(hash_file)], camera=False) as srv:
        status, _, _ = get(srv.port, "/", {"Cookie": cookie})
        assert status == 200, "a restart logged the session out"
    assert secret_path.read_bytes().strip() == secret
    # A new password ends every session made with the old one.
    hash_file.write_bytes(auth.hash_password(b"another one") + b"\n")
    with ServerThread(["--login", str(hash_file)], camera=False) as srv:
        status, _, _ = get(srv.port, "/", {"Cookie": cookie})
        assert status == 302


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


def test_tls_serves_https_and_wss_with_secure_cookies(tmp_path: Path, hash_file: Path) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(certfile))
    flags = ["--login", str(hash_file), "--certfile", str(certfile), "--keyfile", str(keyfile)]
    with ServerThread(flags, fps=30) as srv:
        conn = http.client.HTTPSConnection(HOST, srv.port, timeout=10, context=ctx)
        conn.request("GET", "/login")
        r = conn.getresponse()
        page = r.read()
        xsrf_line = next(v for k, v in r.getheaders() if k.lower() == "set-cookie")
        assert r.status == 200 and "secure" in xsrf_line.lower()
        import re

        token = re.search(rb'name="_xsrf" value="([^"]+)"', page).group(1).decode()  # type: ignore[union-attr]
        conn.request("POST", "/login", body=f"_xsrf={token}&password={PASSWORD.replace(' ', '+')}",
                     headers={"Cookie": f"_xsrf={token}",
                              "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 302
        line = next(v for k, v in r.getheaders() if k.lower() == "set-cookie"
                    and v.startswith(handlers.SESSION_COOKIE))
        flags_set = [p.strip().lower() for p in line.split(";")]
        assert "secure" in flags_set and "httponly" in flags_set
        cookie = line.split(";")[0]

        async def wss() -> None:
            client = await WsClient.connect(srv.port, {"Cookie": cookie}, scheme="wss",
                                            ssl_ctx=ctx)
            assert await client.next_frame(5) is not None
            client.close()

        asyncio.run(wss())
        # Plain HTTP on the TLS port gets nothing useful.
        with pytest.raises((http.client.HTTPException, OSError)):
            get(srv.port, "/status")


def test_unloadable_certificate_stops_startup(tmp_path: Path) -> None:
    from raspberry_pancake.recorder import config as recorder_config

    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    cfg = recorder_config.parse(["--certfile", str(cert), "--keyfile", str(key)])
    with pytest.raises(recorder_config.ConfigError) as err:
        web.prepare(cfg)
    assert "\n" not in str(err.value) and "cert.pem" in str(err.value)


def test_hash_is_bcrypt_cost_12(hashed: bytes) -> None:
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(PASSWORD.encode(), hashed)
    assert auth.session_tag(hashed) != auth.session_tag(auth.hash_password(PASSWORD.encode()))
