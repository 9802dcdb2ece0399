"""Test stand-in for picamera2 (NOT picamera2): the subset of its API that recorder/sources/picam.py uses.

Follows picamera2 0.3.x as shipped in Raspberry Pi OS Bookworm (python3-picamera2), read from
raspberrypi/picamera2: `picamera2.py` (global_camera_info, create_video_configuration, configure,
start, stop, close, start_encoder, stop_encoder, capture_array, pre_callback, post_callback,
camera_properties), `request.py` (CompletedRequest, MappedArray), `encoders/` and `outputs/`.

What stands in for the hardware: a thread per started camera generates `testsrc2` frames with
libavfilter at the configured frame rate (hflip/vflip applied as the sensor transform would),
writes them into YUV420 buffers of picamera2's real shape ((height*3/2) x stride, stride padded
to 64 bytes), stamps each with `SensorTimestamp` in CLOCK_MONOTONIC nanoseconds as libcamera
does on a Pi, then runs pre_callback, capture jobs, post_callback and the encoders in
picamera2's order. Cameras: $FAKE_PICAMERA2_CAMERAS, comma-separated models (default
"imx708"; empty for none). `unplug(n)` / `plug(n)` are test hooks, not picamera2 API: an
unplugged camera stops delivering frames and is no longer listed, like a pulled ribbon cable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import libcamera
import numpy as np

from .encoders import Encoder
from .outputs import Output
from .request import CompletedRequest, MappedArray

__all__ = ["CompletedRequest", "MappedArray", "Picamera2", "plug", "unplug"]

_MODELS = [m for m in os.environ.get("FAKE_PICAMERA2_CAMERAS", "imx708").split(",") if m]
_SENSOR_SIZE = (4608, 2592)
_STRIDE_ALIGN = 64
_lock = threading.Lock()  # guards _unplugged and _acquired
_unplugged: set[int] = set()
_acquired: set[int] = set()


def unplug(num: int) -> None:
    """Test hook: camera `num` stops delivering frames and disappears from the camera list."""
    with _lock:
        _unplugged.add(num)


def plug(num: int) -> None:
    """Test hook: camera `num` is back (a running capture does not resume; reopen it)."""
    with _lock:
        _unplugged.discard(num)


def _stride(width: int) -> int:
    return -(-width // _STRIDE_ALIGN) * _STRIDE_ALIGN


def _write_yuv420(frame: av.VideoFrame, buf: np.ndarray) -> None:
    """Copy a yuv420p frame into a picamera2-shaped YUV420 buffer (padding rows kept)."""
    height, stride = frame.height, buf.shape[1]
    flat = buf.reshape(-1)
    cs, ch = stride // 2, height // 2
    targets = (flat[:stride * height].reshape(height, stride),
               flat[stride * height:stride * height + cs * ch].reshape(ch, cs),
               flat[stride * height + cs * ch:stride * height + 2 * cs * ch].reshape(ch, cs))
    for plane, dst in zip(frame.planes, targets, strict=True):
        src = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        w = plane.width
        dst[:, :w] = src[:dst.shape[0], :w]


class Picamera2:
    """One camera. Raises IndexError for a number that is not attached, RuntimeError if busy."""

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        with _lock:
            gone = set(_unplugged)
        return [{"Model": model, "Location": 2, "Rotation": 180, "Num": i,
                 "Id": f"/base/axi/pcie@120000/rp1/i2c@88000/{model}@1a"}
                for i, model in enumerate(_MODELS) if i not in gone]

    def __init__(self, camera_num: int = 0) -> None:
        info = self.global_camera_info()[camera_num]  # IndexError, as picamera2
        num = info["Num"]
        with _lock:
            if num in _acquired:
                raise RuntimeError("Camera __init__ sequence did not complete.")
            _acquired.add(num)
        self.camera_idx = num
        self.is_open = True
        self.camera_properties = {"Model": info["Model"], "PixelArraySize": _SENSOR_SIZE,
                                  "Location": 2, "Rotation": 180}
        self.sensor_resolution = _SENSOR_SIZE
        # (min, max, default) per control, as picamera2's camera_controls gives them.
        self.camera_controls: dict[str, tuple[Any, Any, Any]] = {
            "FrameDurationLimits": (8333, 1_000_000_000, 33333), "ExposureTime": (1, 66_000_000, 20000)}
        self.camera_config: dict[str, Any] | None = None
        self.pre_callback: Callable[[CompletedRequest], None] | None = None
        self.post_callback: Callable[[CompletedRequest], None] | None = None
        self.started = False
        self.frames = 0
        self._encoders: set[Encoder] = set()
        self._elock = threading.Lock()  # guards _encoders and _jobs against the camera thread
        self._jobs: list[tuple[str, threading.Event, list[np.ndarray]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- configuration -------------------------------------------------------------------

    @staticmethod
    def _stream(defaults: dict[str, Any], updates: dict[str, Any] | None) -> dict[str, Any] | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key in updates:
            if key not in valid:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
        stream = defaults | updates
        w, h = stream["size"]
        stream["size"] = (w - w % 2, h - h % 2)
        return stream

    def create_video_configuration(self, main: dict[str, Any] | None = None,
                                   lores: dict[str, Any] | None = None,
                                   raw: dict[str, Any] | None = None,
                                   transform: libcamera.Transform | None = None,
                                   colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict[str, Any] | None = None, display: str | None = "main",
                                   encode: str | None = "main", queue: bool = True,
                                   sensor: dict[str, Any] | None = None,
                                   use_case: str = "video") -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main_cfg = self._stream({"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main or {})
        assert main_cfg is not None
        lores_cfg = self._stream({"format": "YUV420", "size": main_cfg["size"], "preserve_ar": False}, lores)
        if colour_space is None:
            small = main_cfg["size"][0] < 1280 or main_cfg["size"][1] < 720
            colour_space = libcamera.ColorSpace.Smpte170m() if small else libcamera.ColorSpace.Rec709()
        config = {"use_case": use_case, "transform": transform or libcamera.Transform(),
                  "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue,
                  "main": main_cfg, "lores": lores_cfg, "raw": raw,
                  "controls": {"FrameDurationLimits": (33333, 33333)} | (controls or {}),
                  "sensor": sensor or {}, "display": display, "encode": encode}
        for name in (display, encode):
            if name is not None and config.get(name) is None:
                raise RuntimeError(f"Stream {name} was not defined")
        return config

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = dict(camera_config)
        if not isinstance(config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        for name in ("main", "lores"):
            stream = config[name]
            if stream is None:
                continue
            stream = dict(stream)
            w, h = stream["size"]
            if w % 2 or h % 2:
                raise RuntimeError("width and height should be even")
            if stream["format"] != "YUV420":
                raise RuntimeError(f"stand-in: only YUV420 streams are generated, not {stream['format']}")
            stream["stride"] = _stride(w)
            stream["framesize"] = stream["stride"] * h * 3 // 2
            config[name] = stream
        if config["lores"] is not None:
            (mw, mh), (lw, lh) = config["main"]["size"], config["lores"]["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
        controls = dict(config["controls"])
        if "FrameRate" in controls:
            rate = controls.pop("FrameRate")
            controls["FrameDurationLimits"] = (int(1_000_000 / rate),) * 2
        config["controls"] = controls
        self.camera_config = config

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        return dict(self.camera_config[name])

    # --- running -------------------------------------------------------------------------

    def start(self, config: dict[str, Any] | None = None, show_preview: bool | None = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"fake-libcamera-{self.camera_idx}",
                                        daemon=True)
        self.started = True
        self._thread.start()

    def stop(self) -> None:
        if not self.started:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.started = False

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        with _lock:
            _acquired.discard(self.camera_idx)
        self.is_open = False
        self.camera_config = None

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        config = self.camera_config
        assert config is not None
        main, lores, transform = config["main"], config["lores"], config["transform"]
        width, height = main["size"]
        fps = 1_000_000 / config["controls"]["FrameDurationLimits"][0]
        chain = [f"testsrc2=size={width}x{height}:rate={fps:g}", "format=yuv420p"]
        chain += ["hflip"] * transform.hflip + ["vflip"] * transform.vflip
        container = av.open(",".join(chain), format="lavfi")
        start = time.monotonic()
        try:
            for n, frame in enumerate(container.decode(video=0)):
                if self._stop.wait(max(0.0, start + n / fps - time.monotonic())):
                    return
                with _lock:
                    stalled = self.camera_idx in _unplugged
                if stalled:
                    self._stop.wait()  # a pulled cable: nothing more until stop()
                    return
                self._deliver(frame, main, lores, config)
        finally:
            container.close()

    def _deliver(self, frame: av.VideoFrame, main: dict[str, Any], lores: dict[str, Any] | None,
                 config: dict[str, Any]) -> None:
        buffers: dict[str, np.ndarray] = {}
        for name, stream in (("main", main), ("lores", lores)):
            if stream is None:
                continue
            w, h = stream["size"]
            buf = np.zeros((h * 3 // 2, stream["stride"]), np.uint8)
            _write_yuv420(frame if (w, h) == main["size"] else frame.reformat(w, h, "yuv420p"), buf)
            buffers[name] = buf
        metadata = {"SensorTimestamp": time.monotonic_ns(),
                    "FrameDuration": config["controls"]["FrameDurationLimits"][0]}
        request = CompletedRequest(buffers, metadata, config)
        self.frames += 1
        if self.pre_callback is not None:
            self.pre_callback(request)
        with self._elock:
            jobs, self._jobs = self._jobs, []
            encoders = list(self._encoders)
        for name, done, slot in jobs:
            slot.append(request.make_array(name))
            done.set()
        if self.post_callback is not None:
            self.post_callback(request)
        for encoder in encoders:
            if encoder.name is not None and encoder.name in request.stream_map:
                encoder.encode(encoder.name, request)
        request.release()

    def capture_array(self, name: str = "main", wait: float | None = None) -> np.ndarray:
        """The next frame of stream `name` as picamera2 shapes it; blocks until it arrives."""
        if not self.started:
            raise RuntimeError("Camera is not running")
        done, slot = threading.Event(), []
        with self._elock:
            self._jobs.append((name, done, slot))
        if not done.wait(wait):
            raise TimeoutError("capture_array timed out")
        return slot[0]

    # --- encoders ------------------------------------------------------------------------

    def start_encoder(self, encoder: Encoder, output: Output | None = None, pts: Any = None,
                      quality: Any = None, name: str | None = None) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if output is not None:
            encoder.output = output
        name = name or self.camera_config["encode"]
        stream = self.camera_config.get(name) if name else None
        if stream is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = stream["size"]
        encoder.format = stream["format"]
        encoder.stride = stream["stride"]
        if encoder.framerate is None:
            duration = self.camera_config["controls"]["FrameDurationLimits"][0]
            encoder.framerate = min(30.0, 1_000_000 / duration)
        encoder.start(quality=quality)
        with self._elock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders: Encoder | list[Encoder] | set[Encoder] | None = None) -> None:
        with self._elock:
            chosen = list(self._encoders) if encoders is None else (
                [encoders] if isinstance(encoders, Encoder) else list(encoders))
        for encoder in chosen:
            encoder.stop()
        with self._elock:
            self._encoders.difference_update(chosen)
