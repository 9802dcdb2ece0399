"""picamera2's two streams: which records and which feeds frames; their YUV420 buffers as frames."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from raspberry_pancake.recorder.config import RecorderConfig, Size
from raspberry_pancake.recorder.sources.annotate import Annotator

# Bits per pixel per frame: about 6 Mbit/s at 1080p30, picamera2's "medium" quality.
BITS_PER_PIXEL = 0.1
# The VideoCore encoder's sane range; picamera2 raises the H.264 level itself above 10 Mbit/s.
MIN_BITRATE, MAX_BITRATE = 300_000, 17_000_000

Array = npt.NDArray[np.uint8]


def bitrate_for(size: Size, fps: float) -> int:
    return int(min(max(size.width * size.height * fps * BITS_PER_PIXEL, MIN_BITRATE), MAX_BITRATE))


def _fits(inner: Size, outer: Size) -> bool:
    return inner.width <= outer.width and inner.height <= outer.height


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Which picamera2 stream carries the recording and which the frames, and their sizes.

    picamera2 has a `main` stream and a `lores` one no larger than it, both YUV420 here: the
    larger of (record size, frame size) is main. Sizes are as the sensor delivers them, before
    a 90/270 turn, which the sensor transform cannot do: frames are turned in software, and
    recordings are not turned at all.
    """

    main: Size
    lores: Size | None
    encode: str | None  # "main" or "lores"; None when nothing records
    frames: str  # the stream that feeds viewers and detect()
    turn: int  # 0, 90 or 270: software rotation of frames
    hflip: bool
    vflip: bool

    @classmethod
    def of(cls, cfg: RecorderConfig) -> StreamPlan:
        turn = cfg.rotation if cfg.rotation in (90, 270) else 0

        def unturned(size: Size) -> Size:
            return Size(size.height, size.width) if turn else size

        frame, record = unturned(cfg.frame_size), unturned(cfg.record_size)
        half = cfg.rotation == 180  # a half turn is both flips, which the sensor does
        flips = {"hflip": cfg.hflip != half, "vflip": cfg.vflip != half}
        if not cfg.recording:
            return cls(frame, None, None, "main", turn, **flips)
        # A turned picture is stamped after turning, so it needs a stream of its own.
        if record == frame and not turn:
            return cls(frame, None, "main", "main", turn, **flips)
        if _fits(frame, record):
            return cls(record, frame, "main", "lores", turn, **flips)
        if _fits(record, frame):
            return cls(frame, record, "lores", "main", turn, **flips)
        raise ValueError(f"recording at {record} and frames at {frame}: one must fit inside the "
                         "other (picamera2's lores stream is no larger than main)")

    def size(self, stream: str) -> Size:
        if stream == "lores" and self.lores is not None:
            return self.lores
        return self.main


def yuv420_planes(array: Array, width: int, height: int) -> tuple[Array, Array, Array]:
    """Views of Y, U and V in a picamera2 YUV420 buffer: (height*3/2) rows of `stride` bytes,
    the chroma planes packed at half that stride. Writing to them writes the buffer."""
    if not array.flags["C_CONTIGUOUS"]:
        raise ValueError("YUV420 buffer is not contiguous")
    stride = array.shape[1]
    flat = array.reshape(-1)
    cw, ch, cs = width // 2, height // 2, stride // 2
    u0 = stride * height
    v0 = u0 + cs * ch
    if flat.size < v0 + cs * ch:
        raise ValueError(f"YUV420 buffer of {flat.size} bytes is too small for {width}x{height}")
    y = flat[:u0].reshape(height, stride)[:, :width]
    u = flat[u0:v0].reshape(ch, cs)[:, :cw]
    v = flat[v0:v0 + cs * ch].reshape(ch, cs)[:, :cw]
    return y, u, v


def video_frame(planes: tuple[Array, Array, Array], turn: int) -> av.VideoFrame:
    """A yuv420p VideoFrame copied from plane views (one copy, strides on both sides handled),
    turned clockwise by `turn` degrees (90 or 270) or not at all."""
    if turn:
        k = -1 if turn == 90 else 1  # np.rot90 turns counter-clockwise for positive k
        planes = (np.rot90(planes[0], k), np.rot90(planes[1], k), np.rot90(planes[2], k))
    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, src in zip(frame.planes, planes, strict=True):
        dst = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        dst[:src.shape[0], :src.shape[1]] = src
    return frame


def turned(frame: av.VideoFrame, turn: int) -> av.VideoFrame:
    """A yuv420p frame turned clockwise by `turn` degrees (90 or 270), as a new frame."""
    planes = []
    for i, plane in enumerate(frame.planes[:3]):
        w, h = (frame.width, frame.height) if i == 0 else (frame.width // 2, frame.height // 2)
        planes.append(np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:h, :w])
    return video_frame((planes[0], planes[1], planes[2]), turn)


class ArrayStamp:
    """annotate's clock, written straight into a picamera2 YUV420 buffer, so that the
    hardware encoder records it (the buffer is encoded after pre_callback returns)."""

    def __init__(self, text_height: int) -> None:
        self._annotator = Annotator(text_height)

    def __call__(self, array: Array, width: int, height: int, wall: float) -> None:
        y, u, v = yuv420_planes(array, width, height)
        self._annotator.stamp(y, u, v, width, height, wall)
