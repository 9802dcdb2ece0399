"""The mask editor on the real pancake.py: uploads checked, kept 0600, applied, painted in Chromium."""

from __future__ import annotations

import http.client
import json
import logging
import re
import stat
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from conftest import Listener, Pancake, run_pancake, wait_page
from web_helpers import (
    HOST,
    LISTENING,
    ROOT,
    get,
    make_hash_file,
    start_pancake,
    wait_port,
)

from raspberry_pancake.recorder.config import parse
from raspberry_pancake.recorder.detect.runner import build_checks
from raspberry_pancake.recorder.web import auth

PEOPLE = ROOT / "tests" / "data" / "people.mp4"  # 4 s empty square, 8 s people walking, 4 s empty
ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "pancakes for breakfast"


def png(grey: npt.NDArray[np.uint8]) -> bytes:
    ctx = av.CodecContext.create("png", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.height, ctx.width = grey.shape
    ctx.pix_fmt = "gray"
    ctx.open()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def decode(data: bytes | Path) -> npt.NDArray[np.uint8]:
    import io

    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source, "r") as c:
        return np.asarray(next(c.decode(video=0)).to_ndarray(format="gray"), dtype=np.uint8)


def put(port: int, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=20)
    try:
        conn.request("PUT", f"/api/cameras/{name}/mask.png", body=body,
                     headers={"Content-Type": "image/png", **headers})
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else {}
    finally:
        conn.close()


def with_xsrf(port: int) -> dict[str, str]:
    """The mask page's XSRF token as its script sends it (no --login: no login page to ask)."""
    status, _, body = get(port, "/mask")
    m = re.search(rb'data-xsrf="([^"]+)"', body)
    assert status == 200 and m, (status, body[:300])
    token = m.group(1).decode()
    return {"Cookie": f"_xsrf={token}", "X-XSRFToken": token}


def edges(listener: Listener) -> list[dict[str, Any]]:
    return [m for m in listener.events() if "detection" in m and "h264" not in m]


