"""Stand-in for picamera2.picamera2: Picamera2, as picamera2 0.3.x runs it on a Pi (not picamera2).

Line numbers cite raspberrypi/picamera2 picamera2/picamera2.py at v0.3.36 (0.3.2x-0.3.3x agree).
What stands in for the hardware: a "fake-libcamera-N" thread per started camera generates
`testsrc2` frames with libavfilter at the configured frame rate into the request buffers
allocated at configure (buffer_count of them: a frame finds no free buffer and is dropped while
they are all held), stamps `SensorTimestamp` in CLOCK_MONOTONIC ns as libcamera does on a Pi,
and wakes the event loop through the notify pipe. The event loop is picamera2's: a NullPreview
thread running process_requests (pre_callback under self.lock, jobs, post_callback, encoders).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import av
import libcamera
import numpy as np

from . import _standin
from .encoders import Encoder
from .job import Job
from .outputs import Output
from .platform import Platform, get_platform
from .previews import NullPreview
from .request import CompletedRequest, FrameBuffer

_log = logging.getLogger(__name__)
_STRIDE_ALIGN = 64
_USB_FORMAT = "YUYV"  # what libcamera's UVC pipeline offers instead of YUV420 (or MJPEG)


class ControlInfo(NamedTuple):
    min: Any
    max: Any
    default: Any


def _stride(width: int, fmt: str) -> int:
    if fmt == "YUYV":
        return width * 2
    return -(-width // _STRIDE_ALIGN) * _STRIDE_ALIGN


def _shape(stream: dict[str, Any]) -> tuple[int, ...]:
    h = stream["size"][1]
    if stream["format"] in ("YUV420", "YVU420"):
        return (h * 3 // 2, stream["stride"])
    if stream["format"] == "MJPEG":
        return (stream["framesize"],)
    return (h, stream["stride"])


def _write_yuv420(frame: av.VideoFrame, buf: np.ndarray) -> None:
    """A yuv420p frame as picamera2's YUV420 buffer lays it out (padding kept)."""
    height, stride = frame.height, buf.shape[1]
    flat = buf.reshape(-1)
    cs, ch = stride // 2, height // 2
    targets = (flat[:stride * height].reshape(height, stride),
               flat[stride * height:stride * height + cs * ch].reshape(ch, cs),
               flat[stride * height + cs * ch:stride * height + 2 * cs * ch].reshape(ch, cs))
    for plane, dst in zip(frame.planes, targets, strict=True):
        src = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        dst[:, :plane.width] = src[:dst.shape[0], :plane.width]


