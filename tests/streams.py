"""A network camera on loopback: a live MPEG-TS stream of testsrc2 over HTTP, encoded by libx264,
that remembers the parameter sets and slices it sent so tests can compare recordings byte for byte."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import av
from av.video.frame import PictureType

NAL_SLICE, NAL_IDR, NAL_SPS, NAL_PPS = 1, 5, 7, 8


def nal_units(data: bytes) -> list[bytes]:
    """NAL units of Annex-B bytes, start codes removed (written here, not imported from raspberry_pancake,
    so a bug there cannot hide itself in the test)."""
    return [u for u in (c.rstrip(b"\x00") for c in data.split(b"\x00\x00\x01")) if u]


@dataclass
class Sent:
    """What one connection was sent: its first SPS and every slice NAL unit, in order."""

    sps: bytes | None = None
    keyframes: int = 0
    slices: list[bytes] = field(default_factory=list)


class StreamHandler(http.server.BaseHTTPRequestHandler):
    """Serves the live stream in real time until the server stops or the client leaves."""

    server: StreamServer

    def do_GET(self) -> None:
        srv = self.server
        sent = Sent()
        srv.connections.append(sent)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            with av.open(self.wfile, "w", format="mpegts") as out:
                stream = out.add_stream("libx264", rate=srv.fps)
                stream.width, stream.height, stream.pix_fmt = *srv.size, "yuv420p"
                stream.options = {"preset": "ultrafast", "tune": "zerolatency",
                                  "x264-params": srv.x264_params}
                start = time.monotonic()
                w, h = srv.size
                with av.open(f"testsrc2=size={w}x{h}:rate={srv.fps}", format="lavfi") as src:
                    for i, frame in enumerate(src.decode(video=0)):
                        if srv.down.is_set():
                            return
                        delay = start + i / srv.fps - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        # rawvideo frames come marked I: let the encoder keep its own GOP.
                        frame.pts, frame.pict_type = None, PictureType.NONE
                        for packet in stream.encode(frame):
                            out.mux(self._as_camera(packet, sent))
                        self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, av.FFmpegError, ValueError):
            return

    def _as_camera(self, packet: av.Packet[Any], sent: Sent) -> av.Packet[Any]:
        """Note what goes out; with `headers_once`, drop SPS/PPS after the first keyframe, as
        cameras do that announce them only at the start (or only in their RTSP SDP)."""
        units = nal_units(bytes(packet))
        sent.keyframes += packet.is_keyframe
        for u in units:
            kind = u[0] & 0x1F
            if kind == NAL_SPS and sent.sps is None:
                sent.sps = u
            elif kind in (NAL_SLICE, NAL_IDR):
                sent.slices.append(u)
        if not (self.server.headers_once and packet.is_keyframe and sent.keyframes > 1):
            return packet
        kept = [u for u in units if u[0] & 0x1F not in (NAL_SPS, NAL_PPS)]
        bare = av.Packet(b"".join(b"\x00\x00\x00\x01" + u for u in kept))
        bare.pts, bare.dts, bare.time_base = packet.pts, packet.dts, packet.time_base
        bare.is_keyframe, bare.stream = True, packet.stream
        return bare

    def log_message(self, format: str, *args: object) -> None:
        pass


class StreamServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The camera: 320x240 at `fps`, a keyframe every second, on 127.0.0.1:`port`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, fps: int = 12, size: tuple[int, int] = (320, 240),
                 x264_params: str = "", headers_once: bool = False) -> None:
        self.down = threading.Event()
        self.fps, self.size, self.headers_once = fps, size, headers_once
        self.x264_params = ":".join(p for p in (f"keyint={fps}", x264_params) if p)
        self.connections: list[Sent] = []
        super().__init__(("127.0.0.1", port), StreamHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="ts-server", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.down.set()
        self.shutdown()
        self.server_close()
