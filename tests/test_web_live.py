"""The ack-paced live view over a real websocket on loopback: pacing, sharing, stalls, failed
encodes, /status — on the real pancake.py, with in-process tests only for the JPEG units."""

from __future__ import annotations

import asyncio
import io
import itertools
import socket
import struct
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import Listener, Pancake
from web_helpers import (
    HOST,
    ROOT,
    Received,
    ServerThread,
    SyntheticCamera,
    WsClient,
    get,
    get_json,
    stalled_socket,
    start_pancake,
    ws_frames,
)

from raspberry_pancake.recorder.frames import Frame, LatestFrame
from raspberry_pancake.recorder.recording.encode import EncoderConfig, H264Encoder
from raspberry_pancake.recorder.web import handlers
from raspberry_pancake.recorder.web.jpeg import Jpeg, JpegEncoder, JpegProducer
from raspberry_pancake.recorder.web.live import display_name


def decodes_as_jpeg(data: bytes) -> tuple[int, int]:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with av.open(io.BytesIO(data), "r", format="mjpeg") as c:
        frame = next(c.decode(video=0))
        return frame.width, frame.height


def send_times(frames: list[Received]) -> list[float]:
    """When the server sent each frame: capture time plus its age at sending."""
    return [f.wall + f.age for f in frames]