class Picamera2:
    """One camera. Raises IndexError for a number that is not listed, RuntimeError if busy."""

    platform = get_platform()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        """Lines 296-312: one dict per camera libcamera enumerates. Rotation only where the
        driver reports it (not for USB); Num is libcamera's index; sorted with USB
        cameras last (key ("/usb" not in Id, Id), reverse=True), and Picamera2(n) indexes this
        sorted list, not libcamera's."""
        cameras: list[dict[str, Any]] = []
        for num, spec in enumerate(_standin.present()):
            info: dict[str, Any] = {"Model": spec.model, "Location": 2}
            if not spec.usb:
                info["Rotation"] = 180
            cameras.append(info | {"Id": spec.id, "Num": num})
        return sorted(cameras, key=lambda cam: ("/usb" not in cam["Id"], cam["Id"]), reverse=True)

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None,
                 allocator: Any = None) -> None:
        # Lines 338-344: the notify pipe is made before the camera is looked up. If the lookup
        # (IndexError) or the acquire fails, is_open stays False and close() returns before
        # closing the pipe (line 712): the write end leaks; the read end, a file object,
        # is closed when the half-made object is collected.
        self.notifyme_r, self.notifyme_w = os.pipe2(os.O_NONBLOCK)
        self.notifymeread = os.fdopen(self.notifyme_r, "rb")
        self._preview: NullPreview | None = None
        self.is_open = False
        info = self.global_camera_info()[camera_num]
        spec = next(s for s in _standin.present() if s.id == info["Id"])
        self.camera_idx = info["Num"]
        self._spec = spec
        self.request_lock = threading.Lock()
        self._requestslock = threading.Lock()
        self._requests: list[CompletedRequest] = []
        self._reset_flags()
        try:
            _standin.acquire(spec.key)  # camera.acquire(), line 574
        except RuntimeError as e:
            _log.error("Camera __init__ sequence did not complete.")
            raise RuntimeError("Camera __init__ sequence did not complete.") from e
        self.camera: Any = spec
        self.is_open = True
        if spec.usb:
            self.sensor_format, modes = "YUYV", [((1920, 1080), 8), ((1280, 720), 8), ((640, 480), 8)]
        else:
            self.sensor_format, modes = _standin.SENSORS.get(spec.model, _standin.SENSORS["imx708"])
        self._raw_modes = modes
        self.sensor_resolution = max(size for size, _ in modes)
        # camera.controls and camera.properties as libcamera reports them (lines 540-546).
        # "ColorFilterArrangement" is what _is_rpi_camera (line 762) tests; a USB camera has
        # neither FrameDurationLimits nor NoiseReductionMode.
        if spec.usb:
            self.camera_ctrl_info = {n: (n, ControlInfo(*v)) for n, v in {
                "Brightness": (-1.0, 1.0, 0.0), "Contrast": (0.0, 2.0, 1.0)}.items()}
            self.camera_properties_ = {"Model": spec.model, "Location": 2}  # External
        else:
            self.camera_ctrl_info = {n: (n, ControlInfo(*v)) for n, v in {
                "FrameDurationLimits": (8333, 1_000_000_000, 33333), "NoiseReductionMode": (0, 4, 0),
                "ExposureTime": (1, 66_000_000, 20000)}.items()}
            self.camera_properties_ = {"Model": spec.model, "PixelArraySize": self.sensor_resolution,
                                       "Location": 2, "Rotation": 180, "ColorFilterArrangement": 0}
        atexit.register(self.close)  # line 374

    def _reset_flags(self) -> None:
        """Lines 382-407."""
        self.camera = None
        self.camera_ctrl_info: dict[str, tuple[str, ControlInfo]] = {}
        self.camera_config: dict[str, Any] = {}
        self.stream_map: dict[str, Any] = {}
        self.started = False
        self.stop_count = 0
        self.configure_count = 0
        self.frames = 0
        self._job_list: list[Job] = []
        self._encoders: set[Encoder] = set()
        self.pre_callback: Callable[[CompletedRequest], None] | None = None
        self.post_callback: Callable[[CompletedRequest], None] | None = None
        self.completed_requests: list[CompletedRequest] = []
        self.lock = threading.Lock()  # protects the _job_list and completed_requests fields
        self._event_loop_running = False
        self._preview_stopped = threading.Event()
        self.camera_properties_: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        self._max_queue_len = 1
        self._free: list[dict[str, FrameBuffer]] = []
        self._free_lock = threading.Lock()
        self._producer: threading.Thread | None = None
        self._produce_stop = threading.Event()
        self.raw_buffers_allocated = 0

    @property
    def camera_properties(self) -> dict[str, Any]:
        return {} if self.camera is None else self.camera_properties_

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return {k: (v[1].min, v[1].max, v[1].default) for k, v in self.camera_ctrl_info.items()}

    def _is_rpi_camera(self) -> bool:
        return "ColorFilterArrangement" in self.camera_properties

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- the event loop ------------------------------------------------------------------

    def attach_preview(self, preview: NullPreview) -> None:
        if self._preview:
            raise RuntimeError("Preview is already running")
        self._preview = preview
        self._event_loop_running = True

    def start_preview(self, preview: Any = None, **kwargs: Any) -> None:
        if self._event_loop_running:
            raise RuntimeError("An event loop is already running")
        self._preview_stopped.clear()
        NullPreview(**kwargs).start(self)

    def detach_preview(self) -> None:
        self._preview = None
        self._event_loop_running = False
        self._preview_stopped.set()

    def stop_preview(self) -> None:
        if self._preview is None:
            raise RuntimeError("No preview specified.")
        try:
            self._preview.stop()
            self._preview_stopped.wait()
        except Exception as e:
            raise RuntimeError("Unable to stop preview.") from e

    def close(self) -> None:
        """Lines 704-735: stops the preview (joining its thread: a dead one joins at once), then,
        if open, stop() — direct now that no event loop is attached — and releases."""
        atexit.unregister(self.close)
        if self._preview:
            self.stop_preview()
        if not self.is_open:
            return
        self.stop()
        assert self._spec is not None
        _standin.release(self._spec.key)
        self.is_open = False
        self.stream_map = {}
        self.camera = None
        self.camera_ctrl_info = {}
        self.camera_config = {}
        self._free = []
        self.notifymeread.close()
        os.close(self.notifyme_w)

    # --- configuration -------------------------------------------------------------------

    @staticmethod
    def _make_initial_stream_config(stream_config: dict[str, Any], updates: dict[str, Any] | None,
                                    ignore_list: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """Lines 737-760 (a mutable {} default argument there; copied here)."""
        if updates is None:
            return None
        stream_config = dict(stream_config)
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if key in valid:
                stream_config[key] = value
            elif key not in ignore_list:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
        return stream_config

    @staticmethod
    def align_stream(stream_config: dict[str, Any], optimal: bool = True) -> None:
        size = stream_config["size"]
        stream_config["size"] = (size[0] - size[0] % 2, size[1] - size[1] % 2)

    def create_video_configuration(self, main: dict[str, Any] | None = None,
                                   lores: dict[str, Any] | None = None,
                                   raw: dict[str, Any] | None = {},  # noqa: B006 (picamera2's default)
                                   transform: libcamera.Transform | None = None,
                                   colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict[str, Any] | None = None, display: str | None = "main",
                                   encode: str | None = "main", queue: bool = True,
                                   sensor: dict[str, Any] | None = None,
                                   use_case: str = "video") -> dict[str, Any]:
        """Lines 881-935. raw={} by default: a raw stream is configured (and its buffers
        allocated) unless raw=None is passed; USB cameras get none (lines 898-901)."""
        if self.camera is None:
            raise RuntimeError("Camera not opened")
        sensor = {} if sensor is None else sensor
        if not self._is_rpi_camera():
            raw = None
            sensor = None
        main_cfg = self._make_initial_stream_config(
            {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main or {})
        assert main_cfg is not None
        self.align_stream(main_cfg, optimal=False)
        lores_cfg = self._make_initial_stream_config(
            {"format": "YUV420", "size": main_cfg["size"], "preserve_ar": False}, lores)
        if lores_cfg is not None:
            self.align_stream(lores_cfg, optimal=False)
        raw_cfg = self._make_initial_stream_config(
            {"format": self.sensor_format, "size": main_cfg["size"]}, raw,
            ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked"))
        if colour_space is None:
            small = main_cfg["size"][0] < 1280 or main_cfg["size"][1] < 720
            colour_space = libcamera.ColorSpace.Smpte170m() if small else libcamera.ColorSpace.Rec709()
        controls = controls or {}
        if "NoiseReductionMode" in self.camera_controls and "FrameDurationLimits" in self.camera_controls:
            controls = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | controls
        config = {"use_case": use_case, "transform": transform or libcamera.Transform(),
                  "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue,
                  "main": main_cfg, "lores": lores_cfg, "raw": raw_cfg, "controls": controls,
                  "sensor": sensor}
        for name, role in ((display, "Display"), (encode, "Encode")):
            if name is not None and config.get(name) is None:
                raise RuntimeError(f"{role} stream {name} was not defined")
        config["display"], config["encode"] = display, encode
        return config

    def _sensor_mode(self, config: dict[str, Any]) -> tuple[int, int]:
        """Lines 1040-1082: the sensor mode scored against sensor output_size, else the raw
        stream's size, else main's — so the mode follows the main size either way."""
        sensor = config.get("sensor") or {}
        want = sensor.get("output_size") or (config["raw"] or config["main"])["size"]

        def score(mode: tuple[tuple[int, int], int]) -> float:
            (w, h), _ = mode

            def fmt(desired: float, actual: float) -> float:
                d = desired - actual
                return -d / 4 if d < 0 else d * 2

            return fmt(want[0], w) + fmt(want[1], h) + 1500 * fmt(want[0] / want[1], w / h)

        return min(self._raw_modes, key=score)[0]

    def configure(self, camera_config: Any = None) -> None:
        """configure_, lines 1159-1280."""
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            raise TypeError("stand-in: pass a configuration dict")
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        if not self._is_rpi_camera():
            config["raw"] = None
        self.camera_config = {}
        if not isinstance(config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        for name in ("main", "lores"):
            stream = config[name]
            if stream is None:
                continue
            w, h = stream["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
        if config["lores"] is not None:
            (mw, mh), (lw, lh) = config["main"]["size"], config["lores"]["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == Platform.VC4 and config["lores"]["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
            if self._spec.usb:
                # libcamera's UVC pipeline has one stream: validate() says Invalid for two.
                raise RuntimeError(f"Invalid camera configuration: {config}")
        # validate() then _update_camera_config (lines 1137-1157): libcamera may change what
        # was asked, and picamera2 copies its answer over ours — the format too, silently
        # (only an info line "Camera configuration has been adjusted!").
        for name in ("main", "lores"):
            stream = config[name]
            if stream is None:
                continue
            if self._spec.usb:
                stream["format"] = _USB_FORMAT
            stream["stride"] = _stride(stream["size"][0], stream["format"])
            rows = stream["size"][1] * (3 if stream["format"] in ("YUV420", "YVU420") else 2) // 2
            stream["framesize"] = stream["stride"] * rows
        if config["raw"] is not None:
            mode = self._sensor_mode(config)
            config["raw"] |= {"size": mode, "stride": mode[0] * 5 // 4}
            config["raw"]["framesize"] = config["raw"]["stride"] * mode[1]
        if self._is_rpi_camera():
            config["sensor"] = {"bit_depth": 10, "output_size": self._sensor_mode(config)}
        # Controls(self, controls=...) (line 1274): every control must be advertised by the
        # camera (controls.py line 32-33, RuntimeError); FrameRate is FrameDurationLimits.
        controls: dict[str, Any] = {}
        for name, value in config["controls"].items():
            if name == "FrameRate":
                name, value = "FrameDurationLimits", (int(1_000_000 / value),) * 2
            if name not in self.camera_ctrl_info:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
            controls[name] = value
        self.controls = controls
        self.stream_map = {"main": "main", "lores": "lores" if config["lores"] else None,
                           "raw": "raw" if config["raw"] else None}
        self._max_queue_len = 1 if config["queue"] and config["buffer_count"] > 1 else 0
        # allocator.allocate (line 1256): buffer_count buffers for every stream, raw included.
        streams = {n: config[n] for n in ("main", "lores", "raw") if config[n] is not None}
        self._free = [{n: FrameBuffer(_shape(s)) for n, s in streams.items()}
                      for _ in range(config["buffer_count"])]
        self.raw_buffers_allocated = config["buffer_count"] if config["raw"] is not None else 0
        self.camera_config = config
        self.configure_count += 1

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return dict(self.camera_config[name])

    # --- running -------------------------------------------------------------------------

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        """Lines 1326-1352: starts the NullPreview event loop unless show_preview is None."""
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if show_preview is not None and not self._event_loop_running:
            self.start_preview(show_preview)
        self.start_()

    def start_(self) -> None:
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self._produce_stop.clear()
        self._producer = threading.Thread(target=self._produce, name=f"fake-libcamera-{self.camera_idx}",
                                          daemon=True)
        self.started = True
        self._producer.start()

    def stop_(self, request: Any = None) -> tuple[bool, None]:
        """Lines 1368-1392: only from the event loop (or directly when none runs)."""
        if self.started:
            self.stop_count += 1
            self._produce_stop.set()
            if self._producer is not None and self._producer is not threading.current_thread():
                self._producer.join()
            self.started = False
            with self._requestslock:
                unseen, self._requests = self._requests, []
            for r in unseen:
                r.release()
            while self.completed_requests:
                self.completed_requests.pop(0).release()
        return (True, None)

    def stop(self) -> None:
        """Lines 1394-1405: with an event loop attached, stop_ is dispatched to it and waited for
        with no timeout — if that loop's thread has died, this never returns."""
        if not self.started:
            return
        if self._preview is not None and self._event_loop_running:
            self.dispatch_functions([self.stop_], wait=True, immediate=True)
        else:
            self.stop_()

    def dispatch_functions(self, functions: list[Callable[[], tuple[bool, Any]]], wait: Any,
                           signal_function: Callable[[Job], None] | None = None,
                           immediate: bool = False) -> Any:
        """Lines 1508-1537."""
        if wait is None:
            wait = signal_function is None
        timeout = None if wait is True else wait
        with self.lock:
            only_job = not self._job_list
            job = Job(functions, signal_function)
            self._job_list.append(job)
            if only_job and (self.completed_requests or immediate):
                os.write(self.notifyme_w, b"\x00")
        return job.get_result(timeout=timeout) if wait else job

    def _produce(self) -> None:
        """libcamera's side: frames at the configured rate into free request buffers."""
        config = self.camera_config
        main, lores = config["main"], config["lores"]
        width, height = main["size"]
        duration = self.controls.get("FrameDurationLimits", (33333, 33333))[0]
        fps = 1_000_000 / duration
        transform = config["transform"]
        chain = [f"testsrc2=size={width}x{height}:rate={fps:g}", "format=yuv420p"]
        chain += ["hflip"] * transform.hflip + ["vflip"] * transform.vflip
        container = av.open(",".join(chain), format="lavfi")
        start = time.monotonic()
        try:
            for n, frame in enumerate(container.decode(video=0)):
                if self._produce_stop.wait(max(0.0, start + n / fps - time.monotonic())):
                    return
                if _standin.unplugged(self._spec.key):
                    self._produce_stop.wait()  # a pulled cable: no request completes any more
                    return
                with self._free_lock:
                    buffers = self._free.pop(0) if self._free else None
                if buffers is None:
                    continue  # every buffer is held: the sensor's frame is lost
                for name, stream in (("main", main), ("lores", lores)):
                    if stream is None:
                        continue
                    w, h = stream["size"]
                    image = frame if (w, h) == (width, height) else frame.reformat(w, h, "yuv420p")
                    staged = np.zeros(_shape(stream), np.uint8)
                    if stream["format"] == "YUV420":
                        _write_yuv420(image, staged)
                    else:
                        staged[...] = 128  # YUYV/MJPEG: shaped right, content not needed here
                    buffers[name].isp_write(staged)
                metadata = {"SensorTimestamp": time.monotonic_ns(), "FrameDuration": duration}
                request = CompletedRequest(self, buffers, metadata, self._recycle)
                with self._requestslock:
                    self._requests.append(request)
                os.write(self.notifyme_w, b"\x00")
        finally:
            container.close()

    def _recycle(self, buffers: dict[str, FrameBuffer]) -> None:
        with self._free_lock:
            if self.camera_config:
                self._free.append(buffers)

    def process_requests(self, display: Any) -> None:
        """Lines 1411-1493: pre_callback runs holding self.lock, before jobs, post_callback and
        the encoders see the frame; whatever it raises goes up to the NullPreview thread."""
        with self._requestslock:
            requests, self._requests = self._requests, []
        self.frames += len(requests)
        with self.lock:
            for req in requests:
                req.acquire()
            self.completed_requests += requests
            if self.pre_callback:
                for req in requests:
                    self.pre_callback(req)
            finished_jobs = []
            while self._job_list:
                if self._job_list[0].execute():
                    finished_jobs.append(self._job_list.pop(0))
                else:
                    break
            for req in requests:
                if self.post_callback:
                    self.post_callback(req)
                if _standin.take_broken(self._spec.key):
                    raise OSError(5, "Input/output error")  # a failed ioctl in an encoder
                for encoder in self._encoders:
                    if encoder.name in self.stream_map:
                        encoder.encode(encoder.name, req)
                req.release()
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()
        for job in finished_jobs:
            job.signal()

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        """The next frame of stream `name`, as a job on the event loop (lines 2163-2191)."""

        def capture() -> tuple[bool, Any]:
            if not self.completed_requests:
                return (False, None)
            return (True, self.completed_requests[-1].make_array(name))

        return self.dispatch_functions([capture], wait)

    # --- encoders ------------------------------------------------------------------------

    def start_encoder(self, encoder: Encoder, output: Output | None = None, pts: Any = None,
                      quality: Any = None, name: str | None = None) -> None:
        """Lines 2434-2477. Reads camera_ctrl_info["FrameDurationLimits"] (line 2468) whatever
        the camera: KeyError on one that has no such control (a USB camera). The encoder
        joins self._encoders only once its start() returned."""
        if output is not None:
            encoder.output = output
        streams = self.camera_configuration()
        if not streams:
            raise RuntimeError("Camera has not been configured")
        name = name or streams["encode"]
        if streams.get(name) is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = streams[name]["size"]
        encoder.format = streams[name]["format"]
        encoder.stride = streams[name]["stride"]
        min_frame_duration = max(self.camera_ctrl_info["FrameDurationLimits"][1].min, 33333)
        if encoder.framerate is None:
            encoder.framerate = 1_000_000 / min_frame_duration
        encoder.start(quality=quality)
        with self.lock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders: Encoder | list[Encoder] | set[Encoder] | None = None) -> None:
        """Lines 2479-2495: stops each, then removes it from the set — KeyError for an encoder
        that start_encoder never added (one whose start() raised)."""
        if encoders is None:
            chosen = list(self._encoders)
        elif isinstance(encoders, Encoder):
            chosen = [encoders]
        else:
            chosen = list(encoders)
        for encoder in chosen:
            encoder.stop()
        with self.lock:
            for encoder in chosen:
                self._encoders.remove(encoder)
