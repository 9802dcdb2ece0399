"""Stand-in for picamera2's hardware H264Encoder (a V4L2Encoder): libx264 plays the VideoCore.

As picamera2/encoders/v4l2_encoder.py and h264_encoder.py (0.3.x):
- _encode (v4l2_encoder.py lines 282-330), on the camera's event loop, only queues the frame:
  it acquires the request, blocks for one of 16 output buffers (NUM_OUTPUT_BUFFERS, line 117),
  and hands the dmabuf over; the encoder reads the buffer's memory (the `device` side: what
  the CPU wrote reaches it only through MappedArray's flush, see request.py).
- A poll thread of the encoder's own (thread_poll, lines 207-280; started in _start, line 58)
  calls the outputs with (bytes, keyframe, timestamp) and releases the request; stop() joins
  it after it has drained what was queued (lines 163-164, 212).
- force_key_frame() exists since 0.3.32 (h264_encoder.py line 110 in v0.3.32, 124 now): the next
  frame queued is encoded as an IDR (v4l2_encoder.py lines 303-308).
- The VideoCore codec (bcm2835-codec, Pi 4 and earlier) encodes at most H.264 level 4.0 frames:
  8192 macroblocks and 2048 pixels across, so about 1920x1080; larger, VIDIOC_STREAMON fails
  with an OSError from _start (v4l2_encoder.py line 159; picamera2 issue #753, "video encode is
  limited to 1920x1080"). picamera2 itself checks nothing. Encoder.start has set _running
  before _start runs, and the device and poll thread _start opened stay open.
"""

from __future__ import annotations

import errno
import queue
import threading
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType

from .. import _standin
from .encoder import Encoder, Quality

_BITRATE_TABLE = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9,
                  Quality.VERY_HIGH: 15}
NUM_OUTPUT_BUFFERS = 16
MAX_MACROBLOCKS, MAX_WIDTH = 8192, 2048


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
    """H264Encoder(bitrate, repeat, iperiod, framerate, ...) as picamera2's V4L2 one takes them."""

    _HARDWARE = True  # reads the buffer by DMA, and has the VideoCore's size limit

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
        self._key_frames_requested = 0
        self._key_frames_generated = 0
        self._ctx: Any = None
        self._frames: queue.Queue[tuple[Any, int, bool]] = queue.Queue()
        self._buf_available: queue.Queue[int] = queue.Queue()
        self.thread: threading.Thread | None = None

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            complexity = self.width * self.height * (self.framerate or 30)
            self.bitrate = int(_BITRATE_TABLE[quality] * 1_000_000 * complexity / (1920 * 1080 * 30))

    def _start(self) -> None:
        self._frames = queue.Queue()
        self._buf_available = queue.Queue()
        self.thread = threading.Thread(target=self.thread_poll, daemon=True)
        self.thread.start()
        if self.format != "YUV420":
            raise RuntimeError(f"stand-in encoder takes YUV420, not {self.format}")
        macroblocks = ((self.width + 15) // 16) * ((self.height + 15) // 16)
        if self._HARDWARE and (macroblocks > MAX_MACROBLOCKS or self.width > MAX_WIDTH):
            raise OSError(errno.EINVAL, "Invalid argument")  # VIDIOC_STREAMON
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.framerate = Fraction(self.framerate or 30).limit_denominator(1001)
        if self.bitrate is not None:
            ctx.bit_rate = self.bitrate
        params = ["scenecut=0", "forced-idr=1"]
        if self.iperiod is not None:
            params.append(f"keyint={self.iperiod}:min-keyint={self.iperiod}")
        if self.repeat:
            params.append("repeat-headers=1")
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": ":".join(params)}
        ctx.open()
        self._ctx = ctx
        for i in range(NUM_OUTPUT_BUFFERS):
            self._buf_available.put(i)

    def _encode(self, stream: Any, request: Any) -> None:
        if self._ctx is None:
            return
        force = self._key_frames_requested > self._key_frames_generated
        if force:
            self._key_frames_generated += 1
        request.acquire()
        timestamp_us = self._timestamp(request)
        self._buf_available.get()  # blocks the event loop while 16 frames are in the encoder
        self._frames.put((request, timestamp_us, force))

    def thread_poll(self) -> None:
        while self._running or self._frames.qsize() > 0:
            try:
                request, timestamp_us, force = self._frames.get(timeout=0.4)
            except queue.Empty:
                if not self._running:
                    break
                continue
            buf = request.buffers[self.name]
            frame = yuv420_frame(buf.device if self._HARDWARE else buf.cpu, self.width, self.height)
            request.release()
            self._buf_available.put(0)
            frame.pts = timestamp_us
            frame.pict_type = PictureType.I if force else PictureType.NONE
            for packet in self._ctx.encode(frame):
                self.outputframe(bytes(packet), packet.is_keyframe, packet.pts)

    def _stop(self) -> None:
        if self.thread is not None:
            self.thread.join()
        if self._ctx is not None:
            for packet in self._ctx.encode(None):
                self.outputframe(bytes(packet), packet.is_keyframe, packet.pts)
        self._ctx = None

    if _standin.VERSION >= (0, 3, 32):
        def force_key_frame(self) -> None:
            """Force a key frame to be encoded in the video stream as soon as possible."""
            self._key_frames_requested += 1
