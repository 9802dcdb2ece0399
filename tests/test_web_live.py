"""The ack-paced live view over a real websocket on loopback: pacing, sharing, stalls, /status."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
from pathlib import Path

import av
import pytest
from web_helpers import (
    Daemon,
    ServerThread,
    WsClient,
    get,
    get_json,
    stalled_socket,
    ws_frames,
)

from raspberry_pancake.recorder.web import app as web
from raspberry_pancake.recorder.web import handlers


def decodes_as_jpeg(data: bytes) -> tuple[int, int]:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    with av.open(io.BytesIO(data), format="mjpeg") as c:
        frame = next(c.decode(video=0))
        return frame.width, frame.height


def send_times(frames: list) -> list[float]:  # type: ignore[type-arg]
    """When the server sent each frame: capture time plus its age at sending."""
    return [f.wall + f.age for f in frames]


def test_no_ack_gets_exactly_one_frame_then_an_ack_gets_the_next() -> None:
    with ServerThread(fps=30) as srv:

        async def scenario() -> None:
            client = await WsClient.connect(srv.port)
            first = await client.next_frame(5)
            assert first is not None, "opening the websocket must earn one frame"
            assert decodes_as_jpeg(first.jpeg) == (320, 240)
            # No ack (and a message that is not one): nothing more, however long we wait.
            await client.conn.write_message("hello")
            assert await client.next_frame(1.5) is None
            assert srv.camera is not None and srv.camera.published > first.seq + 30
            await client.ack()
            second = await client.next_frame(5)
            assert second is not None and second.seq > first.seq
            # The newest frame, not the one after the first: the camera moved on meanwhile.
            assert second.seq > first.seq + 30
            assert await client.next_frame(0.5) is None
            assert client.statuses and client.statuses[0]["type"] == "status"
            client.close()

        asyncio.run(scenario())


def test_acks_are_paced_to_max_stream_fps_without_duplicates() -> None:
    max_fps = 5.0
    with ServerThread(["--max-stream-fps", str(max_fps)], fps=30) as srv:

        async def scenario() -> list:  # type: ignore[type-arg]
            client = await WsClient.connect(srv.port)
            got = await client.run_acking(3.0)
            client.close()
            assert got >= 5
            return client.frames

        frames = asyncio.run(scenario())
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), f"a frame was sent twice or out of order: {seqs}"
    span = frames[-1].at - frames[0].at
    rate = (len(frames) - 1) / span
    assert rate <= max_fps * 1.1, f"{rate:.2f} frames/s to one client with --max-stream-fps {max_fps}"
    gaps = [b - a for a, b in zip(send_times(frames), send_times(frames)[1:], strict=False)]
    assert min(gaps) >= 1 / max_fps - 0.01, f"two frames sent {min(gaps) * 1000:.0f} ms apart"


def test_two_viewers_share_one_jpeg_per_frame() -> None:
    with ServerThread(["--max-stream-fps", "10"], fps=30) as srv:
        assert srv.encodes() == 0

        async def scenario() -> tuple[list, list]:  # type: ignore[type-arg]
            a = await WsClient.connect(srv.port)
            b = await WsClient.connect(srv.port)
            await asyncio.gather(a.run_acking(3.0), b.run_acking(3.0))
            a.close()
            b.close()
            return a.frames, b.frames

        fa, fb = asyncio.run(scenario())
        time.sleep(0.3)
        encodes = srv.encodes()
    seqs_a = {f.seq for f in fa}
    seqs_b = {f.seq for f in fb}
    union = seqs_a | seqs_b
    assert len(fa) == len(seqs_a) and len(fb) == len(seqs_b), "duplicate frame to one viewer"
    assert len(fa) >= 10 and len(fb) >= 10
    # Every JPEG encoded went to some viewer (at most the last request's answer went to none),
    # and most went to both: one encode per frame, not one per viewer.
    assert encodes <= len(union) + 2, f"{encodes} encodes for {len(union)} distinct frames"
    assert len(fa) + len(fb) >= 1.5 * len(union), (len(fa), len(fb), len(union))


def test_a_stalled_viewer_does_not_slow_another() -> None:
    with ServerThread(["--max-stream-fps", "10"], fps=30) as srv:

        async def scenario() -> tuple[int, int, int]:
            fast = await WsClient.connect(srv.port)
            alone = await fast.run_acking(2.0)
            # One viewer that never reads again, and one that floods acks but never reads.
            stalled = stalled_socket(srv.port)
            flooder = stalled_socket(srv.port)
            mask = b"\x00\x00\x00\x00"
            ack = bytes([0x81, 0x80 | len(handlers.ACK)]) + mask + handlers.ACK.encode()
            flooder.sendall(ack * 200)
            together = await fast.run_acking(2.0)
            viewers = get_json(srv.port, "/status")["viewers"]
            fast.close()
            stalled.close()
            flooder.close()
            return alone, together, viewers

        alone, together, viewers = asyncio.run(scenario())
    assert viewers == 3
    assert alone >= 10
    assert together >= 0.8 * alone, f"{together} frames beside stalled viewers, {alone} alone"


def thread_cpu(native_id: int | None) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_event_loop_idles_between_paced_frames() -> None:
    """Waiting out --max-stream-fps is a timer, not a spin: the loop thread stays mostly idle."""
    with ServerThread(["--max-stream-fps", "4"], fps=30) as srv:

        async def scenario() -> float:
            client = await WsClient.connect(srv.port)
            before = thread_cpu(srv._thread.native_id)
            await client.run_acking(2.0)
            used = thread_cpu(srv._thread.native_id) - before
            client.close()
            assert len(client.frames) >= 4
            return used

        used = asyncio.run(scenario())
    assert used < 0.5, f"the event loop thread used {used:.2f} s of CPU in 2 s of 4 fps"


def test_no_viewer_means_no_jpeg_encoding() -> None:
    with ServerThread(fps=30) as srv:
        time.sleep(1.0)
        status = get_json(srv.port, "/status")
        assert status["capture_fps"] > 10, "the camera must be running for this to mean anything"
        assert status["jpeg_encodes"] == 0 and status["viewers"] == 0

        async def one_frame() -> None:
            client = await WsClient.connect(srv.port)
            assert await client.next_frame(5) is not None
            await asyncio.sleep(0.5)  # connected but not acking: costs nothing more
            assert get_json(srv.port, "/status")["viewers"] == 1
            client.close()

        asyncio.run(one_frame())
        assert srv.encodes() == 1
        time.sleep(0.5)
        status = get_json(srv.port, "/status")
        assert status["jpeg_encodes"] == 1 and status["viewers"] == 0


def test_status_json_and_pushed_indicators(tmp_path: Path) -> None:
    with ServerThread(["--record-continuous", str(tmp_path)], fps=30) as srv:
        status = get_json(srv.port, "/status")
        for key in ("source", "resolution", "capture_fps", "viewers", "jpeg_encodes",
                    "recording", "detection", "free_bytes", "uptime"):
            assert key in status, key
        assert status["resolution"] == [320, 240]
        assert status["free_bytes"][str(tmp_path)] > 0
        _, headers, _ = get(srv.port, "/status")
        assert headers["content-type"].startswith("application/json")

        async def scenario() -> None:
            client = await WsClient.connect(srv.port)
            assert await client.next_frame(5) is not None
            assert client.statuses[-1]["detection"] is False
            assert client.statuses[-1]["rec"] == 0
            srv.state.detecting = True
            srv.state.file_opened(str(tmp_path / "20260101-0000.h264"))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                await client.ack()
                await client.next_frame(1)
                last = client.statuses[-1]
                if last["detection"] and last["rec"] == 1:
                    break
            else:
                raise AssertionError(f"indicators not pushed: {client.statuses[-3:]}")
            client.close()

        asyncio.run(scenario())
        status = get_json(srv.port, "/status")
        assert status["detection"] is True and len(status["recording"]) == 1


def test_static_assets_are_local() -> None:
    with ServerThread(camera=False) as srv:
        status, _, page = get(srv.port, "/")
        assert status == 200
        assert b"http://" not in page and b"https://" not in page, "a CDN reference in the page"
        for asset in (b"style.css", b"live.js", b"favicon.svg"):
            assert b"/static/" + asset in page
            code, _, body = get(srv.port, "/static/" + asset.decode())
            assert code == 200 and body
            assert (b"http://" not in body and b"https://" not in body) or asset == b"favicon.svg"


def test_stop_returns_promptly_with_a_viewer_connected() -> None:
    srv = ServerThread(fps=30)
    with srv:
        client_sock = stalled_socket(srv.port)
        t = time.monotonic()
        srv.stop.set()
        srv._thread.join(3)
        took = time.monotonic() - t
        assert not srv._thread.is_alive(), "web.run did not return after stop was set"
        client_sock.settimeout(2)
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
    assert took < 2.0
    opcodes = [op for op, _ in ws_frames(data)]
    assert 0x2 in opcodes, "the viewer did not get its first frame"
    assert opcodes[-1] == 0x8, f"no websocket close frame at the end: {opcodes}"


@pytest.mark.slow
def test_real_daemon_serves_paced_frames(tmp_path: Path) -> None:
    """Against pancake.py itself (testsrc): frames, pacing, /status, SIGTERM."""
    daemon = Daemon(flags=["--fps", "15", "--max-stream-fps", "5"], log=tmp_path / "pancake.log")
    with daemon:

        async def scenario() -> WsClient:
            client = await WsClient.connect(daemon.port)
            await client.run_acking(2.5)
            viewers = get_json(daemon.port, "/status")["viewers"]
            assert viewers == 1
            client.close()
            return client

        client = asyncio.run(scenario())
        status = get_json(daemon.port, "/status")
    frames = client.frames
    seqs = [f.seq for f in frames]
    assert len(frames) >= 6 and seqs == sorted(set(seqs))
    assert decodes_as_jpeg(frames[-1].jpeg) == (320, 240)
    assert (len(frames) - 1) / (frames[-1].at - frames[0].at) <= 5 * 1.1
    assert status["jpeg_encodes"] <= len(frames) + 2
    assert daemon.proc is not None and daemon.proc.returncode == 0, (tmp_path / "pancake.log").read_text()
    assert struct.calcsize("!Qdff") == handlers.HEADER.size == 24


def test_camera_credentials_never_reach_a_viewer() -> None:
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
    assert b"rtsp://camera.invalid:554/stream1" in page and b"hunter2" not in page
    assert status["source"] == "url:rtsp://camera.invalid:554/stream1"
    assert all("hunter2" not in s["source"] for s in statuses) and statuses


def test_a_busy_port_is_one_clear_error() -> None:
    import socket
    import threading

    from web_helpers import HOST

    from raspberry_pancake.recorder import config as recorder_config
    from raspberry_pancake.recorder.frames import LatestFrame
    from raspberry_pancake.recorder.state import RecorderState

    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = recorder_config.parse(["--port", str(port)])
        with pytest.raises(recorder_config.ConfigError) as err:
            web.run(RecorderState(cfg, "testsrc", LatestFrame()), threading.Event(), address=HOST)
    assert f"--port {port}" in str(err.value) and "\n" not in str(err.value)
