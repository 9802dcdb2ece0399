"""Frames and hardware-encoded packets from a Raspberry Pi camera, through picamera2."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.config import RecorderConfig, Size
from raspberry_pancake.recorder.frames import Frame, Packet, PacketSink
from raspberry_pancake.recorder.recording.encode import EncoderConfig
from raspberry_pancake.recorder.recording.splits import SplitClock
from raspberry_pancake.recorder.sources.annotate import Annotator
from raspberry_pancake.recorder.sources.base import BACKOFF_MAX, BACKOFF_START, Outputs, SourceError
from raspberry_pancake.recorder.sources.picam_streams import (
    ArrayStamp,
    StreamPlan,
    bitrate_for,
    video_frame,
    yuv420_planes,
)
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

# No frame for this long (or this many frame intervals, if longer) means the camera failed.
STALL_SECONDS, STALL_FRAMES = 2.0, 10
# A camera just started may take a while to deliver its first frame (sensor and ISP warm-up).
START_GRACE = 3.0
# How often the watchdog looks at the time of the last frame.
WATCH_INTERVAL = 0.25
# Joining the watchdog on stop: it may be inside a reopen attempt.
JOIN_TIMEOUT = 5.0
# A sensor timestamp within this much of time.monotonic() is on the same clock (libcamera on a
# Pi stamps with CLOCK_MONOTONIC); farther off, it is some other base and we measure the offset.
CLOCK_TOLERANCE = 1.0
class SensorClock:
    """Sensor timestamps (µs) to time.monotonic() seconds.

    libcamera stamps frames when the sensor starts exposing them; on a Pi that is CLOCK_MONOTONIC,
    which is time.monotonic(). Should a stack use another base (CLOCK_BOOTTIME after a suspend),
    the offset is measured once, on the first frame, and kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _offset: set by the first caller of either thread
        self._offset: float | None = None

    def mono(self, sensor_us: int) -> float:
        seconds = sensor_us / 1e6
        with self._lock:
            if self._offset is None:
                lag = time.monotonic() - seconds
                self._offset = 0.0 if abs(lag) < CLOCK_TOLERANCE else lag
                if self._offset:
                    log.info("picamera2 timestamps are %.3f s off time.monotonic(); adjusting", lag)
            return seconds + self._offset


def wall_of(mono: float) -> float:
    """The wall-clock time of a monotonic instant in the recent past."""
    return time.time() - (time.monotonic() - mono)


class PacketStamper:
    """Turns picamera2's encoded frames into Packets: capture times, and the keyframe that
    starts each segment (the first at or after a split time, or after the camera came back).

    picamera2's encoder cannot be asked for an IDR; with one every second (iperiod = fps), a
    segment starts at most a second after its split time.
    """

    def __init__(self, split: float, clock: SensorClock, sink: PacketSink) -> None:
        self._split = SplitClock(split)
        self._clock = clock
        self._sink = sink
        self._restart = False

    def restart(self) -> None:
        """The camera was reopened: its first keyframe starts a new segment."""
        self._restart = True

    def __call__(self, data: bytes, keyframe: bool, sensor_us: int | None) -> None:
        mono = self._clock.mono(sensor_us) if sensor_us is not None else time.monotonic()
        wall = wall_of(mono)
        boundary = False
        if keyframe:
            if self._restart:
                self._split.restart(mono, wall)
                boundary, self._restart = True, False
            else:
                boundary = self._split.due(mono, wall)
        self._sink(Packet(data, keyframe, mono, wall, boundary))


def _packet_output(base: Any, encoder: Any, stamper: PacketStamper) -> Any:
    """A picamera2 Output (the encoder checks the class) feeding `stamper`.

    picamera2 passes timestamps in µs from the encoder's first frame, whose sensor time it
    keeps in `encoder.firsttimestamp` (V4L2 and libav encoders alike).
    """

    class PacketOutput(base):  # type: ignore[misc, valid-type]
        def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                        packet: Any = None, audio: bool = False) -> None:
            if audio or frame is None:
                return
            first = getattr(encoder, "firsttimestamp", None)
            sensor_us = None if timestamp is None or first is None else int(first) + int(timestamp)
            stamper(bytes(frame), bool(keyframe), sensor_us)

    return PacketOutput()


