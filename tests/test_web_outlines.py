"""The live page's motion outlines: the real pancake.py on real footage, a websocket client, chromium."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ROOT, Pancake, doc_screenshot, wait_page
from web_helpers import HOST, LISTENING, WsClient, get, wait_port

from raspberry_pancake.recorder.web import handlers

PEOPLE = ROOT / "tests" / "data" / "people.mp4"  # 4 s empty square, 8 s people walking, 4 s empty
LOOP = 16.0  # the clip's length: pancake plays it again and again
ARTIFACTS = ROOT / "tests" / "artifacts"
# Analyses at 10 a second, so that the page's cap (live.OUTLINES_EVERY) is what limits them.
INTERVAL = 0.1
# The pixels drawn on a page's outline canvas, and their bounding box ([] when none).
DRAWN = """(sel) => {
  const c = document.querySelector(sel + ' canvas.outlines');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0, x0 = c.width, y0 = c.height, x1 = -1, y1 = -1;
  for (let i = 3; i < d.length; i += 4) {
    if (!d[i]) continue;
    n++;
    const p = (i - 3) / 4, x = p % c.width, y = Math.floor(p / c.width);
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
  }
  const r = window.devicePixelRatio || 1;
  return [n, x0 / r, y0 / r, (x1 + 1) / r, (y1 + 1) / r];
}"""
# The picture's own rectangle (320 x 240) inside its element (object-fit: contain), in CSS
# pixels of the overlay canvas: where every outline must fall.
PICTURE = """(sel) => {
  const root = document.querySelector(sel);
  const el = root.dataset.path === 'jpeg' ? root.querySelector('img.frame')
                                          : root.querySelector('.frame.h264');
  const w = 320, h = 240;
  const r = el.getBoundingClientRect(), o = root.querySelector('canvas.outlines').getBoundingClientRect();
  const s = Math.min(r.width / w, r.height / h);
  return [r.left - o.left + (r.width - w * s) / 2, r.top - o.top + (r.height - h * s) / 2, w * s, h * s];
}"""


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pancake, Pancake]]:
    """Two pancakes for the file, started together: one camera (people.mp4 on a loop, motion
    detection, H.264 since it records), and two under --config (the same, and a testsrc
    without motion detection) for the grid's tiles."""
    cwd = tmp_path_factory.mktemp("outlines")
    rec = cwd / "rec"
    rec.mkdir()
    config = cwd / "cameras.toml"
    config.write_text(
        f'[camera.square]\nsource = "{PEOPLE}"\nfps = 10\nresolution = [320, 240]\n'
        f'detect = "motion"\ndetect_interval = {INTERVAL}\nrecord_continuous = "{rec}"\n'
        f'[camera.yard]\nsource = "testsrc"\nfps = 10\nresolution = [320, 240]\n')
    started = [Pancake(["--source", str(PEOPLE), "--fps", "10", "--resolution", "320", "240",
                        "--detect", "motion", "--detect-interval", str(INTERVAL),
                        "--record-continuous", str(rec)], cwd),
               Pancake(["--config", str(config)], cwd)]
    try:
        for p in started:
            p.wait_for(LISTENING, 30)
            wait_port(p.port, 30)
        yield started[0], started[1]
    finally:
        for p in started:
            if p.proc.poll() is None:
                p.stop()


@pytest.fixture
def daemon(both: tuple[Pancake, Pancake]) -> Pancake:
    return both[0]


