"""Frames and hardware-encoded packets from a Raspberry Pi camera, through picamera2."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    turned,
    video_frame,
    yuv420_planes,
)
from raspberry_pancake.shared.logs import RateLimiter, with_camera

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
# Each of picamera2's stop(), stop_encoder() and close() gets this long. stop() waits, with no
# timeout of its own, for picamera2's event loop to run it, and waits for ever if that loop's
# thread has died (picamera2.py stop(): dispatch_functions(..., wait=True)).
STOP_TIMEOUT = 5.0
# The exit code when picamera2 did not let go of the camera in time: EX_UNAVAILABLE (sysexits.h).
EXIT_CAMERA_STUCK = 69
# A sensor timestamp within this much of time.monotonic() is on the same clock (libcamera on a
# Pi stamps with CLOCK_MONOTONIC); farther off, it is some other base and we measure the offset.
CLOCK_TOLERANCE = 1.0
# The VideoCore H.264 encoder of a Pi 4 and earlier (H.264 level 4.0) records at most this,
# either way up; larger, its VIDIOC_STREAMON fails (picamera2 issue #753).
HARDWARE_ENCODER_MAX = Size(1920, 1080)
# Frames waiting for the "picam-frames" thread (turn, scale, stamp, hand on): a deeper queue
# would only make the live view later; the oldest is dropped.
FRAME_QUEUE = 2
# The stream format we ask for and can read; libcamera may substitute another (a USB camera's
# YUYV or MJPEG) and picamera2 then reports that without an error.
FORMAT = "YUV420"
# picamera2 versions with a fault that touches us, and what it does.
KNOWN_BAD = {
    "0.3.32": "its MappedArray does not flush the CPU cache (fixed in 0.3.33), so the clock "
              "burned into hardware-encoded recordings may be missing: apt upgrade python3-picamera2",
}


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

    Where the encoder has force_key_frame() (picamera2 0.3.32 on), the camera asks for an IDR
    at each split time and the segment starts there; before, a keyframe comes every second
    (iperiod = fps) and a segment starts at most a second after its split time.
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
    keeps in `encoder.firsttimestamp` (V4L2 and libav encoders alike). It calls outputframe
    from the encoder's own thread (the V4L2 encoder's poll thread), with three arguments
    before 0.3.23 and five since: both are taken.
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


def picamera2_version() -> str | None:
    """The installed picamera2's version (Debian's python3-picamera2 carries its metadata)."""
    try:
        return importlib.metadata.version("picamera2")
    except importlib.metadata.PackageNotFoundError:
        return None


def is_usb(info: dict[str, Any]) -> bool:
    """A camera picamera2 lists that is a USB one (its libcamera id is a USB path)."""
    return "/usb" in str(info.get("Id", ""))


def csi_camera_index() -> str | None:
    """For `--source auto`: the index (as picamera2:N takes it) of the first camera picamera2
    lists that is not a USB one, or None. picamera2 lists USB cameras too, after the others;
    those go through V4L2, which reads their YUYV and MJPEG."""
    if importlib.util.find_spec("picamera2") is None:
        return None
    try:
        picamera2 = importlib.import_module("picamera2")
        cameras = picamera2.Picamera2.global_camera_info()
    except (ImportError, RuntimeError, OSError) as exc:
        log.info("picamera2 lists no camera: %s", exc)
        return None
    for index, info in enumerate(cameras):
        if not is_usb(info):
            return str(index)
    return None


def hardware_encoder_fits(size: Size) -> bool:
    limit = HARDWARE_ENCODER_MAX
    return ((size.width <= limit.width and size.height <= limit.height)
            or (size.width <= limit.height and size.height <= limit.width))


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


# What picamera2 and libcamera raise when a camera is missing, busy or misconfigured. KeyError:
# start_encoder reads camera_ctrl_info["FrameDurationLimits"], which a USB camera may lack, and
# stop_encoder removes the encoder from a set that a failed start_encoder never added it to.
_CAMERA_ERRORS = (RuntimeError, IndexError, ValueError, OSError, KeyError)


def _new_picamera2(cls: Any, index: int) -> Any:
    """`cls(index)`, closing what a failed __init__ left open. Picamera2 makes its notify pipe
    before it acquires the camera, and close() returns early for a camera that never opened
    (picamera2.py __init__ and close()): a busy camera (another process has it) would leak the
    pipe's write end at every reopen, and its read end until the half-made object is
    collected. Built in two steps so that the half-made object is ours to clean."""
    picam = cls.__new__(cls)
    try:
        picam.__init__(index)
    except _CAMERA_ERRORS:
        _close_notify_pipe(picam)
        raise
    return picam


def _close_notify_pipe(picam: Any) -> None:
    """Close a half-made Picamera2's notify pipe, only while its reader is still open: a
    picamera2 that cleans up after itself has closed both, and closing a descriptor twice
    would close whatever file reused the number meanwhile."""
    reader = getattr(picam, "notifymeread", None)
    writer = getattr(picam, "notifyme_w", None)
    if reader is None or getattr(reader, "closed", True):
        return
    with contextlib.suppress(OSError):
        reader.close()
    if isinstance(writer, int):
        with contextlib.suppress(OSError):
            os.close(writer)


@dataclass
class _Outcome:
    done: bool = False
    error: BaseException | None = None


def _within(timeout: float, step: Callable[[], object]) -> _Outcome:
    """Run a picamera2 call that may never return in a thread of its own, for `timeout` s.
    Not done: the thread is left blocked inside picamera2 (a daemon; it cannot be stopped)."""
    outcome = _Outcome()

    def run() -> None:
        try:
            step()
        except _CAMERA_ERRORS as exc:
            outcome.error = exc
        outcome.done = True

    thread = threading.Thread(target=with_camera(run), name="picam-stop", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome


@dataclass(frozen=True, slots=True)
class _Captured:
    """A frame copied out of picamera2's buffer, still to be turned, scaled and stamped."""

    seq: int
    image: av.VideoFrame
    mono: float
    wall: float
    stamped: bool  # the clock is in it already (it came from the stream that records)