def test_no_ack_gets_exactly_one_frame_then_an_ack_gets_the_next(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", "15"], tmp_path)

    async def scenario() -> None:
        client = await WsClient.connect(daemon.port)
        first = await client.next_frame(10)
        assert first is not None, "opening the websocket must earn one frame"
        assert decodes_as_jpeg(first.jpeg) == (320, 240)
        # No ack (and a message that is not one): nothing more, however long we wait.
        await client.conn.write_message("hello")
        assert await client.next_frame(2.0) is None
        await client.ack()
        second = await client.next_frame(10)
        assert second is not None and second.seq > first.seq
        # The newest frame, not the one after the first: the camera moved on meanwhile.
        assert second.seq > first.seq + 5
        assert await client.next_frame(0.5) is None
        assert client.statuses and client.statuses[0]["type"] == "status"
        client.close()

    asyncio.run(scenario())
    assert daemon.stop()[0] == 0


def test_acks_are_paced_to_max_stream_fps_without_duplicates(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    max_fps = 5.0
    daemon = start_pancake(pancakes, ["--fps", "15", "--max-stream-fps", f"{max_fps:g}"],
                           tmp_path)

    async def scenario() -> list[Received]:
        client = await WsClient.connect(daemon.port)
        got = await client.run_acking(3.0)
        client.close()
        assert got >= 5
        return client.frames

    frames = asyncio.run(scenario())
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), f"a frame was sent twice or out of order: {seqs}"
    # Upper bounds only: a loaded machine sends fewer frames, never more.
    rate = (len(frames) - 1) / (frames[-1].at - frames[0].at)
    assert rate <= max_fps * 1.1, f"{rate:.2f} frames/s to one client with --max-stream-fps {max_fps}"
    gaps = [b - a for a, b in itertools.pairwise(send_times(frames))]
    assert min(gaps) >= 1 / max_fps - 0.01, f"two frames sent {min(gaps) * 1000:.0f} ms apart"
    assert struct.calcsize("!Qdff") == handlers.HEADER.size == 24


def test_two_viewers_share_one_jpeg_per_frame(tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", "15", "--max-stream-fps", "10"], tmp_path)
    assert get_json(daemon.port, "/status")["jpeg_encodes"] == 0

    async def scenario() -> tuple[list[Received], list[Received]]:
        a = await WsClient.connect(daemon.port)
        b = await WsClient.connect(daemon.port)
        await asyncio.gather(a.run_acking(3.0), b.run_acking(3.0))
        a.close()
        b.close()
        return a.frames, b.frames

    fa, fb = asyncio.run(scenario())
    time.sleep(0.3)
    encodes = get_json(daemon.port, "/status")["jpeg_encodes"]
    seqs_a = {f.seq for f in fa}
    seqs_b = {f.seq for f in fb}
    union = seqs_a | seqs_b
    assert len(fa) == len(seqs_a) and len(fb) == len(seqs_b), "duplicate frame to one viewer"
    assert len(fa) >= 5 and len(fb) >= 5
    # Every JPEG encoded went to some viewer (at most the last request's answer went to none),
    # and most went to both: one encode per frame, not one per viewer.
    assert encodes <= len(union) + 2, f"{encodes} encodes for {len(union)} distinct frames"
    assert len(fa) + len(fb) >= 1.5 * len(union), (len(fa), len(fb), len(union))


def test_a_stalled_viewer_does_not_slow_another(tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", "15", "--max-stream-fps", "10"], tmp_path)

    async def scenario() -> tuple[int, int, int]:
        fast = await WsClient.connect(daemon.port)
        alone = await fast.run_acking(2.0)
        # One viewer that never reads again, and one that floods acks but never reads.
        stalled = stalled_socket(daemon.port)
        flooder = stalled_socket(daemon.port)
        mask = b"\x00\x00\x00\x00"
        ack = bytes([0x81, 0x80 | len(handlers.ACK)]) + mask + handlers.ACK.encode()
        flooder.sendall(ack * 200)
        together = await fast.run_acking(2.0)
        viewers = get_json(daemon.port, "/status")["viewers"]
        fast.close()
        stalled.close()
        flooder.close()
        return alone, together, viewers

    alone, together, viewers = asyncio.run(scenario())
    assert viewers == 3
    assert alone >= 5
    # What a viewer would notice is its picture slowing to a crawl; load alone varies the
    # rate by tens of percent, so the bound is half.
    assert together >= 0.5 * alone, f"{together} frames beside stalled viewers, {alone} alone"


def test_no_viewer_means_no_jpeg_encoding(tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", "15"], tmp_path)
    time.sleep(1.0)
    status = get_json(daemon.port, "/status")
    assert status["capture_fps"] > 3, "the camera must be running for this to mean anything"
    assert status["jpeg_encodes"] == 0 and status["viewers"] == 0

    async def one_frame() -> None:
        client = await WsClient.connect(daemon.port)
        assert await client.next_frame(10) is not None
        await asyncio.sleep(0.5)  # connected but not acking: costs nothing more
        assert get_json(daemon.port, "/status")["viewers"] == 1
        client.close()

    asyncio.run(one_frame())
    assert get_json(daemon.port, "/status")["jpeg_encodes"] == 1
    time.sleep(0.5)
    status = get_json(daemon.port, "/status")
    assert status["jpeg_encodes"] == 1 and status["viewers"] == 0


def test_status_json_and_pushed_indicators(tmp_path: Path, pancakes: list[Pancake]) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    customize = tmp_path / "customize.py"
    customize.write_text("def detect():\n    return True\n")
    daemon = start_pancake(pancakes, ["--fps", "15", "--record-continuous", str(rec),
                                      "--detect", "no-image", "--customize", str(customize)],
                           tmp_path)
    status = get_json(daemon.port, "/status")
    for key in ("source", "resolution", "capture_fps", "viewers", "jpeg_encodes",
                "jpeg_failures", "recording", "detection", "free_bytes", "uptime"):
        assert key in status, key
    assert status["resolution"] == [320, 240]
    assert status["free_bytes"][str(rec)] > 0
    _, headers, _ = get(daemon.port, "/status")
    assert headers["content-type"].startswith("application/json")

    async def scenario() -> None:
        client = await WsClient.connect(daemon.port)
        assert await client.next_frame(10) is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            last = client.statuses[-1] if client.statuses else {}
            if last.get("detection") and last.get("rec") == 1:
                break
            await client.ack()
            await client.next_frame(1)
        else:
            raise AssertionError(f"indicators not pushed: {client.statuses[-3:]}")
        client.close()

    asyncio.run(scenario())
    status = get_json(daemon.port, "/status")
    assert status["detection"] is True and len(status["recording"]) == 1


def test_static_assets_are_local(tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, [], tmp_path)
    status, _, page = get(daemon.port, "/")
    assert status == 200
    assert b"http://" not in page and b"https://" not in page, "a CDN reference in the page"
    for asset in (b"style.css", b"live.js", b"favicon.svg"):
        assert b"/static/" + asset in page
        code, _, body = get(daemon.port, "/static/" + asset.decode())
        assert code == 200 and body
        assert (b"http://" not in body and b"https://" not in body) or asset == b"favicon.svg"


def test_sigterm_with_a_viewer_connected_says_goodbye_and_exits(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    daemon = start_pancake(pancakes, ["--fps", "15"], tmp_path)
    client_sock = stalled_socket(daemon.port)
    time.sleep(0.5)  # its first frame is sent
    # Generous: a stop is what systemd waits for (90 s by default); a hang is what we catch.
    rc, took = daemon.stop(timeout=20)
    assert rc == 0 and took < 10, (rc, took, daemon.log())
    client_sock.settimeout(5)
    # The server said goodbye: after the first frame, a close frame (opcode 8), then EOF.
    data = b""
    while True:
        try:
            chunk = client_sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    client_sock.close()
    opcodes = [op for op, _ in ws_frames(data)]
    assert 0x2 in opcodes, "the viewer did not get its first frame"
    assert opcodes[-1] == 0x8, f"no websocket close frame at the end: {opcodes}"


def test_camera_credentials_never_reach_a_viewer() -> None:
    """A unit: the daemon needs a reachable camera, and this one has a password in its URL."""
    with ServerThread(fps=30) as srv:
        srv.state.source_name = "url:rtsp://admin:hunter2@camera.invalid:554/stream1"
        time.sleep(0.3)  # one status refresh
        _, _, page = get(srv.port, "/")
        status = get_json(srv.port, "/status")

        async def pushed() -> list:  # type: ignore[type-arg]
            client = await WsClient.connect(srv.port)
            assert await client.next_frame(5) is not None
            client.close()
            return client.statuses

        statuses = asyncio.run(pushed())
    assert b"camera.invalid:554/stream1" in page and b"hunter2" not in page
    assert "camera.invalid:554/stream1" in status["source"] and "hunter2" not in status["source"]
    assert all("hunter2" not in s["source"] for s in statuses) and statuses
    assert "u:p" not in display_name("rtsp://u:p@h/x")


def test_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                               "--port", str(port), "--bind", HOST],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--port {port}" in lines[0] and "Traceback" not in proc.stderr


# --- a failed JPEG encode -------------------------------------------------------------------


def _testsrc_frames(n: int, size: tuple[int, int] = (320, 240), fps: int = 15) -> list[av.VideoFrame]:
    """Frames as the lavfi source decodes them: pts counted in their own time base (1/fps)."""
    with av.open(f"testsrc=size={size[0]}x{size[1]}:rate={fps}", format="lavfi") as src:
        frames = []
        for frame in src.decode(video=0):
            frames.append(frame.reformat(format="yuv420p"))
            if len(frames) >= n:
                return frames
    raise AssertionError("testsrc ended")


def test_jpeg_encoder_is_not_fooled_by_what_the_h264_encoder_stamps_on_a_shared_frame() -> None:
    """The cause of 'avcodec_send_frame() returned 22': the live view read one frame before
    the recording's encoder stamped its pts/time_base (1/15) and the next one after (1/1000)."""
    h264 = H264Encoder(EncoderConfig(size=None, fps=15, split=900))
    jpeg = JpegEncoder()
    frames = _testsrc_frames(6)
    for i, image in enumerate(frames):
        frame = Frame(i + 1, image, time.monotonic() + i / 15, time.time() + i / 15)
        if i % 2:
            h264.encode(frame)  # recorded first: the shared frame now says pts=ms, 1/1000
        assert decodes_as_jpeg(jpeg.encode(image)) == (320, 240)
        if not i % 2:
            h264.encode(frame)
    h264.flush()


def test_jpeg_encoder_leaves_the_shared_frame_alone() -> None:
    image = _testsrc_frames(1)[0]
    image.pts, image.time_base = 12345, Fraction(1, 1000)
    for fmt in ("yuv420p", "yuvj420p"):  # yuvj420p: the reformat has nothing to do
        shared = image if fmt == "yuv420p" else image.reformat(format=fmt)
        shared.pts, shared.time_base = 12345, Fraction(1, 1000)
        JpegEncoder().encode(shared)
        assert (shared.pts, shared.time_base) == (12345, Fraction(1, 1000)), fmt


class FailsOnce:
    """The real encoder, except that its first encode fails as libavcodec's did in the field."""

    def __init__(self) -> None:
        self.inner = JpegEncoder()
        self.calls = 0

    def encode(self, image: av.VideoFrame) -> bytes:
        self.calls += 1
        if self.calls == 1:
            raise av.FFmpegError(22, "Invalid argument: 'avcodec_send_frame()' returned 22")
        return self.inner.encode(image)


def test_a_failed_encode_leaves_the_request_standing() -> None:
    """The producer alone: a viewer asks, the first encode fails, the next frame answers it."""
    hub = LatestFrame()
    got: list[Jpeg] = []
    arrived = threading.Event()

    def on_jpeg(jpeg: Jpeg) -> None:
        got.append(jpeg)
        arrived.set()

    producer = JpegProducer(hub, 30, on_jpeg, FailsOnce())
    camera = SyntheticCamera(hub, None, 160, 120, 30)
    camera.start()
    producer.start()
    try:
        last = -1
        for answer in range(5):  # a viewer that asks again only once answered
            arrived.clear()
            producer.request(last)
            assert arrived.wait(5), f"request {answer + 1} was never answered (got {len(got)})"
            assert got[-1].seq > last
            last = got[-1].seq
        assert producer.failures == 1
    finally:
        producer.stop()
        camera.stop()
        hub.close()


def test_a_viewer_keeps_getting_frames_after_a_failed_encode() -> None:
    """Over the websocket: the failed encode costs the viewer one frame, not the rest."""
    with ServerThread(fps=30, encoder=FailsOnce()) as srv:

        async def scenario() -> int:
            client = await WsClient.connect(srv.port)
            got = await client.run_acking(2.0)
            client.close()
            return got

        got = asyncio.run(scenario())
        status = get_json(srv.port, "/status")
    assert status["jpeg_failures"] == 1
    assert got >= 5, f"{got} frames in 2 s after one failed encode"


@pytest.mark.slow
def test_a_viewer_acking_every_frame_for_half_a_minute_never_freezes(
        tmp_path: Path, pancakes: list[Pancake], listener: Listener) -> None:
    """The field report's setup, shortened: 640x480 at 15 fps, continuous and edge recording,
    detect(rgb) five times a second (edge snapshots encode JPEGs too), one viewer acking every
    frame. It froze for good after the first failed encode, 11-15 s in: half a minute is twice
    that, and keeps CI's time."""
    seconds, max_fps = 30.0, 10.0
    customize = tmp_path / "customize.py"
    customize.write_text("import time\n\ndef detect(rgb):\n    return time.time() % 6 < 3\n")
    rec = tmp_path / "rec"
    rec.mkdir()
    daemon = start_pancake(pancakes, [
        "--resolution", "640", "480", "--fps", "15", "--max-stream-fps", f"{max_fps:g}",
        "--record-continuous", str(rec), "--record-detection", "edge", str(rec),
        "--detect", "image", "--detect-interval", "0.2", "--customize", str(customize),
        "--emit", listener.name], tmp_path)

    async def watch() -> WsClient:
        client = await WsClient.connect(daemon.port)
        await client.run_acking(seconds)
        client.close()
        return client

    frames = asyncio.run(watch()).frames
    status = get_json(daemon.port, "/status")
    assert daemon.stop()[0] == 0
    log = daemon.log()
    assert any("detection" in e for e in listener.events()), "detect() never fired: " + log
    arrivals = [f.at for f in frames]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Generous: a loaded 2-core machine still delivers far more than 30 % of the paced rate;
    # the frozen viewer got 113 frames in ten minutes.
    got = len(frames)
    assert got >= 0.3 * seconds * max_fps, f"{got} frames in {seconds:.0f} s"
    assert max(gaps) < 5.0, f"no frame for {max(gaps):.1f} s (frame {gaps.index(max(gaps))})"
    assert arrivals[-1] > arrivals[0] + seconds - 5.0, "frames stopped before the end"
    assert status["jpeg_encodes"] >= len(frames)
    if status["jpeg_failures"]:  # tolerated now (the next frame is sent), but say so
        print(f"{status['jpeg_failures']} failed JPEG encodes:\n{log}")
