"""Frames from any source PyAV opens, paced, annotated, turned; reopened on failure; H.264 passed through."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import av.filter

from raspberry_pancake.recorder.config import RecorderConfig, Size
from raspberry_pancake.recorder.frames import Frame
from raspberry_pancake.recorder.recording.encode import EncoderConfig
from raspberry_pancake.recorder.sources.annotate import Annotator
from raspberry_pancake.recorder.sources.base import (
    BACKOFF_MAX,
    BACKOFF_START,
    Outputs,
    SourceError,
    SourceSpec,
)
from raspberry_pancake.recorder.sources.passthrough import Passthrough
from raspberry_pancake.shared.logs import camera_scope, thread_camera

log = logging.getLogger(__name__)

# A packet as read from the source, with the (monotonic, wall) time it was read.
PacketHook = Callable[["av.packet.Packet[Any]", float, float], None]
# Network sources: seconds to connect, and to wait for data before calling it an outage.
OPEN_TIMEOUT, READ_TIMEOUT = 10.0, 5.0
# How long stop() waits for the capture thread: pancake must exit within 2 s.
STOP_TIMEOUT = 0.8


class AVInput:
    """One opening of a PyAV input, with the filter graph that makes its frames ours:
    scaled to --resolution, yuv420p, flipped and rotated."""

    def __init__(self, spec: SourceSpec, cfg: RecorderConfig,
                 wall_clock: Callable[[], float] = time.time) -> None:
        # The wall clock stamps capture times (it names files and places splits); a test may
        # hand in one that jumps, as a Pi's does when NTP first sets it.
        self.wall_clock = wall_clock
        self.spec = spec
        self._cfg = cfg
        self._container: av.container.InputContainer | None = None
        self._graph: av.filter.Graph | None = None

    def _transforms(self) -> list[tuple[str, str]]:
        cfg = self._cfg
        steps: list[tuple[str, str]] = []
        if cfg.hflip:
            steps.append(("hflip", ""))
        if cfg.vflip:
            steps.append(("vflip", ""))
        if cfg.rotation == 90:
            steps.append(("transpose", "clock"))
        elif cfg.rotation == 180:
            steps += [("hflip", ""), ("vflip", "")]
        elif cfg.rotation == 270:
            steps.append(("transpose", "cclock"))
        return steps

    def open(self) -> None:
        cfg, spec = self._cfg, self.spec
        size = cfg.resolution
        try:
            if spec.kind == "testsrc":
                # Generated in libavfilter: motion, colour bars, a frame counter; the clock is ours.
                chain = [f"testsrc2=size={size}:rate={cfg.fps:g}", "format=yuv420p"]
                chain += [f"{n}={a}" if a else n for n, a in self._transforms()]
                self._container = av.open(",".join(chain), format="lavfi")
            elif spec.kind == "device":
                self._container = av.open(spec.target, format="v4l2", options={
                    "video_size": f"{size}", "framerate": f"{cfg.fps:g}"})
            elif spec.kind == "url":
                options = {"rtsp_transport": "tcp"} if spec.target.startswith("rtsp") else {}
                self._container = av.open(spec.target, options=options,
                                          timeout=(OPEN_TIMEOUT, READ_TIMEOUT))
            else:
                self._container = av.open(spec.target)
            if not self._container.streams.video:
                raise SourceError(f"source {spec}: has no video stream")
        except (av.FFmpegError, OSError) as exc:
            self.close()
            raise SourceError(f"source {spec}: cannot open: {exc}") from None
        if spec.kind != "testsrc":
            self._graph = self._build_graph(self._container.streams.video[0], size)

    def _build_graph(self, stream: av.video.stream.VideoStream, size: Size) -> av.filter.Graph:
        graph = av.filter.Graph()
        node = graph.add_buffer(template=stream)
        steps = [("scale", f"{size.width}:{size.height}"), ("format", "yuv420p"),
                 *self._transforms()]
        if ("vflip", "") in steps:
            # vflip hands out its input upside down through negative line strides; the
            # annotator writes through the planes' buffers, so it needs an ordinary frame.
            steps.append(("copy", ""))
        for name, args in steps:
            nxt = graph.add(name, args) if args else graph.add(name)
            node.link_to(nxt)
            node = nxt
        sink = graph.add("buffersink")
        node.link_to(sink)
        graph.configure()
        return graph

    @property
    def stream(self) -> av.video.stream.VideoStream:
        if self._container is None:
            raise SourceError(f"source {self.spec}: not open")
        return self._container.streams.video[0]

    def frames(self, on_packet: PacketHook | None = None
               ) -> Iterator[tuple[av.VideoFrame, float | None]]:
        """Decoded frames with their media time in seconds (None when the source has none);
        `on_packet` sees every packet read, as read, after it has been decoded."""
        container = self._container
        if container is None:
            raise SourceError(f"source {self.spec}: not open")
        try:
            for packet in container.demux(container.streams.video[0]):
                read = time.monotonic(), self.wall_clock()
                # Decode first: a bitstream filter in the hook takes the packet's data.
                decoded = packet.decode()
                if on_packet is not None:
                    on_packet(packet, *read)
                for frame in decoded:
                    yield from self._filtered(frame)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"source {self.spec}: {exc}") from None
        raise SourceError(f"source {self.spec}: ended")

    def _filtered(self, frame: av.VideoFrame) -> Iterator[tuple[av.VideoFrame, float | None]]:
        media_time = frame.time
        if self._graph is None:
            yield frame, media_time
            return
        self._graph.push(frame)
        while True:
            try:
                out = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            assert isinstance(out, av.VideoFrame)
            yield out, media_time

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._graph = None


class Pacer:
    """Releases frames at the rate a live camera would: real time for generated and file
    sources, and at most --fps for cameras that deliver more."""

    def __init__(self, fps: float, realtime: bool) -> None:
        self._interval = 1.0 / fps
        self._realtime = realtime
        self._anchor: tuple[float, float] | None = None  # (monotonic, media time) of the start
        self._count = 0
        self._next = 0.0

    def reset(self) -> None:
        self._anchor, self._count, self._next = None, 0, 0.0

    def delay(self, media_time: float | None, now: float) -> float | None:
        """Seconds to wait before releasing this frame, or None to skip it."""
        if self._realtime:
            if self._anchor is None:
                self._anchor = (now, media_time or 0.0)
            self._count += 1
            offset = (media_time - self._anchor[1] if media_time is not None
                      else (self._count - 1) * self._interval)
            due = self._anchor[0] + offset
            if due < now - 1.0:  # fell far behind (a stall): start over, never burst to catch up
                self._anchor, self._count = (now, media_time or 0.0), 1
                return 0.0
            return max(0.0, due - now)
        if now < self._next - self._interval / 2:
            return None
        self._next = max(self._next + self._interval, now)
        return 0.0


class CaptureThread(threading.Thread):
    """Reads the source, stamps capture times, annotates, and hands each frame on."""

    def __init__(self, source: AVInput, cfg: RecorderConfig, out: Outputs, stop: threading.Event,
                 passthrough: Passthrough | None = None) -> None:
        super().__init__(name="capture", daemon=True)
        self._log_camera = thread_camera()  # its lines name the camera under --config
        self._source = source
        self._cfg = cfg
        self._out = out
        self._passthrough = passthrough
        self._stop_event = stop
        self._annotate = Annotator(cfg.annotate_text_size)
        realtime = source.spec.kind in ("testsrc", "file")
        self._pacer = Pacer(cfg.fps, realtime)
        self.frames = 0

    def run(self) -> None:
        with camera_scope(self._log_camera):
            self._capture()

    def _capture(self) -> None:
        backoff = BACKOFF_START
        outage_since: float | None = None
        while not self._stop_event.is_set():
            try:
                if outage_since is not None:
                    self._source.open()
                    log.info("%s is back after %.1f s; recording resumes in a new segment",
                             self._source.spec, time.monotonic() - outage_since)
                    outage_since, backoff = None, BACKOFF_START
                    self._pacer.reset()
                    self._out.reopened()
                    self._out.failed(None)
                self._pump()
                return
            except SourceError as exc:
                self._source.close()
                if self._stop_event.is_set():
                    return
                if outage_since is None:
                    outage_since = time.monotonic()
                    if self._source.spec.kind == "file" and str(exc).endswith("ended"):
                        log.info("%s ended: playing it again", self._source.spec)
                    else:
                        reason = str(exc).partition(": ")[2] or str(exc)
                        log.warning("%s failed (%s); reopening with backoff", self._source.spec,
                                    reason)
                        self._out.failed(reason)
                self._stop_event.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _pump(self) -> None:
        on_packet: PacketHook | None = None
        if self._passthrough is not None:
            self._passthrough.open(self._source.stream)  # each opening: a new segment
            on_packet = self._passthrough.feed
        for image, media_time in self._source.frames(on_packet):
            if self._stop_event.is_set():
                return
            delay = self._pacer.delay(media_time, time.monotonic())
            if delay is None:
                continue
            if delay > 0 and self._stop_event.wait(delay):
                return
            frame = Frame(self.frames, image, time.monotonic(), self._source.wall_clock())
            self._annotate(image, frame.wall)
            self.frames += 1
            self._out.frame(frame)
            if self._out.encode is not None:
                self._out.encode(frame)


class AVCamera:
    """Any source PyAV can open (testsrc, V4L2 devices, RTSP/HTTP, files). Recorded as the
    camera sends it when that is H.264 and no picture change is asked, else by the pipeline's
    libx264 encoder."""

    def __init__(self, spec: SourceSpec, cfg: RecorderConfig,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.name = str(spec)
        self._cfg = cfg
        self._input = AVInput(spec, cfg, wall_clock)
        self._stop = threading.Event()
        self._capture: CaptureThread | None = None

    def open(self) -> None:
        self._input.open()

    def _can_pass_through(self) -> bool:
        """A live H.264 source whose picture we need not change: resizing, flipping and
        rotating all need a re-encode. Files stay re-encoded: they are re-timed to play in real
        time, and their packets carry the file's clock, not a capture time."""
        cfg = self._cfg
        return (self._input.spec.kind in ("url", "device")
                and self._input.stream.codec_context.name == "h264"
                and cfg.record_resize is None
                and not (cfg.vflip or cfg.hflip or cfg.rotation))

    def encoder_config(self) -> EncoderConfig | None:
        cfg = self._cfg
        if not cfg.recording or self._can_pass_through():
            return None
        return EncoderConfig(size=cfg.record_size, fps=cfg.fps, split=cfg.record_split)

    def start(self, out: Outputs) -> None:
        cfg = self._cfg
        passthrough: Passthrough | None = None
        if cfg.recording and self._can_pass_through():
            log.info("%s sends H.264: recording it as is (passthrough, no re-encode); the "
                     "date and time are burned into the live view only, not into recordings",
                     self.name)
            passthrough = Passthrough(cfg.record_split, out.packet)
        self._capture = CaptureThread(self._input, cfg, out, self._stop, passthrough)
        self._capture.start()

    def stop(self) -> None:
        self._stop.set()
        blocked = False
        if self._capture is not None:
            # A network read can block up to READ_TIMEOUT; exit must not wait that long.
            self._capture.join(timeout=STOP_TIMEOUT)
            blocked = self._capture.is_alive()
            if blocked:
                log.warning("capture thread still blocked in the source; leaving it")
        if not blocked:  # never close a container another thread is reading
            self._input.close()
