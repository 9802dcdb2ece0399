"""Stand-in for picamera2's hardware H264Encoder: libx264 through PyAV plays the VideoCore encoder."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np

from ..request import MappedArray
from .encoder import Encoder, Quality

# picamera2's suggested bitrates for 1080p30, in Mbit/s, scaled by pixels per second.
_BITRATE_TABLE = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9,
                  Quality.VERY_HIGH: 15}


def yuv420_frame(array: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A picamera2 YUV420 buffer ((height*3/2) x stride, chroma rows at half stride) as a frame."""
    stride = array.shape[1]
    flat = array.reshape(-1)
    cw, ch, cs = width // 2, height // 2, stride // 2
    y = flat[:stride * height].reshape(height, stride)[:, :width]
    u0 = stride * height
    u = flat[u0:u0 + cs * ch].reshape(ch, cs)[:, :cw]
    v = flat[u0 + cs * ch:u0 + 2 * cs * ch].reshape(ch, cs)[:, :cw]
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, src in zip(frame.planes, (y, u, v), strict=True):
        dst = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        dst[:src.shape[0], :src.shape[1]] = src
    return frame


class H264Encoder(Encoder):
    """H264Encoder(bitrate, repeat, iperiod, framerate, ...) as picamera2's V4L2 one takes them.

    `repeat` puts SPS/PPS before every IDR; `iperiod` is the distance between IDRs. Frames are
    encoded as they arrive; each packet goes to the outputs with its keyframe flag and its
    timestamp in µs from the first frame, as the V4L2 encoder's poll thread does.
    """

    def __init__(self, bitrate: int | None = None, repeat: bool = True, iperiod: int | None = None,
                 framerate: float | None = None, enable_sps_framerate: bool = False,
                 qp: int | None = None, profile: str | None = None) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.repeat = repeat
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        self._ctx: Any = None

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            complexity = self.width * self.height * (self.framerate or 30)
            self.bitrate = int(_BITRATE_TABLE[quality] * 1_000_000 * complexity / (1920 * 1080 * 30))

    def _start(self) -> None:
        if self.format != "YUV420":
            raise RuntimeError(f"stand-in encoder takes YUV420, not {self.format}")
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.framerate = Fraction(self.framerate or 30).limit_denominator(1001)
        if self.bitrate is not None:
            ctx.bit_rate = self.bitrate
        params = ["scenecut=0"]
        if self.iperiod is not None:
            params.append(f"keyint={self.iperiod}:min-keyint={self.iperiod}")
        if self.repeat:
            params.append("repeat-headers=1")
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": ":".join(params)}
        ctx.open()
        self._ctx = ctx

    def _encode(self, stream: Any, request: Any) -> None:
        timestamp_us = self._timestamp(request)
        with MappedArray(request, stream) as m:
            frame = yuv420_frame(m.array, self.width, self.height)
        frame.pts = timestamp_us
        for packet in self._ctx.encode(frame):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts)

    def _stop(self) -> None:
        for packet in self._ctx.encode(None):
            self.outputframe(bytes(packet), packet.is_keyframe, timestamp=packet.pts)
        self._ctx = None
