"""A network camera that goes away and comes back: pancake reopens it with backoff, says so
once, and recording resumes in a new segment that decodes alone."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from pathlib import Path

import av
from conftest import Pancake, free_port, run_pancake
from recordings import decode

FPS = 12


class StreamHandler(http.server.BaseHTTPRequestHandler):
    """Serves a live MPEG-TS stream of testsrc2, in real time, until the server stops."""

    server: StreamServer

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            with av.open(self.wfile, "w", format="mpegts") as out:
                stream = out.add_stream("libx264", rate=FPS)
                stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
                stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
                start = time.monotonic()
                with av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi") as src:
                    for i, frame in enumerate(src.decode(video=0)):
                        if self.server.down.is_set():
                            return
                        delay = start + i / FPS - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        frame.pts = None
                        out.mux(stream.encode(frame))
                        self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, av.FFmpegError, ValueError):
            return

    def log_message(self, format: str, *args: object) -> None:
        pass


class StreamServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.down = threading.Event()
        super().__init__(("127.0.0.1", port), StreamHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="ts-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.down.set()
        self.shutdown()
        self.server_close()


def test_camera_outage_resumes_in_new_segment(tmp_path: Path, pancakes: list[Pancake]) -> None:
    port = free_port()
    server = StreamServer(port)
    try:
        p = run_pancake(pancakes, ["--source", f"http://127.0.0.1:{port}/live.ts", "--fps",
                                   str(FPS), "--resolution", "320", "240",
                                   "--record-continuous", str(tmp_path)], tmp_path)
        time.sleep(5)
        server.stop()  # the camera reboots
        time.sleep(3)
        server = StreamServer(port)
        p.wait_for("is back after", timeout=20)
        time.sleep(3)
        rc, _ = p.stop()
    finally:
        server.stop()
    log = p.log()
    assert rc == 0, log
    assert log.count("reopening with backoff") == 1, log  # one line for the whole outage
    segs = sorted(tmp_path.glob("*.h264"))
    assert len(segs) >= 2, log
    recs = [decode(s, 0) for s in segs]
    assert all(r.first_is_key and r.frames == len(r.pts_ms) for r in recs)
    assert recs[0].frames >= 3 * FPS and recs[-1].frames >= 2 * FPS