def _import_picamera2(label: str) -> SimpleNamespace:
    try:
        picamera2 = importlib.import_module("picamera2")
        encoders = importlib.import_module("picamera2.encoders")
        outputs = importlib.import_module("picamera2.outputs")
        libcamera = importlib.import_module("libcamera")
    except ImportError as exc:
        raise SourceError(f"source {label}: picamera2 is not available ({exc}); on Raspberry Pi OS: "
                          "apt install python3-picamera2, and a venv made with "
                          "--system-site-packages") from None
    return SimpleNamespace(Picamera2=picamera2.Picamera2, MappedArray=picamera2.MappedArray,
                           H264Encoder=encoders.H264Encoder, Output=outputs.Output,
                           Transform=libcamera.Transform)


# What picamera2 and libcamera raise when a camera is missing, busy or misconfigured.
_CAMERA_ERRORS = (RuntimeError, IndexError, ValueError, OSError)


class Picamera2Camera:
    """A Pi camera: picamera2 captures, a pre_callback stamps the clock and hands frames on, and
    the VideoCore's H.264 encoder (picamera2's H264Encoder) records.

    A Pi 5 has no hardware encoder: there picamera2's H264Encoder is its LibavH264Encoder, libx264
    on the CPU. We then ask the pipeline for its libx264 encoder instead (encoder_config): the same work,
    plus an IDR exactly at each split time, and no dependence on the PyAV build picamera2 expects
    (it calls VideoFrame.from_ndarray(width=...), which Raspberry Pi's python3-av has and PyPI's
    av, which the venv puts first, lacks until picamera2 caught up).

    Threads: picamera2's own (its event loop calls pre_callback; its encoder thread calls the
    output), and "picam-watch", which reopens the camera when frames stop.
    """

    def __init__(self, index: int, cfg: RecorderConfig) -> None:
        self.index = index
        self.name = f"picamera2:{index}"
        self._cfg = cfg
        self._plan: StreamPlan | None = None
        self._mods: SimpleNamespace | None = None
        self._stop = threading.Event()
        # Guards _picam and _encoder: the watchdog swaps them on a reopen, stop() takes them.
        self._swap = threading.Lock()
        self._picam: Any = None
        self._encoder: Any = None
        self._clock = SensorClock()
        self._stamper: PacketStamper | None = None
        self._out: Outputs | None = None
        self._stamp = ArrayStamp(cfg.annotate_text_size)
        self._annotate = Annotator(cfg.annotate_text_size)
        self._reformatter = VideoReformatter()  # one swscale context for every frame
        self._stall_after = max(STALL_SECONDS, STALL_FRAMES / cfg.fps)
        self._last_frame = 0.0  # time.monotonic() of the newest frame (or a start grace)
        self._watch: threading.Thread | None = None
        self._software = False  # picamera2 has no hardware encoder here: we encode (see above)
        self._seq = 0
        self.frames = 0
        self.outages = 0

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._plan = StreamPlan.of(self._cfg)
        except ValueError as exc:
            raise SourceError(f"source {self.name}: {exc}") from None
        self._mods = _import_picamera2(self.name)
        try:
            cameras = self._mods.Picamera2.global_camera_info()
        except _CAMERA_ERRORS as exc:
            raise SourceError(f"source {self.name}: cannot list cameras: {exc}") from None
        if self.index >= len(cameras):
            raise SourceError(f"source {self.name}: no such camera ({len(cameras)} attached)")
        self.name = f"picamera2:{self.index} {cameras[self.index].get('Model', 'camera')}"
        self._software = getattr(self._mods.H264Encoder, "__name__", "").startswith("Libav")
        if self._software and self._plan.encode is not None:
            log.info("%s: no hardware H.264 encoder (Pi 5): recording with libx264 on the CPU",
                     self.name)
        if self._plan.turn:
            log.warning("%s: --rotation %d is done in software on the live view and detect() "
                        "frames; recordings are not rotated (the sensor can only flip)",
                        self.name, self._plan.turn)
        self._picam = self._configure()

    def _configure(self) -> Any:
        """A new Picamera2 for this camera, configured; SourceError if that fails."""
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None
        try:
            picam = mods.Picamera2(self.index)
        except _CAMERA_ERRORS as exc:
            raise SourceError(f"source {self.name}: cannot open: {exc}") from None
        try:
            lores = None if plan.lores is None else {
                "size": (plan.lores.width, plan.lores.height), "format": "YUV420"}
            config = picam.create_video_configuration(
                main={"size": (plan.main.width, plan.main.height), "format": "YUV420"},
                lores=lores,
                transform=mods.Transform(hflip=plan.hflip, vflip=plan.vflip),
                # FrameRate is picamera2's name for fixed FrameDurationLimits, which a USB
                # camera behind libcamera may not advertise (picamera2 would then refuse it).
                controls=({"FrameRate": self._cfg.fps}
                          if "FrameDurationLimits" in picam.camera_controls else {}),
                encode=plan.encode or "main")
            picam.configure(config)
            self._check_sizes(picam.camera_configuration())
        except _CAMERA_ERRORS as exc:
            self._close(picam, None)
            raise SourceError(f"source {self.name}: cannot configure: {exc}") from None
        return picam

    def _check_sizes(self, actual: dict[str, Any]) -> None:
        """libcamera may adjust sizes; frames are resized back, which costs a little CPU."""
        plan = self._plan
        assert plan is not None
        got = Size(*actual[plan.frames]["size"])
        if got != plan.size(plan.frames):
            log.warning("%s: camera gives %s frames instead of %s; resizing them", self.name, got,
                        plan.size(plan.frames))

    # --- running -------------------------------------------------------------------------

    def encoder_config(self) -> EncoderConfig | None:
        if self._mods is None:
            self.open()
        if not self._software or self._plan is None or self._plan.encode is None:
            return None
        # Frames to record come from the stream that records, at its size: never scaled.
        return EncoderConfig(size=None, fps=self._cfg.fps, split=self._cfg.record_split)

    def start(self, out: Outputs) -> None:
        if self._mods is None:
            self.open()
        self._out = out
        self._stamper = PacketStamper(self._cfg.record_split, self._clock, out.packet)
        with self._swap:
            try:
                if self._picam is None:
                    self._picam = self._configure()
                self._run(self._picam)
            except SourceError as exc:
                # Opened a moment ago, failing now: the watchdog reopens it with backoff.
                self._picam = None
                self._last_frame = time.monotonic() - self._stall_after
                log.warning("%s", exc)
        self._watch = threading.Thread(target=self._watchdog, name="picam-watch", daemon=True)
        self._watch.start()

    def _run(self, picam: Any) -> None:
        """Start `picam` (configured) and, when recording, its encoder. Called holding _swap."""
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None and self._stamper is not None
        picam.pre_callback = self._on_request
        encoder = None
        try:
            if plan.encode is not None and not self._software:
                size = plan.size(plan.encode)
                fps = self._cfg.fps
                # repeat: SPS/PPS before every IDR, so every segment and clip decodes alone.
                encoder = mods.H264Encoder(bitrate=bitrate_for(size, fps), repeat=True,
                                           iperiod=max(1, round(fps)), framerate=fps)
                output = _packet_output(mods.Output, encoder, self._stamper)
                picam.start_encoder(encoder, output, name=plan.encode)
            self._last_frame = time.monotonic() + START_GRACE
            picam.start()
        except _CAMERA_ERRORS as exc:
            self._close(picam, encoder)
            raise SourceError(f"source {self.name}: cannot start: {exc}") from None
        self._picam, self._encoder = picam, encoder

    def _on_request(self, request: Any) -> None:
        """picamera2's pre_callback, on its event loop: before the encoder reads the buffer."""
        try:
            self._frame_from(request)
        except (ValueError, RuntimeError, KeyError, av.FFmpegError) as exc:
            _limit.log(log, logging.ERROR, "frame", "%s: frame dropped: %s", self.name, exc)

    def _frame_from(self, request: Any) -> None:
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None
        now = time.monotonic()
        self._last_frame = now
        stamp_ns = request.get_metadata().get("SensorTimestamp")
        mono = self._clock.mono(int(stamp_ns) // 1000) if stamp_ns is not None else now
        wall = wall_of(mono)
        record: av.VideoFrame | None = None
        if plan.encode is not None:
            size = Size(*request.config[plan.encode]["size"])
            with mods.MappedArray(request, plan.encode) as m:
                self._stamp(m.array, size.width, size.height, wall)
                if self._software and self._out is not None and self._out.encode is not None:
                    record = video_frame(yuv420_planes(m.array, size.width, size.height), 0)
        size = Size(*request.config[plan.frames]["size"])
        if record is not None and plan.frames == plan.encode and not plan.turn:
            image = record  # one copy serves both: the encoder touches only pts and pict_type
        else:
            with mods.MappedArray(request, plan.frames) as m:
                image = video_frame(yuv420_planes(m.array, size.width, size.height), plan.turn)
        want = self._cfg.frame_size
        if (image.width, image.height) != (want.width, want.height):
            image = self._reformatter.reformat(image, want.width, want.height, "yuv420p")
        if plan.frames != plan.encode:
            self._annotate(image, wall)  # after the turn, so the clock reads upright
        self.frames += 1
        self._seq += 1
        out = self._out
        if out is not None:
            out.frame(Frame(self._seq, image, mono, wall))
            if record is not None and out.encode is not None:
                out.encode(Frame(self._seq, record, mono, wall))

    # --- failure and reopening -----------------------------------------------------------

    def _watchdog(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            silent = time.monotonic() - self._last_frame
            if silent > self._stall_after:
                self.outages += 1
                log.warning("%s failed (no frame for %.1f s); reopening with backoff", self.name,
                            silent)
                self._reopen()

    def _reopen(self) -> None:
        since = time.monotonic()
        with self._swap:
            picam, encoder, self._picam, self._encoder = self._picam, self._encoder, None, None
        if picam is not None:
            self._close(picam, encoder)  # delivers what the encoder still holds
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                picam = self._configure()
                with self._swap:
                    if self._stop.is_set():
                        self._close(picam, None)
                        return
                    assert self._stamper is not None
                    self._stamper.restart()
                    if self._out is not None:
                        self._out.reopened()
                    self._run(picam)
            except SourceError as exc:
                log.debug("%s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            log.info("%s is back after %.1f s; recording resumes in a new segment", self.name,
                     time.monotonic() - since)
            return

    def _close(self, picam: Any, encoder: Any) -> None:
        """Stop the camera, then the encoder (which flushes to the output), then close: the
        order of picamera2's own stop_recording. Failures are logged: we are letting go anyway."""
        steps: list[tuple[str, Callable[[], object]]] = [("stop", picam.stop)]
        if encoder is not None:
            steps.append(("stop encoder", lambda: picam.stop_encoder(encoder)))
        steps.append(("close", picam.close))
        for what, step in steps:
            try:
                step()
            except _CAMERA_ERRORS as exc:
                log.warning("%s: %s failed: %s", self.name, what, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=JOIN_TIMEOUT)
            if self._watch.is_alive():
                log.warning("%s: watchdog still inside picamera2; leaving it", self.name)
        if not self._swap.acquire(timeout=JOIN_TIMEOUT):
            log.error("%s: camera busy in a reopen; not waiting for it", self.name)
            return
        try:
            picam, encoder, self._picam, self._encoder = self._picam, self._encoder, None, None
        finally:
            self._swap.release()
        if picam is not None:
            self._close(picam, encoder)
