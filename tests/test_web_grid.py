"""Several cameras' page in Debian's chromium: the grid, one camera enlarged, only what is shown streamed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from conftest import Pancake, doc_screenshot, free_port, run_pancake, wait_page
from web_helpers import HOST, ROOT, WsClient, get, wait_port

ARTIFACTS = ROOT / "tests" / "artifacts"
MAX_FPS = 12



def start(pancakes: list[Pancake], tmp_path: Path) -> Pancake:
    """Three cameras: two testsrc, and a network camera nobody serves (offline all along)."""
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\nmax_stream_fps = {MAX_FPS}\n'
        f'[camera.front]\ntitle = "Front door"\nsource = "testsrc"\nfps = 15\n'
        f'resolution = [640, 480]\nrecord_continuous = "{rec}"\n'
        f'[camera.yard]\ntitle = "Yard"\nsource = "testsrc"\nfps = 15\nresolution = [640, 360]\n'
        f'[camera.garden]\ntitle = "Garden"\nsource = "http://127.0.0.1:{free_port()}/cam.ts"\n')
    p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    p.wait_for("live view on http", timeout=30)
    wait_port(p.port, 30)
    return p


def encodes(port: int) -> dict[str, int]:
    status, _, body = get(port, "/status")
    assert status == 200
    return {name: c["jpeg_encodes"] for name, c in json.loads(body)["cameras"].items()}


def get_health(port: int) -> dict[str, Any]:
    status, _, body = get(port, "/api/health")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result



def frames(page: Any, camera: str) -> int:
    return int(page.get_attribute(f'.tile[data-camera="{camera}"]', "data-frames") or 0)


def badge(page: Any, camera: str) -> str:
    return str(page.inner_text(f'.tile[data-camera="{camera}"] .badge'))


def test_grid_enlarge_and_back_stream_only_what_is_shown(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = start(pancakes, tmp_path)
    base = f"http://{HOST}:{p.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    # Three tiles, with their titles; the two cameras stream, the third says it is offline.
    assert page.locator(".tile").count() == 3
    titles = [page.inner_text(f'.tile[data-camera="{n}"] .title') for n in ("front", "yard", "garden")]
    assert titles == ["Front door", "Yard", "Garden"]
    wait_page(page, lambda: frames(page, "front") >= 3 and frames(page, "yard") >= 3)
    wait_page(page, lambda: badge(page, "front").startswith("LIVE")
              and badge(page, "yard").startswith("LIVE"))
    assert badge(page, "garden").startswith("OFFLINE")
    # 3 cameras: a 2x2 grid (two on the first row, the third below), inside the window.
    boxes = [page.locator(f'.tile[data-camera="{n}"]').bounding_box() for n in ("front", "yard", "garden")]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and boxes[2]["y"] > boxes[0]["y"] + 100, boxes
    assert all(b["x"] + b["width"] <= 1281 and b["y"] + b["height"] <= 801 for b in boxes), boxes
    page.wait_for_timeout(500)
    doc_screenshot(page, "cameras-grid.png")

    # The tile's menu: disarm the yard's detection (a POST with the page's XSRF token); the
    # menu is not the picture, so the grid stays.
    page.click('.tile[data-camera="yard"] .menu summary')
    page.click('.tile[data-camera="yard"] .armed')
    deadline = time.monotonic() + 10
    while get_health(p.port)["cameras"]["yard"]["armed"] is not False:
        assert time.monotonic() < deadline, "the switch did not reach the server"
        page.wait_for_timeout(100)
    assert page.url == base + "/"
    assert page.inner_text('.tile[data-camera="yard"] .menu-error') == ""
    page.click('.tile[data-camera="yard"] .menu summary')  # closed again

    # Click: that camera alone, large, in the URL; the other camera's JPEGs stop.
    page.click('.tile[data-camera="front"]')
    page.wait_for_url(base + "/?camera=front")
    assert page.locator('.tile[data-camera="yard"]').is_hidden()
    big = page.locator('.tile[data-camera="front"]').bounding_box()
    assert big["width"] > 1200 and big["height"] > 600, big
    page.wait_for_timeout(800)  # a frame in flight to the yard tile lands
    before = encodes(p.port)
    shown = frames(page, "front")
    page.wait_for_timeout(2000)
    after = encodes(p.port)
    assert after["yard"] - before["yard"] <= 1, (before, after)
    assert after["garden"] == 0
    # The front camera records, so its tile streams the recording's H.264: no JPEG at all.
    assert after["front"] == before["front"] == 0, (before, after)
    assert frames(page, "front") - shown >= 6
    page.screenshot(path=str(ARTIFACTS / "cameras-enlarged.png"))

    # Esc: the grid again, and the yard streams again.
    page.keyboard.press("Escape")
    page.wait_for_url(base + "/")
    yard = frames(page, "yard")
    wait_page(page, lambda: frames(page, "yard") >= yard + 3)
    assert page.locator('.tile[data-camera="yard"]').is_visible()

    # A bookmark of one camera opens it enlarged.
    page.goto(base + "/?camera=yard")
    wait_page(page, lambda: frames(page, "yard") >= 2)
    assert page.locator('.tile[data-camera="front"]').is_hidden()

    # A phone held upright: the grid still fits.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(base + "/")
    wait_page(page, lambda: frames(page, "front") >= 2 and frames(page, "yard") >= 2)
    boxes = [page.locator(f'.tile[data-camera="{n}"]').bounding_box() for n in ("front", "yard", "garden")]
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= 391 for b in boxes), boxes
    page.screenshot(path=str(ARTIFACTS / "cameras-grid-phone.png"))
    assert errors == [], errors
    context.close()

    # A grid tile is paced to its share, max(2, 12 / 3) = 4 a second; enlarged, the full 12.
    async def rate(query: str) -> float:
        from tornado.websocket import websocket_connect

        conn = await websocket_connect(f"ws://{HOST}:{p.port}/websocket?{query}")
        client = WsClient(conn)
        await client.run_acking(3.0)
        client.close()
        got = client.frames
        return (len(got) - 1) / (got[-1].at - got[0].at)

    def measure(query: str) -> float:
        # Playwright's loop runs in this thread: the websocket client gets a thread of its own.
        got: list[float] = []
        t = threading.Thread(target=lambda: got.append(asyncio.run(rate(query))), name="test-ws")
        t.start()
        t.join(30)
        assert got, f"no rate measured for {query}"
        return got[0]

    grid = measure("camera=yard&view=grid")
    assert grid <= 4 * 1.15, grid
    full = measure("camera=yard")
    assert full > grid * 1.5, (grid, full)
    assert p.stop()[0] == 0


def test_api_health_of_one_camera_needs_the_login_and_unknown_cameras_are_404(
        tmp_path: Path) -> None:
    from web_helpers import ServerThread, make_hash_file, post_login

    from raspberry_pancake.recorder.web import auth

    password = "a long enough password"
    hash_file = make_hash_file(tmp_path, auth.hash_password(password.encode()))
    with ServerThread(["--login", str(hash_file), "--state-dir", str(tmp_path / "state")],
                      fps=10) as server:
        status, _, body = get(server.port, "/api/health")
        assert status == 401 and json.loads(body) == {"error": "login required"}
        cookie = post_login(server.port, password).cookie("pancake_session")
        assert cookie
        headers = {"Cookie": f"pancake_session={cookie}"}
        deadline = time.monotonic() + 10
        while True:
            status, _, body = get(server.port, "/api/health", headers)
            h = json.loads(body)
            if h["cameras"]["cam"]["state"] == "live" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
        assert set(h) == {"status", "active_streams", "total_cameras", "last_detection", "cameras"}
        assert h["status"] == "healthy" and h["total_cameras"] == 1 and h["active_streams"] == 1
        cam = h["cameras"]["cam"]
        assert {"state", "fps", "age_ms", "recording", "detection"} <= set(cam)
        assert cam["state"] == "live" and 0 <= cam["age_ms"] < 2000, cam
        # One camera from flags: /status as before, no `cameras`.
        status, _, body = get(server.port, "/status", headers)
        assert status == 200 and "cameras" not in json.loads(body)
        status, _, _ = get(server.port, "/websocket?camera=nope", {
            **headers, "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
        assert status == 404


def test_a_tile_scrolled_out_of_view_costs_no_jpeg_until_it_is_scrolled_in(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    config = tmp_path / "cameras.toml"
    config.write_text(f'catalog = "{tmp_path / "pancake.db"}"\nmax_stream_fps = 10\n' + "".join(
        f'[camera.c{i}]\nsource = "testsrc"\nfps = 5\nresolution = [160, 120]\n'
        for i in range(5)))
    p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    p.wait_for("live view on http", timeout=30)
    wait_port(p.port, 30)
    context = browser.new_context(viewport={"width": 800, "height": 600})
    page = context.new_page()
    page.goto(f"http://{HOST}:{p.port}/")
    # Five cameras: a scrolling grid of two columns; the fifth tile is below the window.
    wait_page(page, lambda: all(frames(page, f"c{i}") >= 2 for i in range(4)))
    boxes = [page.locator(f'.tile[data-camera="c{i}"]').bounding_box() for i in range(5)]
    assert boxes[4]["y"] >= 600, boxes
    before = encodes(p.port)
    page.wait_for_timeout(2000)
    after = encodes(p.port)
    assert after["c4"] == before["c4"] == 0, (before, after)
    assert frames(page, "c4") == 0
    assert all(after[f"c{i}"] > before[f"c{i}"] for i in range(4)), (before, after)
    page.screenshot(path=str(ARTIFACTS / "cameras-five.png"))
    # Scrolled into view, it streams.
    page.locator('.tile[data-camera="c4"]').scroll_into_view_if_needed()
    wait_page(page, lambda: frames(page, "c4") >= 2)
    assert encodes(p.port)["c4"] >= 2
    context.close()
    assert p.stop()[0] == 0