def test_an_uploaded_mask_is_checked_kept_private_and_silences_the_masked_walkers(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    state = tmp_path / "st"
    flags = ["--source", str(PEOPLE), "--fps", "10", "--resolution", "320", "240",
             "--detect", "motion", "--detect-interval", "0.2", "--state-dir", str(state),
             "--emit", listener.name]
    p = run_pancake(pancakes, flags, tmp_path)
    p.wait_for(LISTENING, 20)
    wait_port(p.port)
    headers = with_xsrf(p.port)
    # Nothing to watch but the bottom-left corner, where nobody walks in this clip.
    corner = np.zeros((240, 320), np.uint8)
    corner[200:, :90] = 255
    status, answer = put(p.port, "cam", png(corner), headers)
    assert (status, answer) == (200, {"camera": "cam", "saved": True}), p.log()
    # Refused, with the reason, and the mask in use stays.
    black = np.zeros((240, 320), np.uint8)
    clock_only = black.copy()
    clock_only[:8, :40] = 255  # the burned-in clock never counts: nothing left
    for body, reason in ((b"hello", "not a PNG"),
                         (png(corner)[:60], "not an image"),
                         (png(black), "all black, so nothing would be watched"),
                         (png(clock_only), "nothing left to watch once the clock is left out"),
                         (png(np.full((4, 8200), 255, np.uint8)), "larger than 8192 pixels")):
        status, answer = put(p.port, "cam", body, headers)
        assert status == 400 and reason in answer["error"], (reason, status, answer)
    assert put(p.port, "cam", png(corner), {})[0] == 403  # no XSRF token
    # A form's file upload (curl -F mask=@corner.png) is taken as well.
    boundary = "pancake-test-boundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"mask\"; "
            f"filename=\"corner.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png(corner) \
        + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(HOST, p.port, timeout=20)
    conn.request("POST", "/api/cameras/cam/mask.png", body=form, headers={
        **headers, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert conn.getresponse().status == 200
    conn.close()
    assert put(p.port, "nope", png(corner), headers)[0] == 404
    # Kept in the state directory, 0600 in a 0700 directory, and served back as it is.
    stored = state / "masks" / "cam.png"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert stored.read_bytes() == png(corner)
    assert [f.name for f in stored.parent.iterdir()] == ["cam.png"]  # no temporary left
    status, got_headers, body = get(p.port, "/api/cameras/cam/mask.png")
    assert status == 200 and got_headers["content-type"] == "image/png" and body == png(corner)
    status, got_headers, body = get(p.port, "/api/cameras/cam/snapshot.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8" and got_headers["cache-control"] == "no-store"
    assert decode(body).shape == (240, 320)
    # The people walk (4 s to 12 s of the clip) and the clip plays again: not one edge
    # (tests/test_detect_daemon.py: unmasked, the same walk gives one).
    p.wait_for("playing it again", 30)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert edges(listener) == [], p.log()
    assert "motion mask applied" in p.log()
    assert "raised" not in p.log()
    # At the next start the saved mask replaces --motion-mask, and the log says so.
    flag_mask = tmp_path / "flag.png"
    flag_mask.write_bytes(png(np.full((24, 32), 255, np.uint8)))
    p = run_pancake(pancakes, [*flags, "--motion-mask", str(flag_mask)], tmp_path)
    p.wait_for("first frame captured", 20)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert (f"camera cam: motion mask {stored}, saved from the page, instead of --motion-mask "
            f"{flag_mask}") in p.log()


def test_a_camera_without_motion_detection_has_no_mask_to_edit(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    p = start_pancake(pancakes, ["--fps", "10"], tmp_path)
    status, _, body = get(p.port, "/mask")
    assert status == 200 and b"Motion detection is off for cam" in body
    assert b'id="mask"' not in body
    mask = np.full((24, 32), 255, np.uint8)
    status, answer = put(p.port, "cam", png(mask), with_xsrf(p.port))
    assert status == 409 and "motion detection is off" in answer["error"]
    assert get(p.port, "/api/cameras/cam/mask.png")[0] == 404
    assert get(p.port, "/mask?camera=nope")[0] == 404
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert not (tmp_path / "state" / "pancake" / "masks").exists()


def test_a_damaged_saved_mask_is_skipped_at_start_for_the_flags_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flag_mask = tmp_path / "flag.png"
    half = np.zeros((24, 32), np.uint8)
    half[:, 16:] = 255
    flag_mask.write_bytes(png(half))
    cfg = parse(["--detect", "motion", "--motion-mask", str(flag_mask),
                 "--state-dir", str(tmp_path / "st")])
    assert cfg.stored_mask == tmp_path / "st" / "masks" / "cam.png"
    cfg.stored_mask.parent.mkdir(parents=True)
    cfg.stored_mask.write_bytes(png(half)[:50])  # cut short: a power cut before fsync's day
    with caplog.at_level(logging.WARNING):
        _, motion = build_checks(cfg)
    assert motion is not None and motion.mask is not None
    assert np.array_equal(motion.mask, half)
    assert "the motion mask saved from the page is not used" in caplog.text
    assert "; --motion-mask instead" in caplog.text




def test_a_stroke_painted_in_chromium_is_saved_white_where_painted(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    hashed = make_hash_file(tmp_path, auth.hash_password(PASSWORD.encode()))
    p = start_pancake(pancakes, ["--login", str(hashed), "--fps", "10", "--resolution", "320",
                                 "240", "--detect", "motion"], tmp_path)
    base = f"http://{HOST}:{p.port}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and "404" not in msg.text else None)  # no mask yet: a 404
    page.goto(base + "/mask?camera=cam")
    assert page.url.startswith(base + "/login"), page.url
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/mask?camera=cam")
    page.wait_for_selector("#message:has-text('No mask yet')")
    wait_page(page, "document.getElementById('picture').naturalWidth > 0")
    assert page.evaluate("[document.getElementById('picture').naturalWidth, "
                         "document.getElementById('picture').naturalHeight]") == [320, 240]

    page.click("#clear")
    box = page.locator("#mask").bounding_box()
    assert box is not None and box["width"] > 320  # fitted to the screen, larger than 320 px
    # A horizontal stroke across the middle, from 30 % to 70 % of the width.
    y = box["y"] + box["height"] * 0.5
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * i), y)
    page.mouse.up()
    page.screenshot(path=str(ARTIFACTS / "mask-desktop.png"))
    page.click("#save")
    page.wait_for_selector("#message:has-text('Saved')")
    stored = tmp_path / "state" / "pancake" / "masks" / "cam.png"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    grey = decode(stored)
    assert grey.shape == (240, 320)
    white = grey >= 128
    # White (watched) along the stroke, black everywhere else.
    assert white[120, 110:210].all(), np.nonzero(white[120])[0]
    assert not white[:100].any() and not white[140:].any()
    assert not white[:, :85].any() and not white[:, 235:].any()
    assert 0.01 < white.mean() < 0.2

    # Invert, then the saved mask comes back on Revert as it was saved.
    page.click("#invert")
    page.click("#revert")
    page.wait_for_selector("#message:has-text('The mask in use')")
    watched = page.evaluate("""(() => { const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] < 128) n++;
        return n / (c.width * c.height); })()""")
    assert abs(watched - white.mean()) < 0.01

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width  # nothing wider than the phone
    page.screenshot(path=str(ARTIFACTS / "mask-phone.png"), full_page=True)
    assert errors == [], errors
    context.close()
    rc, _ = p.stop()
    assert rc == 0, p.log()