class Picamera2Camera:
    """A Pi camera: picamera2 captures, a pre_callback stamps the clock and hands frames on, and
    the VideoCore's H.264 encoder (picamera2's H264Encoder) records.

    A Pi 5 has no hardware encoder: there picamera2's H264Encoder is its LibavH264Encoder, libx264
    on the CPU. We then ask the pipeline for its libx264 encoder instead (encoder_config): the same work,
    plus an IDR exactly at each split time, and no dependence on the PyAV build picamera2 expects
    (it calls VideoFrame.from_ndarray(width=...), which Raspberry Pi's python3-av has and PyPI's
    av, which the venv puts first, lacks until picamera2 caught up).

    Threads: picamera2's own (its event loop calls pre_callback holding picamera2's lock, before
    the encoder gets the frame: so the callback only stamps and copies; the V4L2 encoder's poll
    thread calls the output); "picam-frames", which turns, scales and stamps the copies for the
    viewers and detectors; "picam-watch", which reopens the camera when frames stop; and a
    "picam-stop" per picamera2 stop/close call, which may hang in picamera2.
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
        self._idr = SplitClock(cfg.record_split)  # when to ask the encoder for an IDR
        self._out: Outputs | None = None
        self._stamp = ArrayStamp(cfg.annotate_text_size)
        self._annotate = Annotator(cfg.annotate_text_size)
        self._reformatter = VideoReformatter()  # one swscale context, used by picam-frames only
        self._stall_after = max(STALL_SECONDS, STALL_FRAMES / cfg.fps)
        self._last_frame = 0.0  # time.monotonic() of the newest frame (or a start grace)
        self._got_frame = threading.Event()  # a frame since the camera was last started
        self._captured: queue.Queue[_Captured | None] = queue.Queue(FRAME_QUEUE)
        self._frames_thread: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._software = False  # picamera2 has no hardware encoder here: we encode (see above)
        self._seq = 0
        self.frames = 0
        self.outages = 0
        self.stop_failed = False  # picamera2 did not let go in time: exit with EXIT_CAMERA_STUCK

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._plan = StreamPlan.of(self._cfg)
        except ValueError as exc:
            raise SourceError(f"source {self.name}: {exc}") from None
        self._mods = _import_picamera2(self.name)
        version = picamera2_version()
        if version in KNOWN_BAD:
            log.warning("picamera2 %s: %s", version, KNOWN_BAD[version])
        info = self._listed()
        self.name = f"picamera2:{self.index} {info.get('Model', 'camera')}"
        self._software = getattr(self._mods.H264Encoder, "__name__", "").startswith("Libav")
        if self._plan.encode is not None:
            size = self._plan.size(self._plan.encode)
            if self._software:
                log.info("%s: no hardware H.264 encoder (Pi 5): recording with libx264 on the CPU",
                         self.name)
            elif not hardware_encoder_fits(size):
                raise SourceError(
                    f"source {self.name}: the hardware H.264 encoder of this Pi records at most "
                    f"{HARDWARE_ENCODER_MAX}, not {size}: lower --resolution or --record-resize")
        if self._plan.turn:
            log.warning("%s: --rotation %d is done in software on the live view and detect() "
                        "frames; recordings are not rotated (the sensor can only flip)",
                        self.name, self._plan.turn)
        self._picam = self._configure()

    def _listed(self) -> dict[str, Any]:
        """This camera's entry in picamera2's list. Looked at before every Picamera2(): that
        opens a pipe before it looks the camera up and leaks it when the camera is missing."""
        assert self._mods is not None
        try:
            cameras = self._mods.Picamera2.global_camera_info()
        except _CAMERA_ERRORS as exc:
            raise SourceError(f"source {self.name}: cannot list cameras: {exc}") from None
        if self.index >= len(cameras):
            raise SourceError(f"source {self.name}: no such camera ({len(cameras)} attached)")
        return dict(cameras[self.index])

    def _configure(self) -> Any:
        """A new Picamera2 for this camera, configured; SourceError if that fails."""
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None
        usb = is_usb(self._listed())
        try:
            picam = _new_picamera2(mods.Picamera2, self.index)
        except _CAMERA_ERRORS as exc:
            raise SourceError(f"source {self.name}: cannot open: {exc}") from None
        try:
            lores = None if plan.lores is None else {
                "size": (plan.lores.width, plan.lores.height), "format": FORMAT}
            config = picam.create_video_configuration(
                main={"size": (plan.main.width, plan.main.height), "format": FORMAT},
                lores=lores,
                # picamera2's default raw={} adds a raw stream: its buffers (buffer_count
                # full sensor frames) for nothing we read.
                raw=None,
                transform=mods.Transform(hflip=plan.hflip, vflip=plan.vflip),
                # FrameRate is picamera2's name for fixed FrameDurationLimits, which a USB
                # camera behind libcamera may not advertise (picamera2 would then refuse it).
                controls=({"FrameRate": self._cfg.fps}
                          if "FrameDurationLimits" in picam.camera_controls else {}),
                encode=plan.encode or "main")
            picam.configure(config)
            self._check_streams(picam.camera_configuration(), usb)
        except (*_CAMERA_ERRORS, SourceError) as exc:
            self._close(picam, None)
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"source {self.name}: cannot configure: {exc}") from None
        return picam

    def _check_streams(self, actual: dict[str, Any], usb: bool) -> None:
        """libcamera may change what we asked for and picamera2 reports its answer silently: a
        format we cannot read is refused; a size is resized back, which costs a little CPU."""
        plan = self._plan
        assert plan is not None
        for stream in ("main", "lores") if plan.lores is not None else ("main",):
            got = actual[stream]["format"]
            if got != FORMAT:
                hint = (": it is a USB camera; use --source /dev/videoN (V4L2) for it" if usb
                        else "")
                raise SourceError(f"source {self.name}: the camera gives {got} frames, not "
                                  f"{FORMAT}{hint}")
        got_size = Size(*actual[plan.frames]["size"])
        if got_size != plan.size(plan.frames):
            log.warning("%s: camera gives %s frames instead of %s; resizing them", self.name,
                        got_size, plan.size(plan.frames))

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
        # with_camera: under --config, these threads' lines name the camera they serve.
        self._frames_thread = threading.Thread(target=with_camera(self._deliver),
                                               name="picam-frames", daemon=True)
        self._frames_thread.start()
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
        self._watch = threading.Thread(target=with_camera(self._watchdog), name="picam-watch",
                                       daemon=True)
        self._watch.start()

    def _run(self, picam: Any) -> None:
        """Start `picam` (configured) and, when recording, its encoder. Called holding _swap."""
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None and self._stamper is not None
        picam.pre_callback = self._on_request
        encoder = None
        started = False  # start_encoder returned: picamera2 holds the encoder
        try:
            if plan.encode is not None and not self._software:
                size = plan.size(plan.encode)
                fps = self._cfg.fps
                # repeat: SPS/PPS before every IDR, so every segment and clip decodes alone.
                encoder = mods.H264Encoder(bitrate=bitrate_for(size, fps), repeat=True,
                                           iperiod=max(1, round(fps)), framerate=fps)
                output = _packet_output(mods.Output, encoder, self._stamper)
                picam.start_encoder(encoder, output, name=plan.encode)
                started = True
            self._last_frame = time.monotonic() + START_GRACE
            self._got_frame.clear()
            picam.start()
        except _CAMERA_ERRORS as exc:
            self._close(picam, encoder, started)
            raise SourceError(f"source {self.name}: cannot start: {exc}") from None
        self._picam, self._encoder = picam, encoder

    def _on_request(self, request: Any) -> None:
        """picamera2's pre_callback, on its event loop. Nothing may escape: picamera2's event
        loop thread dies of it (NullPreview.handle_request re-raises), and with it every later
        frame and picamera2's stop()."""
        try:
            self._capture(request)
        except Exception as exc:  # noqa: BLE001 (see the docstring)
            _limit.log(log, logging.ERROR, "frame", "%s: frame dropped: %s: %s", self.name,
                       type(exc).__name__, exc)

    def _capture(self, request: Any) -> None:
        """Stamp the clock into the buffer that records, copy what viewers need, hand on."""
        mods, plan = self._mods, self._plan
        assert mods is not None and plan is not None
        now = time.monotonic()
        self._last_frame = now
        stamp_ns = request.get_metadata().get("SensorTimestamp")
        mono = self._clock.mono(int(stamp_ns) // 1000) if stamp_ns is not None else now
        wall = wall_of(mono)
        record: av.VideoFrame | None = None
        if plan.encode is not None:
            encoder = self._encoder
            if self._idr.due(mono, wall) and encoder is not None:
                force = getattr(encoder, "force_key_frame", None)  # picamera2 0.3.32 on
                if force is not None:
                    force()  # this very frame is encoded as an IDR
            size = Size(*request.config[plan.encode]["size"])
            with mods.MappedArray(request, plan.encode) as m:
                self._stamp(m.array, size.width, size.height, wall)
                if self._software and self._out is not None and self._out.encode is not None:
                    record = video_frame(yuv420_planes(m.array, size.width, size.height), 0)
        if record is not None and plan.frames == plan.encode:
            image = record  # one copy serves both: the encoder touches only pts and pict_type
        else:
            size = Size(*request.config[plan.frames]["size"])
            with mods.MappedArray(request, plan.frames) as m:
                image = video_frame(yuv420_planes(m.array, size.width, size.height), 0)
        self.frames += 1
        self._seq += 1
        self._got_frame.set()
        out = self._out
        if record is not None and out is not None and out.encode is not None:
            out.encode(Frame(self._seq, record, mono, wall))
        self._queue(_Captured(self._seq, image, mono, wall, plan.frames == plan.encode))

    def _queue(self, item: _Captured) -> None:
        """Hand a copy to picam-frames; if it is behind, the oldest waiting frame goes."""
        while True:
            try:
                self._captured.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._captured.get_nowait()
                except queue.Empty:
                    continue
                _limit.log(log, logging.WARNING, "behind", "%s: turning and scaling frames is "
                           "behind the camera: a frame for viewers and detectors dropped",
                           self.name)

    def _deliver(self) -> None:
        """picam-frames: turn, scale and stamp each copy, and hand it to viewers and detectors."""
        plan = self._plan
        assert plan is not None
        want = self._cfg.frame_size
        while True:
            item = self._captured.get()
            if item is None:
                return
            try:
                image = turned(item.image, plan.turn) if plan.turn else item.image
                if (image.width, image.height) != (want.width, want.height):
                    image = self._reformatter.reformat(image, want.width, want.height, "yuv420p")
                if not item.stamped:
                    self._annotate(image, item.wall)  # after the turn, so the clock reads upright
            except (ValueError, av.FFmpegError) as exc:
                _limit.log(log, logging.ERROR, "deliver", "%s: frame dropped: %s", self.name, exc)
                continue
            out = self._out
            if out is None:
                continue
            try:
                out.frame(Frame(item.seq, image, item.mono, item.wall))
            except Exception as exc:  # noqa: BLE001 (a fault downstream must not end the frames)
                _limit.log(log, logging.ERROR, "sink", "%s: frame dropped: %s: %s", self.name,
                           type(exc).__name__, exc)

    # --- failure and reopening -----------------------------------------------------------

    def _watchdog(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            silent = time.monotonic() - self._last_frame
            if silent > self._stall_after:
                self.outages += 1
                log.warning("%s failed (no frame for %.1f s); reopening with backoff", self.name,
                            silent)
                out = self._out
                if out is not None:
                    out.failed(f"no frame for {silent:.1f} s")
                if not self._reopen():
                    return
                if out is not None:
                    out.failed(None)

    def _reopen(self) -> bool:
        """Reopen until the camera delivers a frame again (one that opens and stays silent is
        still down) or stop() is called: True; False if picamera2 keeps the camera for good."""
        since = time.monotonic()
        with self._swap:
            picam, encoder, self._picam, self._encoder = self._picam, self._encoder, None, None
        if picam is not None and not self._close(picam, encoder):
            return self._held()
        backoff = BACKOFF_START
        first_frame = START_GRACE + self._stall_after
        while not self._stop.is_set():
            try:
                picam = self._configure()
                with self._swap:
                    if self._stop.is_set():
                        self._close(picam, None)
                        return True
                    assert self._stamper is not None
                    self._stamper.restart()
                    if self._out is not None:
                        self._out.reopened()
                    self._run(picam)
                if not self._first_frame(first_frame):
                    with self._swap:
                        picam, encoder, self._picam, self._encoder = (
                            self._picam, self._encoder, None, None)
                    if picam is not None and not self._close(picam, encoder):
                        return self._held()
                    raise SourceError(f"source {self.name}: opened, but no frame in "
                                      f"{first_frame:.1f} s")
            except SourceError as exc:
                log.debug("%s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            log.info("%s is back after %.1f s; recording resumes in a new segment", self.name,
                     time.monotonic() - since)
            return True
        return True

    def _first_frame(self, timeout: float) -> bool:
        """Wait for the reopened camera's first frame, or stop(): True if a frame came."""
        deadline = time.monotonic() + timeout
        while not self._got_frame.wait(WATCH_INTERVAL):
            if self._stop.is_set() or time.monotonic() > deadline:
                return False
        return True

    def _held(self) -> bool:
        self.stop_failed = True
        log.error("%s: picamera2 did not let go of the camera; not reopening it (pancake must be "
                  "restarted)", self.name)
        return False

    def _close(self, picam: Any, encoder: Any, started: bool = True) -> bool:
        """Stop the camera, then the encoder (which flushes to the output), then close: the
        order of picamera2's own stop_recording. Each call gets STOP_TIMEOUT: close() lets go
        of the camera even when stop() hung on a dead event loop. Failures are logged: we are
        letting go anyway. False if close() did not return in time."""
        steps: list[tuple[str, Callable[[], object]]] = [("stop", picam.stop)]
        if encoder is not None and started:
            steps.append(("stop_encoder", lambda: picam.stop_encoder(encoder)))
        elif encoder is not None and getattr(encoder, "running", False):
            steps.append(("encoder stop", encoder.stop))  # its start() raised inside picamera2
        steps.append(("close", picam.close))
        closed = True
        for what, step in steps:
            outcome = _within(STOP_TIMEOUT, step)
            if not outcome.done:
                self.stop_failed = True
                closed = what != "close"
                log.error("%s: picamera2's %s() did not return in %.0f s (its event loop died?); "
                          "going on without it", self.name, what, STOP_TIMEOUT)
            elif outcome.error is not None:
                log.warning("%s: %s failed: %s", self.name, what, outcome.error)
        return closed

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=JOIN_TIMEOUT + 3 * STOP_TIMEOUT)
            if self._watch.is_alive():
                log.warning("%s: watchdog still inside picamera2; leaving it", self.name)
        if not self._swap.acquire(timeout=JOIN_TIMEOUT):
            log.error("%s: camera busy in a reopen; not waiting for it", self.name)
            self.stop_failed = True
            return
        try:
            picam, encoder, self._picam, self._encoder = self._picam, self._encoder, None, None
        finally:
            self._swap.release()
        if picam is not None:
            self._close(picam, encoder)
        if self._frames_thread is not None:
            try:  # after the last frame: picamera2 has stopped calling us
                self._captured.put(None, timeout=JOIN_TIMEOUT)
            except queue.Full:
                pass  # picam-frames is stuck: the join below says so
            self._frames_thread.join(timeout=JOIN_TIMEOUT)
            if self._frames_thread.is_alive():
                log.error("%s: picam-frames did not finish in time", self.name)
        if self.stop_failed:
            log.error("%s: picamera2 did not stop cleanly; exit code %d", self.name,
                      EXIT_CAMERA_STUCK)
