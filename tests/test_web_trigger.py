"""POST /api/trigger on the real pancake.py: the token, the session, loopback, the edge and the catalog."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import Listener, Pancake
from web_helpers import HOST, ROOT, get, make_hash_file, post_login, start_pancake, xsrf

from raspberry_pancake.recorder import camconfig
from raspberry_pancake.recorder.config import ConfigError, parse
from raspberry_pancake.recorder.web import auth
from raspberry_pancake.shared.catalog import Catalog

TOKEN = "doorbell-7f3a9c2e41b8d6"
PASSWORD = "pancakes for breakfast"
BASE = ["--fps", "10", "--resolution", "160", "120"]
# What a reverse proxy on this machine adds: the request is someone else's, not loopback's.
RELAYED = {"X-Forwarded-For": "192.0.2.7"}


def post(port: int, fields: dict[str, str], headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        conn.request("POST", "/api/trigger", body=body if body is not None else urlencode(fields),
                     headers=sent)
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else {}
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **RELAYED}


def edges(listener: Listener) -> list[dict[str, Any]]:
    return [m for m in listener.events() if "detection" in m and "h264" not in m]


def wait_edges(listener: Listener, n: int, p: Pancake, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(edges(listener)) < n:
        assert time.monotonic() < deadline, (listener.events(), p.log())
        time.sleep(0.05)
    return edges(listener)


def token_file(tmp_path: Path, token: str = TOKEN) -> Path:
    path = tmp_path / "trigger.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def test_a_token_starts_a_labelled_detection_that_another_trigger_extends(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    state = tmp_path / "st"
    p = start_pancake(pancakes, [*BASE, "--trigger-token", f"@{token_file(tmp_path)}",
                                 "--state-dir", str(state), "--emit", listener.name], tmp_path)
    # Refused: no token, a wrong one, another scheme, a token sent to a camera that does not
    # exist is still checked first. None of them starts anything.
    assert post(p.port, {"label": "doorbell"}, RELAYED)[0] == 401
    status, answer = post(p.port, {"label": "doorbell"}, bearer(TOKEN[:-1] + "x"))
    assert (status, answer) == (401, {"error": "wrong token"})
    assert post(p.port, {"label": "doorbell"},
                {"Authorization": f"Basic {TOKEN}", **RELAYED})[0] == 401
    # Bad fields: 400 with what is wrong, nothing started.
    for fields in ({}, {"label": ""}, {"label": "x" * 33}, {"label": "door\nbell"},
                   {"label": "doorbell", "seconds": "0"}, {"label": "doorbell", "seconds": "abc"},
                   {"label": "doorbell", "seconds": "nan"},
                   {"label": "doorbell", "seconds": "3601"}):
        status, answer = post(p.port, fields, bearer(TOKEN))
        assert status == 400, (fields, status, answer)
        assert "label" in answer["error"] or "seconds" in answer["error"]
    for body in (b"[1]", b"{", json.dumps({"label": "doorbell", "seconds": True}).encode()):
        status, answer = post(p.port, {}, {"Content-Type": "application/json", **bearer(TOKEN)},
                              body=body)
        assert status == 400 and "a JSON object" in answer["error"], body
    assert post(p.port, {"label": "doorbell", "camera": "nope"}, bearer(TOKEN))[0] == 404
    time.sleep(0.5)
    assert edges(listener) == []

    sent = time.time()
    status, answer = post(p.port, {"label": "doorbell", "seconds": "1.5"}, bearer(TOKEN))
    assert (status, answer) == (200, {"camera": "cam", "label": "doorbell", "seconds": 1.5})
    rise = wait_edges(listener, 1, p)[0]
    assert rise["detection"] is True and rise["labels"] == ["doorbell"]
    # At once: well before the first trigger's 1.5 s would be over.
    assert float(rise["time"]) - sent < 1.0
    # A second trigger (JSON this time) while it is on: it now lasts until 3 s after this one.
    again = time.time()
    status, _ = post(p.port, {}, {"Content-Type": "application/json", **bearer(TOKEN)},
                     body=json.dumps({"label": "doorbell", "seconds": 3}).encode())
    assert status == 200
    fall = wait_edges(listener, 2, p)[1]
    assert fall["detection"] is False
    assert float(fall["time"]) - again >= 2.9, (again, fall)
    assert len(edges(listener)) == 2
    rc, _ = p.stop()
    assert rc == 0, p.log()
    log = p.log()
    assert TOKEN not in log and TOKEN[:-1] not in log
    assert "POST /api/trigger refused (no token) from 127.0.0.1" in log  # then rate-limited
    with Catalog.open(state / "pancake.db") as c:
        events = c.events("cam", 0, 1e12)
    assert [e.labels for e in events] == [("doorbell",)]
    assert events[0].fall is not None and events[0].fall - events[0].rise >= 2.9


def test_the_pages_session_needs_its_xsrf_token_and_a_token_still_works(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    hashed = make_hash_file(tmp_path, auth.hash_password(PASSWORD.encode()))
    p = start_pancake(pancakes, [*BASE, "--login", str(hashed), "--emit", listener.name,
                                 "--trigger-token", "env:PANCAKE_TRIGGER"], tmp_path,
                      env={"PANCAKE_TRIGGER": TOKEN})
    # No session, no token: 401, even from loopback (with --login, loopback is nobody special).
    assert post(p.port, {"label": "bell"})[0] == 401
    login = post_login(p.port, PASSWORD)
    session = login.cookie("pancake_session")
    assert session is not None
    token = xsrf(p.port)
    cookie = f"pancake_session={session}; _xsrf={token}"
    status, answer = post(p.port, {"label": "bell"}, {"Cookie": cookie})
    assert status == 403 and "XSRF" in answer["error"]
    time.sleep(0.3)
    assert edges(listener) == []
    status, _ = post(p.port, {"label": "bell", "seconds": "1"},
                     {"Cookie": cookie, "X-XSRFToken": token})
    assert status == 200
    rise = wait_edges(listener, 2, p)[0]
    assert rise["labels"] == ["bell"]
    # The token (from the environment) works beside the login, from anywhere.
    assert post(p.port, {"label": "vibration", "seconds": "1"}, bearer(TOKEN))[0] == 200
    assert wait_edges(listener, 3, p)[2]["labels"] == ["vibration"]
    rc, _ = p.stop()
    assert rc == 0, p.log()


def test_without_login_or_token_only_this_machine_may_trigger(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    p = start_pancake(pancakes, [*BASE, "--emit", listener.name], tmp_path)
    status, answer = post(p.port, {"label": "bell"}, RELAYED)
    assert status == 403 and "this machine only" in answer["error"]
    # Any bearer token is wrong when none is set.
    assert post(p.port, {"label": "bell"}, bearer(TOKEN))[0] == 401
    # A browser (it sends an Origin) needs the page's XSRF token even here.
    assert post(p.port, {"label": "bell"}, {"Origin": f"http://{HOST}:{p.port}"})[0] == 403
    time.sleep(0.3)
    assert edges(listener) == []
    # A script on this machine (curl: no Origin, no cookie).
    assert post(p.port, {"label": "bell", "seconds": "1"})[0] == 200
    assert wait_edges(listener, 2, p)[0]["labels"] == ["bell"]
    # Disarmed (the page's switch): a trigger is refused, and says why.
    status, _, page = get(p.port, "/")
    m = re.search(rb'name="xsrf" content="([^"]+)"', page)
    assert status == 200 and m
    token = m.group(1).decode()
    conn = http.client.HTTPConnection(HOST, p.port, timeout=10)
    conn.request("POST", "/api/cameras/cam", body=json.dumps({"armed": False}), headers={
        "Content-Type": "application/json", "Cookie": f"_xsrf={token}", "X-XSRFToken": token})
    assert conn.getresponse().status == 200
    conn.close()
    status, answer = post(p.port, {"label": "bell"})
    assert status == 409 and "disarmed" in answer["error"]
    time.sleep(0.3)
    assert len(edges(listener)) == 2
    rc, _ = p.stop()
    assert rc == 0, p.log()


@pytest.mark.parametrize(("text", "line"), [
    (TOKEN, "give @/path/to/file or env:VARNAME, not the token itself"),
    ("env:PANCAKE_NO_SUCH_VARIABLE", "environment variable PANCAKE_NO_SUCH_VARIABLE is not set"),
    ("@/nonexistent/trigger.token", "cannot read secret file"),
])
def test_a_token_on_the_command_line_or_missing_is_refused(text: str, line: str) -> None:
    with pytest.raises(ConfigError, match=r"^--trigger-token: ") as caught:
        parse(["--trigger-token", text])
    assert line in str(caught.value) and TOKEN not in str(caught.value)


def test_a_short_or_blank_token_is_refused_and_the_real_command_line_says_so(
        tmp_path: Path) -> None:
    short = token_file(tmp_path, "short")
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        parse(["--trigger-token", f"@{short}"])
    spaced = token_file(tmp_path, "has a space in it, oh no")
    with pytest.raises(ConfigError, match="printable ASCII without spaces"):
        parse(["--trigger-token", f"@{spaced}"])
    r = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--trigger-token", TOKEN],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and TOKEN not in r.stderr, r.stderr


def test_the_config_file_takes_the_token_as_a_top_level_key(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text(f'trigger_token = "@{token_file(tmp_path)}"\n'
                    '[camera.front]\nsource = "testsrc"\n[camera.back]\nsource = "testsrc"\n')
    front, back = camconfig.load(str(path), [])
    assert front.trigger_token is not None and front.trigger_token.reveal() == TOKEN
    assert back.trigger_token == front.trigger_token
    assert TOKEN not in repr(front)
