"""One camera's H.264 encoder (libx264), run by its pipeline: frames in, packets out to the writers."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.config import Size
from raspberry_pancake.recorder.frames import Frame, Packet, PacketSink
from raspberry_pancake.recorder.recording.splits import SplitClock
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.inbox import Inbox
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

# Packet times travel beside the encoder in this unit; ms is finer than any camera's frame rate.
TIME_BASE = Fraction(1, 1000)
# Frames waiting for the encoder: a second's worth rides out a hiccup without unbounded memory.
QUEUE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    size: Size | None  # encode at this size (--record-resize); None: as captured
    fps: float
    split: float  # seconds between clock-aligned segment boundaries
    preset: str = "ultrafast"
    crf: int = 23


class H264Encoder:
    """libx264 through PyAV: ultrafast, zerolatency, an IDR at least every second and at every
    split boundary, so every segment and clip starts with SPS/PPS + IDR and decodes alone."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self._cfg = cfg
        self._ctx: av.video.codeccontext.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        self._clock = SplitClock(cfg.split)
        self._origin: float | None = None
        self._last_pts = -1
        # Capture times of frames inside the encoder. zerolatency has no B-frames and no
        # lookahead, so packets leave in the order frames went in.
        self._pending: deque[tuple[float, float, bool]] = deque()
        self._restart = False
        # Shared across frames: frame.reformat() sets up a new swscale context every call.
        self._reformatter = VideoReformatter()

    def restart(self) -> None:
        """The source came back: the next frame starts a new segment."""
        self._restart = True

    def _open(self, width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
        ctx = av.CodecContext.create("libx264", "w")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = TIME_BASE
        ctx.framerate = Fraction(self._cfg.fps).limit_denominator(1001)
        keyint = max(1, int(self._cfg.fps))
        ctx.options = {
            "preset": self._cfg.preset,
            "tune": "zerolatency",
            "crf": str(self._cfg.crf),
            # forced-idr: a keyframe we ask for is an IDR, so a file may start there.
            "x264-params": f"keyint={keyint}:min-keyint=1:forced-idr=1:repeat-headers=1",
        }
        ctx.open()
        self._size = (width, height)
        return ctx

    def encode(self, frame: Frame) -> list[Packet]:
        image = frame.image
        size = self._cfg.size
        if size is not None and (image.width, image.height) != (size.width, size.height):
            image = self._reformatter.reformat(image, size.width, size.height, "yuv420p")
        elif image.format.name != "yuv420p":
            image = self._reformatter.reformat(image, format="yuv420p")
        # The picture is shared with the viewers; its pts and pict_type are the encoder's alone.
        out: list[Packet] = []
        if self._ctx is None or self._size != (image.width, image.height):
            out += self.flush()
            self._ctx = self._open(image.width, image.height)
            self._restart = True
        boundary = self._clock.due(frame.mono, frame.wall)
        if self._restart:
            self._clock.restart(frame.mono, frame.wall)
            boundary, self._restart = True, False
        if self._origin is None:
            self._origin = frame.mono
        pts = max(int((frame.mono - self._origin) * 1000), self._last_pts + 1)
        self._last_pts = pts
        image.pts, image.time_base = pts, TIME_BASE
        image.pict_type = PictureType.I if boundary else PictureType.NONE
        self._pending.append((frame.mono, frame.wall, boundary))
        out += self._packets(self._ctx.encode(image))
        return out

    def _packets(self, packets: Sequence[av.packet.Packet[Any]]) -> list[Packet]:
        out = []
        for p in packets:
            mono, wall, boundary = self._pending.popleft() if self._pending else (0.0, 0.0, False)
            out.append(Packet(bytes(p), bool(p.is_keyframe), mono, wall, boundary and p.is_keyframe))
        return out

    def flush(self) -> list[Packet]:
        if self._ctx is None:
            return []
        try:
            return self._packets(self._ctx.encode(None))
        finally:
            self._ctx = None
            self._pending.clear()


class EncoderThread(Stage):
    """Takes frames from a bounded queue, encodes them, hands packets to the writers' queues."""

    def __init__(self, cfg: EncoderConfig, sinks: Sequence[PacketSink]) -> None:
        super().__init__("encoder")
        self._cfg = cfg
        self._encoder = H264Encoder(cfg)
        self._sinks = tuple(sinks)
        self._inbox: Inbox[Frame] = Inbox(max(2, int(cfg.fps * QUEUE_SECONDS)), "encoder", log)
        self.encoded = 0

    def put(self, frame: Frame) -> None:
        """Called by the capture thread; never blocks it. A full queue drops the frame, logged."""
        self._inbox.offer(frame)

    def restart(self) -> None:
        """Source came back: the next frame starts a new segment (thread-safe: read per frame)."""
        self._encoder.restart()

    def request_stop(self) -> None:
        """Encode what is queued, flush, then end. Never waits (Inbox.close())."""
        self._inbox.close()

    def salvage(self, stopping: bool) -> None:
        """The encoder's state is unknown after an exception: a fresh one, whose first frame
        is an IDR at a boundary, so the writers close their file and start a new one."""
        self._encoder = H264Encoder(self._cfg)
        if stopping:
            for _ in self._inbox:
                pass

    def run(self) -> None:
        for frame in self._inbox:
            try:
                packets = self._encoder.encode(frame)
            except (av.FFmpegError, ValueError) as exc:
                _limit.log(log, logging.ERROR, "encode", "encoder failed on a frame: %s", exc)
                self._encoder.flush()
                continue
            self.encoded += 1
            self._deliver(packets)
        self._deliver(self._encoder.flush())

    def _deliver(self, packets: list[Packet]) -> None:
        for packet in packets:
            for sink in self._sinks:
                sink(packet)
