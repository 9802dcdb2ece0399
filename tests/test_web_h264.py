"""The H.264 live view (/websocket?codec=h264) on the real pancake.py: units, skips, passthrough."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from av.video.frame import PictureType
from conftest import Pancake, free_port, run_pancake
from streams import NAL_IDR, NAL_PPS, NAL_SLICE, NAL_SPS, StreamServer, nal_units
from web_helpers import HOST, ROOT, Received, WsClient, get, get_json, start_pancake, wait_port

from raspberry_pancake.recorder.frames import Packet, PacketHub, Unit
from raspberry_pancake.recorder.web.handlers import binary_frame_head

FPS = 15
PASSTHROUGH_LINE = "recording it as is (passthrough, no re-encode)"


async def connect(port: int, query: str = "codec=h264") -> WsClient:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    req = HTTPRequest(f"ws://{HOST}:{port}/websocket?{query}", connect_timeout=5,
                      request_timeout=5)
    return WsClient(await websocket_connect(req))


def types(unit: bytes) -> list[int]:
    return [u[0] & 0x1F for u in nal_units(unit)]


def is_idr_with_sets(unit: bytes) -> bool:
    t = types(unit)
    return NAL_IDR in t and NAL_SPS in t and NAL_PPS in t and t.index(NAL_SPS) < t.index(NAL_IDR)


def decode_all(units: list[bytes]) -> int:
    """Frames PyAV decodes from the units in order; raises on a decoding error."""
    ctx = av.CodecContext.create("h264", "r")
    frames = 0
    for unit in units:
        frames += len(ctx.decode(av.Packet(unit)))
    frames += len(ctx.decode(None))
    return frames


def recording(tmp_path: Path) -> list[str]:
    out = tmp_path / "rec"
    out.mkdir(exist_ok=True)
    return ["--fps", str(FPS), "--record-continuous", str(out)]


def assert_skips_land_on_idrs(units: list[Received]) -> None:
    """Strictly increasing; wherever a unit was skipped, the next one is an IDR with SPS/PPS."""
    for a, b in itertools.pairwise(units):
        assert b.seq > a.seq, (a.seq, b.seq)
        if b.seq != a.seq + 1:
            assert is_idr_with_sets(b.jpeg), (a.seq, b.seq, types(b.jpeg))


def test_two_h264_viewers_get_every_unit_in_order_and_no_jpeg_is_encoded(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, recording(tmp_path), tmp_path)

    async def scenario() -> list[list[Received]]:
        clients = [await connect(daemon.port), await connect(daemon.port)]
        await asyncio.gather(*(c.run_acking(4.0) for c in clients))
        for c in clients:
            c.close()
        return [c.frames for c in clients]

    got = asyncio.run(scenario())
    status = get_json(daemon.port, "/status")
    assert daemon.stop()[0] == 0
    assert status["jpeg_encodes"] == 0, status
    for units in got:
        assert len(units) >= 2 * FPS, len(units)
        first = units[0]
        assert is_idr_with_sets(first.jpeg), types(first.jpeg)
        # PyAV decodes the first unit alone, from its first byte.
        assert decode_all([first.jpeg]) == 1
        assert_skips_land_on_idrs(units)
        # A client that keeps up on loopback gets every unit: at most the one skip from the
        # last IDR it started at to the next one, then consecutive.
        gaps = [b.seq - a.seq for a, b in itertools.pairwise(units) if b.seq != a.seq + 1]
        assert len(gaps) <= 1, gaps
        assert decode_all([u.jpeg for u in units]) == len(units)


def test_a_client_that_stops_acking_is_sent_nothing_then_an_idr(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, recording(tmp_path), tmp_path)

    async def scenario() -> tuple[list[Received], Received | None, Received | None]:
        client = await connect(daemon.port)
        await client.run_acking(1.5)
        await client.next_frame(1.0)  # what run_acking's last ack earned
        before = list(client.frames)
        # No ack for 3 s: nothing arrives meanwhile (nothing queues), whatever the camera does.
        quiet = await client.next_frame(3.0)
        await client.ack()
        after = await client.next_frame(5.0)
        client.close()
        return before, quiet, after

    before, quiet, after = asyncio.run(scenario())
    assert daemon.stop()[0] == 0
    assert before and quiet is None, (len(before), quiet)
    assert after is not None
    assert after.seq > before[-1].seq + FPS  # 3 s of units were missed, not queued
    assert is_idr_with_sets(after.jpeg), types(after.jpeg)
    # Decodes after what it had (the decoder's state from before the gap does not matter).
    assert decode_all([u.jpeg for u in before] + [after.jpeg]) == len(before) + 1


def test_a_camera_without_recording_says_it_has_no_h264_and_a_bad_codec_is_refused(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", str(FPS)], tmp_path)
    status, _, _ = get(daemon.port, "/websocket?codec=vp9")
    assert status == 400

    async def scenario() -> WsClient:
        client = await connect(daemon.port)
        assert await client.next_frame(2.0) is None  # no encoder runs: nothing to send
        client.close()
        return client

    client = asyncio.run(scenario())
    assert daemon.stop()[0] == 0
    assert client.statuses and client.statuses[-1]["h264"] is False, client.statuses


@pytest.fixture
def camera() -> Iterator[StreamServer]:
    # SPS/PPS only at the start, as cameras that announce them once: pancake must add them.
    server = StreamServer(free_port(), 12, x264_params="level=1.3", headers_once=True)
    yield server
    server.stop()


def test_a_passthrough_cameras_units_are_its_own_bytes(
        tmp_path: Path, camera: StreamServer, pancakes: list[Pancake]) -> None:
    url = f"http://127.0.0.1:{camera.server_address[1]}/live.ts"
    out = tmp_path / "rec"
    out.mkdir()
    daemon = start_pancake(pancakes, ["--source", url, "--fps", "12", "--resolution", "160",
                                      "120", "--record-continuous", str(out)], tmp_path)
    daemon.wait_for(PASSTHROUGH_LINE)

    async def scenario() -> list[Received]:
        client = await connect(daemon.port)
        await client.run_acking(3.5)
        client.close()
        return client.frames

    units = asyncio.run(scenario())
    assert daemon.stop()[0] == 0
    sent = camera.connections[0]
    assert len(units) >= 12, len(units)
    assert is_idr_with_sets(units[0].jpeg)
    assert_skips_land_on_idrs(units)
    # Every IDR carries the camera's own SPS (the camera sent it once, at the start).
    for u in units:
        if NAL_IDR in types(u.jpeg):
            assert sent.sps in nal_units(u.jpeg)
    # The slices are the camera's, byte for byte, in the order it sent them.
    got = [n for u in units for n in nal_units(u.jpeg) if n[0] & 0x1F in (NAL_SLICE, NAL_IDR)]
    positions = [sent.slices.index(n) for n in got]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    with av.open(str(next(out.glob("*.h264"))), format="h264") as c:
        width = next(c.decode(video=0)).width
    assert width == 320  # the camera's size: passthrough, not the live view's 160x120
    assert decode_all([u.jpeg for u in units]) == len(units)


def test_picamera2s_hardware_encoder_feeds_the_h264_view(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    # tests/fake_picamera2 stands in for picamera2 (a Pi 4: its H.264 is the "hardware"'s).
    fake = ROOT / "tests" / "fake_picamera2"
    daemon = start_pancake(pancakes, ["--source", "picamera2", "--resolution", "352", "288",
                                      *recording(tmp_path)], tmp_path,
                           env={"PYTHONPATH": f"{fake}:{ROOT}"})

    async def scenario() -> list[Received]:
        client = await connect(daemon.port)
        await client.run_acking(3.0)
        client.close()
        return client.frames

    units = asyncio.run(scenario())
    assert daemon.stop()[0] == 0
    log = daemon.log()
    assert "picamera2:0" in log and "Traceback" not in log, log
    assert "libx264 on the CPU" not in log  # the packets are the (fake) hardware's
    assert len(units) >= FPS, len(units)
    assert is_idr_with_sets(units[0].jpeg), types(units[0].jpeg)
    assert_skips_land_on_idrs(units)
    assert decode_all([u.jpeg for u in units]) == len(units)


def test_the_hub_puts_the_last_sps_pps_before_an_idr_that_lacks_them() -> None:
    # Real libx264 units; SPS/PPS only on the first, as cameras that send them once.
    ctx = av.CodecContext.create("libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 160, 120, "yuv420p", Fraction(1, 10)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=3"}
    data: list[bytes] = []
    with av.open("testsrc2=size=160x120:rate=10", format="lavfi") as src:
        for i, frame in enumerate(itertools.islice(src.decode(video=0), 7)):
            frame.pts, frame.pict_type = i, PictureType.NONE
            data += [bytes(p) for p in ctx.encode(frame)]
    data += [bytes(p) for p in ctx.encode(None)]
    bare = [b"".join(b"\x00\x00\x00\x01" + u for u in nal_units(d)
                     if u[0] & 0x1F not in (NAL_SPS, NAL_PPS)) for d in data]
    bare[0] = data[0]
    bare[3] = b"\x00\x00\x00\x01\x09\xf0" + bare[3]  # an access unit delimiter must stay first
    hub = PacketHub()
    got: list[Unit] = []
    hub.listen(got.append)
    for d in bare:
        hub.publish(Packet(d, NAL_IDR in types(d), 0.0, 0.0))
    assert [u.seq for u in got] == list(range(1, len(bare) + 1))
    idrs = [u for u in got if u.idr]
    assert len(idrs) >= 2 and hub.last_idr() == idrs[-1] and hub.latest() == got[-1]
    assert all(is_idr_with_sets(u.data) for u in idrs)
    assert types(got[3].data)[:3] == [9, NAL_SPS, NAL_PPS]
    assert [u.data for u in got if not u.idr] == [d for d in bare if NAL_IDR not in types(d)]
    # Each IDR decodes alone, from its first byte.
    for u in idrs:
        assert decode_all([u.data]) == 1


# (Last in the file: while the module's browser is open, Playwright's loop runs and
# asyncio.run, which the websocket tests use, refuses to start.)
@pytest.mark.parametrize("codec", ["h264", "jpeg"])
def test_a_picture_sent_with_a_status_message_is_not_held_back_by_nagle(
        codec: str, tmp_path: Path, pancakes: list[Pancake]) -> None:
    # The status (at least once a second) and the picture are two writes: with Nagle's
    # algorithm on, the picture waited for the client's delayed ACK of the status (40 ms or
    # more, every second). Measured at the client as the gap between the two arrivals.
    daemon = start_pancake(pancakes, recording(tmp_path), tmp_path)

    async def scenario() -> list[float]:
        client = await connect(daemon.port, f"codec={codec}")
        gaps: list[float] = []
        text_at: float | None = None
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            msg = await asyncio.wait_for(client.conn.read_message(), 5.0)
            assert msg is not None, "websocket closed"
            now = time.monotonic()
            if isinstance(msg, str):
                text_at = now
                continue
            if text_at is not None:
                gaps.append(now - text_at)
                text_at = None
            await client.ack()
        client.close()
        return gaps

    gaps = asyncio.run(scenario())
    assert daemon.stop()[0] == 0
    assert len(gaps) >= 4, gaps  # a status at least once a second
    # Both leave in the same loop iteration: a median of 20 ms is half Linux's smallest delayed
    # ACK (40 ms), which every one of them waited before the fix.
    assert statistics.median(gaps) < 0.02, gaps


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_the_binary_frame_header_follows_rfc_6455(length: int) -> None:
    head = binary_frame_head(length)
    assert head[0] == 0x82  # FIN, binary
    assert not head[1] & 0x80  # a server never masks
    n = head[1] & 0x7F
    if length < 126:
        assert (n, len(head)) == (length, 2)
    elif length <= 0xFFFF:
        assert (n, len(head), int.from_bytes(head[2:], "big")) == (126, 4, length)
    else:
        assert (n, len(head), int.from_bytes(head[2:], "big")) == (127, 10, length)


# ---- the page, in Debian's chromium ---------------------------------------------------------

ARTIFACTS = ROOT / "tests" / "artifacts"
NO_WEBCODECS = "delete window.VideoDecoder;"
NO_H264 = NO_WEBCODECS + "delete window.MediaSource; delete window.ManagedMediaSource;"
REFUSING_WEBCODECS = ("window.VideoDecoder = class { constructor() {} "
                      "configure() { throw new Error('not this one'); } };")


def _wait(page: Any, condition: Callable[[], bool], timeout: float = 15.0) -> None:
    # Polled from here: the page's CSP rightly forbids the eval wait_for_function needs.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the page did not get there in time")
        page.wait_for_timeout(100)


CANVAS_SUM = """() => {
  const c = document.querySelector('canvas.frame');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0;
  for (let i = 0; i < d.length; i += 97) s = (s * 31 + d[i]) % 1000000007;
  return [c.width, c.height, s];
}"""


def open_page(browser: Any, url: str, init: str | None = None) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": 1024, "height": 700})
    if init:
        context.add_init_script(init)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Errors, and the page's own warning that a path failed and it fell back to another.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" or (
        msg.type == "warning" and msg.text.startswith("live view:")) else None)
    page.goto(url)
    return context, page, errors


def shown(page: Any, selector: str = "body") -> int:
    return int(page.get_attribute(selector, "data-frames") or 0)


def video_time(page: Any) -> float:
    return float(page.evaluate("() => document.querySelector('video.frame').currentTime"))


def plays_mse(browser: Any, url: str, init: str | None, expect: str | None = None) -> None:
    context, page, errors = open_page(browser, url, init)
    _wait(page, lambda: shown(page) >= 10)
    assert page.inner_text("#path") == "H.264 (MSE)"
    assert page.is_hidden("img#frame") and page.is_visible("video.frame")
    t0 = video_time(page)
    _wait(page, lambda: video_time(page) > t0 + 0.5)
    assert float(page.inner_text("#fps")) > 5
    assert 0 <= int(page.inner_text("#age")) < 2000
    page.screenshot(path=str(ARTIFACTS / "live-h264-mse.png"))
    assert errors == ([] if expect is None else [f"{expect}; using H.264 (MSE)"]), errors
    context.close()


def plays_jpeg(browser: Any, url: str, init: str | None) -> None:
    context, page, errors = open_page(browser, url, init)
    _wait(page, lambda: shown(page) >= 3)
    assert page.inner_text("#path") == "JPEG"
    src = page.get_attribute("#frame", "src")
    _wait(page, lambda: page.get_attribute("#frame", "src") != src)
    assert page.locator("canvas.frame, video.frame").count() == 0
    assert errors == [], errors
    context.close()


def test_the_page_plays_h264_with_webcodecs_then_mse_and_jpeg_last(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    daemon = start_pancake(pancakes, [*recording(tmp_path), "--resolution", "640", "480"],
                           tmp_path)
    base = f"http://{HOST}:{daemon.port}"

    # 127.0.0.1 is a secure context: WebCodecs, drawn on a canvas that changes.
    context, page, errors = open_page(browser, base + "/")
    _wait(page, lambda: shown(page) >= 5)
    assert page.inner_text("#path") == "H.264 (WebCodecs)"
    first = page.evaluate(CANVAS_SUM)
    assert first[:2] == [640, 480], first
    _wait(page, lambda: shown(page) >= 20 and page.evaluate(CANVAS_SUM) != first)
    assert float(page.inner_text("#fps")) > 5  # the camera's 15 fps, not one IDR a second
    assert 0 <= int(page.inner_text("#age")) < 2000
    assert page.is_hidden("img#frame") and page.is_visible("canvas.frame")
    page.screenshot(path=str(ARTIFACTS / "live-h264-webcodecs.png"))
    assert errors == [], errors
    context.close()

    # No WebCodecs (an older browser): Media Source Extensions; and ?codec=mse forces it.
    plays_mse(browser, base + "/", NO_WEBCODECS)
    # WebCodecs that refuses this H.264: MSE too, saying why in the console.
    plays_mse(browser, base + "/", REFUSING_WEBCODECS,
              expect="live view: H.264 (WebCodecs) failed (decoder: not this one)")
    plays_mse(browser, base + "/?codec=mse", None)
    assert get_json(daemon.port, "/status")["jpeg_encodes"] == 0  # H.264 costs no JPEG
    # Neither (or ?codec=jpeg): JPEG, as before.
    plays_jpeg(browser, base + "/", NO_H264)
    plays_jpeg(browser, base + "/?codec=jpeg", None)
    page_status, _, body = get(daemon.port, "/")
    assert page_status == 200 and b'href="/mask?camera=cam"' in body
    assert get_json(daemon.port, "/status")["jpeg_encodes"] > 0
    assert daemon.stop()[0] == 0


def test_the_grid_streams_h264_per_tile_and_jpeg_for_a_camera_that_records_nothing(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    rec = tmp_path / "rec"
    rec.mkdir()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\n'
        f'[camera.front]\ntitle = "Front door"\nsource = "testsrc"\nfps = 10\n'
        f'resolution = [320, 240]\nrecord_continuous = "{rec}"\n'
        f'[camera.yard]\ntitle = "Yard"\nsource = "testsrc"\nfps = 10\n'
        f'resolution = [320, 240]\nrecord_continuous = "{rec}"\n'
        f'[camera.shed]\ntitle = "Shed"\nsource = "testsrc"\nfps = 10\nresolution = [320, 240]\n')
    daemon = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    daemon.wait_for("live view on http", timeout=30)
    wait_port(daemon.port, 30)
    base = f"http://{HOST}:{daemon.port}"
    context, page, errors = open_page(browser, base + "/")

    def tile(name: str) -> str:
        return f'.tile[data-camera="{name}"]'

    _wait(page, lambda: all(shown(page, tile(n)) >= 5 for n in ("front", "yard", "shed")))
    assert page.get_attribute(tile("front"), "data-path") == "webcodecs"
    assert page.get_attribute(tile("yard"), "data-path") == "webcodecs"
    assert page.get_attribute(tile("shed"), "data-path") == "jpeg"  # it records nothing
    assert page.is_visible(tile("front") + " canvas.frame")
    assert page.inner_text(tile("front") + " .path") == "H.264 (WebCodecs)"
    assert page.get_attribute(tile("front") + " .mask-link", "href") == "/mask?camera=front"
    page.screenshot(path=str(ARTIFACTS / "cameras-grid-h264.png"))
    # Enlarged, the others stop streaming (as the JPEG tiles do); the big one goes on.
    page.click(tile("yard"))
    page.wait_for_url(base + "/?camera=yard")
    page.wait_for_timeout(500)
    front, yard = shown(page, tile("front")), shown(page, tile("yard"))
    page.wait_for_timeout(1500)
    assert shown(page, tile("front")) == front
    assert shown(page, tile("yard")) >= yard + 5
    viewers = get_json(daemon.port, "/status")["cameras"]
    assert viewers["front"]["viewers"] == 0 and viewers["yard"]["viewers"] == 1, viewers
    assert viewers["front"]["jpeg_encodes"] == viewers["yard"]["jpeg_encodes"] == 0, viewers
    assert errors == [], errors
    context.close()
    assert daemon.stop()[0] == 0
