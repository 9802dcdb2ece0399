"""One pancake, three cameras (--config): a network camera that is down at start, comes, goes and
comes back costs the two others nothing; health per camera; every message names its camera."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from conftest import Listener, Pancake, free_port, run_pancake
from recordings import decode, read_pts
from streams import StreamServer
from web_helpers import HOST, get, wait_port

from raspberry_pancake.recorder.cameras import CameraRun, Cameras
from raspberry_pancake.recorder.config import parse
from raspberry_pancake.recorder.frames import Frame
from raspberry_pancake.recorder.sources.choose import open_camera, resolve

FPS = 10
HEALTH_KEYS = {"status", "active_streams", "total_cameras", "last_detection", "cameras"}
CAMERA_KEYS = {"state", "fps", "age_ms", "recording", "detection"}


def health(port: int) -> dict[str, Any]:
    status, _, body = get(port, "/api/health")
    assert status == 200, (status, body[:200])
    result: dict[str, Any] = json.loads(body)
    return result


def wait_state(port: int, camera: str, state: str, timeout: float, p: Pancake) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        h = health(port)
        if h["cameras"][camera]["state"] == state:
            return h
        if time.monotonic() > deadline:
            raise AssertionError(f"{camera} not {state} within {timeout} s: {h}\n{p.log()}")
        time.sleep(0.25)


def test_three_cameras_one_down_at_start_then_up_then_down_then_back(
        tmp_path: Path, pancakes: list[Pancake], listener: Listener) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    ts_port = free_port()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\n'
        f'emit = "{listener.name}"\n'
        f'[camera.front]\nsource = "testsrc"\nfps = {FPS}\ntitle = "Front door"\n'
        f'record_continuous = "{rec}"\n'
        f'[camera.back]\nsource = "testsrc"\nfps = {FPS}.0\nrecord_continuous = "{rec}"\n'
        f'[camera.garden]\nsource = "http://127.0.0.1:{ts_port}/live.ts"\nfps = 12\n'
        f'record_continuous = "{rec}"\n')
    p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    server: StreamServer | None = None
    try:
        p.wait_for("live view on http", timeout=30)
        wait_port(p.port, 30)
        # Down at start: the process runs, the two others record, garden is offline.
        h = wait_state(p.port, "front", "live", 20, p)
        assert set(h) == HEALTH_KEYS and h["total_cameras"] == 3
        assert all(CAMERA_KEYS <= set(c) for c in h["cameras"].values()), h
        assert h["cameras"]["garden"]["state"] == "offline" and h["status"] == "degraded"
        assert h["cameras"]["garden"]["age_ms"] is None
        assert h["last_detection"] is None
        assert h["cameras"]["front"]["title"] == "Front door"
        p.wait_for("camera garden: source url:http://127.0.0.1", timeout=10)
        # The camera comes: opened by the retries, then live.
        server = StreamServer(ts_port, 12)
        h = wait_state(p.port, "garden", "live", 30, p)
        assert h["status"] == "healthy" and h["active_streams"] == 3, h
        time.sleep(2)
        # It goes away (a reboot): offline after 5 s without frames, the others go on.
        server.stop()
        server = None
        h = wait_state(p.port, "garden", "offline", 20, p)
        assert h["cameras"]["front"]["state"] == "live" and h["cameras"]["back"]["state"] == "live"
        assert h["active_streams"] == 2
        server = StreamServer(ts_port, 12)
        wait_state(p.port, "garden", "live", 30, p)
        status, _, body = get(p.port, "/status")
        assert status == 200
        s = json.loads(body)
        assert {"source", "jpeg_encodes", "viewers", "recording"} <= set(s)
        assert set(s["cameras"]) == {"front", "back", "garden"}
        rc, _ = p.stop()
    finally:
        if server is not None:
            server.stop()
    log = p.log()
    assert rc == 0, log
    assert "Traceback" not in log, log
    ran = time.time() - p.started
    # Both testsrc cameras recorded the whole time, with no gap: the garden's outages never
    # held them up.
    for name in ("front", "back"):
        segs = sorted((rec / name).glob("*.h264"))
        assert segs, f"{name} recorded nothing\n{log}"
        pts = [read_pts(s.with_suffix(".pts")) for s in segs]
        recs = [decode(s, 0) for s in segs]
        assert all(r.first_is_key and r.frames == len(r.pts_ms) for r in recs), name
        gaps = [b - a for ms in pts for a, b in itertools.pairwise(ms)]
        assert max(gaps) < 1000, f"{name}: a {max(gaps):.0f} ms gap in its recording"
        recorded = sum(ms[-1] / 1000 for ms in pts)
        assert recorded > ran - 12, f"{name} recorded {recorded:.1f} s of a {ran:.1f} s run"
    assert sorted((rec / "garden").glob("*.h264")), "garden recorded nothing while up"
    # Every message names its camera; each camera's segment is announced with its name.
    time.sleep(0.3)
    events = listener.events()
    assert events and all(e.get("camera") in {"front", "back", "garden"} for e in events), events
    for name in ("front", "back", "garden"):
        assert any(e.get("camera") == name and str(e.get("h264", "")).startswith(str(rec / name))
                   for e in events), (name, events)
    # One catalog for all three, each recording under its camera.
    with sqlite3.connect(tmp_path / "pancake.db") as db:
        cams = {row[0] for row in db.execute("SELECT DISTINCT camera FROM recordings")}
    assert cams == {"front", "back", "garden"}, cams


def test_health_messages_after_a_minute_offline_and_on_return(tmp_path: Path,
                                                             listener: Listener) -> None:
    """The 60 s rule without waiting a minute: the health thread's check, given the time."""
    cfg = parse(["--source", "testsrc", "--name", "gate", "--emit", listener.name,
                 "--catalog", str(tmp_path / "pancake.db")])
    camera = open_camera(resolve(cfg.source), cfg)
    run = CameraRun(cfg, camera, opened=False)
    cameras = Cameras([run])
    try:
        start = time.monotonic()
        cameras._check(run, start + 30)
        assert listener.events() == []
        cameras._check(run, start + 61)
        cameras._check(run, start + 62)  # said once
        deadline = time.monotonic() + 5
        while len(listener.events()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        run.hub.publish(Frame(1, None, time.monotonic(), time.time()))  # type: ignore[arg-type]
        cameras._check(run, time.monotonic())
        cameras._check(run, time.monotonic())
        deadline = time.monotonic() + 5
        while len(listener.events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        got = [(e.get("health"), e.get("camera")) for e in listener.events()]
        assert got == [("offline", "gate"), ("live", "gate")], got
    finally:
        run.stop()


def test_a_camera_switch_needs_the_session_and_the_xsrf_token_and_survives_a_restart(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\n'
        f'[camera.a]\nsource = "testsrc"\nfps = 5\nrecord_continuous = "{rec}"\n'
        f'[camera.b]\nsource = "testsrc"\nfps = 5\n')
    import http.client
    import re

    def start() -> Pancake:
        p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
        p.wait_for("live view on http", timeout=30)
        wait_port(p.port, 30)
        return p

    def post(port: int, path: str, body: object, token: str | None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["X-XSRFToken"] = token
            headers["Cookie"] = f"_xsrf={token}"
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()

    p = start()
    status, _, page = get(p.port, "/")
    m = re.search(rb'name="xsrf" content="([^"]+)"', page)
    assert status == 200 and m, page[:300]
    token = m.group(1).decode()
    assert b'data-camera="a"' in page and b'data-camera="b"' in page
    assert post(p.port, "/api/cameras/a", {"armed": False}, None)[0] == 403
    assert post(p.port, "/api/cameras/a", {"armed": "no"}, token)[0] == 400
    assert post(p.port, "/api/cameras/zz", {"armed": False}, token)[0] == 404
    assert post(p.port, "/api/cameras/b", {"continuous": True}, token)[0] == 409  # no directory
    status, entry = post(p.port, "/api/cameras/a", {"armed": False, "continuous": False}, token)
    assert status == 200 and entry["armed"] is False and entry["continuous"] is False, entry
    h = health(p.port)
    assert h["cameras"]["a"]["armed"] is False and h["cameras"]["b"]["armed"] is True
    assert p.stop()[0] == 0
    # Kept in the catalog: the next start shows it again.
    p = start()
    deadline = time.monotonic() + 15
    while health(p.port)["cameras"]["a"]["armed"] is not False:
        assert time.monotonic() < deadline, health(p.port)
        time.sleep(0.2)
    assert health(p.port)["cameras"]["a"]["continuous"] is False
    assert p.stop()[0] == 0


def test_messages_carry_the_camera_under_config_or_a_name_and_never_otherwise(
        listener: Listener) -> None:
    from raspberry_pancake.recorder.emitter import Emitter
    from raspberry_pancake.shared.events import Event

    for multi, name in ((False, "cam"), (False, "front"), (True, "cam"), (True, "back")):
        emitter = Emitter(listener.name, Emitter.camera_of(multi, name))
        assert emitter.emit(Event(detection=True, time=round(time.time(), 3)))
        emitter.close()
    deadline = time.monotonic() + 5
    while len(listener.events()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.get("camera") for e in listener.events()] == [None, "front", "cam", "back"]