async def _watch(client: WsClient, seconds: float,
                 done: Callable[[list[dict[str, Any]]], bool] | None = None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (done is not None and done(client.statuses)):
        if await client.next_frame(max(0.05, end - time.monotonic())) is not None:
            await client.ack()


def _walked_then_still(statuses: list[dict[str, Any]]) -> bool:
    """Boxes above the bar (people walking), and after them empty boxes for a second or more
    (the square empty again)."""
    seen = [s for s in statuses if "boxes" in s]
    walked = next((i for i, s in enumerate(seen) if s["boxes"] and s["above"]), None)
    if walked is None:
        return False
    still = [s["boxes_seq"] for s in seen[walked:] if s["boxes"] == []]
    return len(still) >= 2 and still[-1] - still[0] >= 10  # 10 frames: a second at 10 fps


def test_a_viewer_that_asks_gets_boxes_while_people_walk_and_none_when_still(
        daemon: Pancake) -> None:
    async def scenario() -> tuple[WsClient, WsClient, float]:
        asking = await WsClient.connect(daemon.port)
        await asking.conn.write_message(handlers.OUTLINES_ON)
        other = await WsClient.connect(daemon.port)
        started = time.monotonic()
        # Up to two passes of the clip: people walk in each, and the square empties after.
        await asyncio.gather(_watch(asking, 2 * LOOP + 6, _walked_then_still),
                             _watch(other, 2 * LOOP + 6, lambda _s: _walked_then_still(
                                 asking.statuses)))
        took = time.monotonic() - started
        asking.close()
        other.close()
        return asking, other, took

    asking, other, took = asyncio.run(scenario())
    assert _walked_then_still(asking.statuses), (asking.statuses[-5:], daemon.log()[-2000:])
    outlined = [s for s in asking.statuses if "boxes" in s]
    for s in outlined:
        assert isinstance(s["score"], float) and 0 <= s["score"] <= 1
        assert isinstance(s["above"], bool) and s["bar"] > 0
        for x, y, w, h in s["boxes"]:
            assert 0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1
        if s["above"]:
            assert s["boxes"] and s["area"] >= s["bar"]
    walking = [s for s in outlined if s["above"]]
    assert all(w * h < 0.25 for s in walking for _x, _y, w, h in s["boxes"])  # people, not all
    # Ten analyses a second, but the boxes change in the status at most four times a second
    # (a few more for the rounding of the first and last interval).
    updates = len({s["boxes_seq"] for s in outlined})
    assert updates <= 4 * took + 4, (updates, took)
    # The one that did not ask got its status all along, never with boxes.
    assert other.statuses and other.frames and other.statuses[-1]["motion"] is True
    assert not any(key in s for s in other.statuses
                   for key in ("boxes", "score", "above", "boxes_seq")), other.statuses[-3:]


def test_a_viewer_that_turns_outlines_off_gets_no_more_boxes(daemon: Pancake) -> None:
    async def scenario() -> WsClient:
        client = await WsClient.connect(daemon.port)
        await client.conn.write_message(handlers.OUTLINES_ON)
        await _watch(client, 10, lambda st: any("boxes" in s for s in st))
        await client.conn.write_message(handlers.OUTLINES_OFF)
        await _watch(client, 1)  # the status on its way when it said so
        client.statuses.clear()
        await _watch(client, 3)
        client.close()
        return client

    client = asyncio.run(scenario())
    assert client.statuses
    assert not any("boxes" in s for s in client.statuses), client.statuses[-3:]


def _post(port: int, path: str, body: object) -> int:
    status, _h, page = get(port, "/")
    m = re.search(rb'name="xsrf" content="([^"]+)"', page)
    assert status == 200 and m, page[:300]
    token = m.group(1).decode()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={
            "Content-Type": "application/json", "X-XSRFToken": token, "Cookie": f"_xsrf={token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_disarmed_camera_sends_no_boxes_and_sends_them_again_when_armed(
        daemon: Pancake) -> None:
    def outlined(st: list[dict[str, Any]]) -> bool:
        return any("boxes" in s for s in st)

    async def scenario() -> tuple[list[dict[str, Any]], bool]:
        client = await WsClient.connect(daemon.port)
        await client.conn.write_message(handlers.OUTLINES_ON)
        await _watch(client, 10, outlined)
        camera = client.statuses[-1]["camera"]
        assert _post(daemon.port, f"/api/cameras/{camera}", {"armed": False}) == 200
        try:
            await _watch(client, 1.0)  # what was on its way (old boxes go stale only after 2 s)
            client.statuses.clear()
            await _watch(client, 3)
            disarmed = list(client.statuses)
        finally:
            assert _post(daemon.port, f"/api/cameras/{camera}", {"armed": True}) == 200
        client.statuses.clear()
        await _watch(client, 10, outlined)
        client.close()
        return disarmed, outlined(client.statuses)

    disarmed, again = asyncio.run(scenario())
    assert disarmed and all(s["armed"] is False for s in disarmed[-1:]), disarmed[-3:]
    assert not outlined(disarmed), disarmed[-3:]
    assert again


# Last: the browser fixture keeps an event loop running in this thread (Playwright's sync API),
# and asyncio.run() cannot start another after it.
SQUARE, YARD = '.tile[data-camera="square"]', '.tile[data-camera="yard"]'


def test_the_page_draws_outlines_over_the_picture_jpeg_and_h264_single_and_grid(
        browser: Any, both: tuple[Pancake, Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    single, grid = (f"http://{HOST}:{p.port}/" for p in both)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    # name: (url, the camera's element, where its toggle is)
    wanted = {"jpeg": (single + "?codec=jpeg", "body", ""),
              "webcodecs": (single, "body", ""),
              "grid": (grid, SQUARE, "details.menu")}
    pages = {}
    for name, (url, _root, _menu) in wanted.items():
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
        page.goto(url)
        pages[name] = (page, errors)

    def toggle(name: str, root: str, on: bool) -> None:
        page, (_url, _root, menu) = pages[name][0], wanted[name]
        if menu:  # a tile's toggle is in its menu
            page.click(f"{root} {menu} summary")
        box = f"{root} .outlines-toggle"
        page.check(box) if on else page.uncheck(box)
        if menu:
            page.click(f"{root} {menu} summary")

    for name, (page, _e) in pages.items():
        root = wanted[name][1]

        def showing(p: Any = page, r: str = root) -> bool:
            return int(p.get_attribute(r, "data-frames") or 0) >= 3

        wait_page(page, showing, 15)
        if name != "grid":
            assert page.get_attribute(root, "data-path") == name
        assert page.evaluate(DRAWN, root)[0] == 0  # off until asked
        toggle(name, root, True)
        key = "square" if name == "grid" else page.get_attribute("body", "data-camera")
        assert page.evaluate(f"localStorage.getItem('pancake.outlines.{key}')") == "1"
    # The grid's other camera has no motion detector: its toggle is off and cannot be set.
    grid_page = pages["grid"][0]
    wait_page(grid_page, lambda: grid_page.is_disabled(f"{YARD} .outlines-toggle"), 10)
    assert not grid_page.is_disabled(f"{SQUARE} .outlines-toggle")

    # People walk within one pass of the clip: every picture gets its outlines, inside the
    # picture's letterboxed rectangle (a 4:3 picture in a wide element: bars left and right).
    def drawn(name: str) -> bool:
        page, root = pages[name][0], wanted[name][1]
        return bool(page.evaluate(DRAWN, root)[0] > 50
                    and page.get_attribute(f"{root} canvas.outlines", "data-boxes")
                    not in (None, "0"))

    deadline = time.monotonic() + LOOP + 6
    while not all(drawn(name) for name in pages):
        assert time.monotonic() < deadline, {n: pages[n][0].evaluate(DRAWN, wanted[n][1])
                                             for n in pages}
        pages["jpeg"][0].wait_for_timeout(100)
    assert pages["grid"][0].evaluate(DRAWN, YARD)[0] == 0
    for name, (page, errors) in pages.items():
        root = wanted[name][1]
        _n, x0, y0, x1, y1 = page.evaluate(DRAWN, root)
        px, py, pw, ph = page.evaluate(PICTURE, root)
        where = page.evaluate(f"[...document.querySelectorAll('{root} .frame, {root} canvas.outlines')]"
                              ".map(e => [e.tagName, e.className, JSON.stringify(e.getBoundingClientRect()),"
                              " e.width, e.height, e.naturalWidth, e.videoWidth])")
        assert px > 20 or py > 20, (name, where)  # letterboxed: the test means something
        assert px - 2 <= x0 and x1 <= px + pw + 2 and py - 2 <= y0 and y1 <= py + ph + 2, (
            name, (x0, y0, x1, y1), (px, py, pw, ph))
        page.screenshot(path=str(ARTIFACTS / f"live-outlines-{name}.png"))
        if name == "jpeg":
            doc_screenshot(page, "live-outlines.png")
        toggle(name, root, False)
        assert page.evaluate(DRAWN, root)[0] == 0  # cleared at once
        page.wait_for_timeout(700)  # statuses still on their way draw nothing
        assert page.evaluate(DRAWN, root)[0] == 0
        assert errors == [], errors
    # The choice is kept: a page opened later starts with outlines on.
    page = pages["jpeg"][0]
    page.check(".outlines-toggle")
    page.reload()
    wait_page(page, lambda: int(page.inner_text("#frames")) >= 1, 15)
    assert page.is_checked(".outlines-toggle")
    context.close()
