"""The camera for --source: `auto` looks for one; picamera2 for a Pi camera, PyAV for the rest."""

from __future__ import annotations

import errno
import glob
import logging
import os
import struct
from typing import TextIO

from raspberry_pancake.recorder.config import RecorderConfig
from raspberry_pancake.recorder.sources.base import Camera, SourceError, SourceSpec
from raspberry_pancake.recorder.sources.picam import Picamera2Camera, csi_camera_index
from raspberry_pancake.recorder.sources.pyav import AVCamera
from raspberry_pancake.shared.credentials import Secret, url_has_password

log = logging.getLogger(__name__)


def resolve(source: str | Secret) -> SourceSpec:
    """Turn --source into a concrete source; `auto` looks for a camera and says what it chose.
    Called once logging is set up: it warns of a password that the process listing shows."""
    if isinstance(source, Secret):
        spec = source.reveal()
        if not source.from_command_line:
            log.info("source read from %s", source.source)
        elif url_has_password(spec):
            log.warning("the --source URL holds a password, and `ps` shows the command line to "
                        "every user: prefer --source @/path/to/file or env:VARNAME")
    else:
        spec = source
    if spec == "auto":
        index = csi_camera_index()  # USB cameras picamera2 lists go through V4L2
        if index is not None:
            chosen = SourceSpec("picamera2", index)
        else:
            device = auto_device(sorted(glob.glob("/dev/video*"), key=lambda d: (len(d), d)))
            chosen = SourceSpec("device", device) if device else SourceSpec("testsrc", "")
        log.info("source auto: using %s", chosen)
        return chosen
    if spec == "testsrc":
        return SourceSpec("testsrc", "")
    if spec == "picamera2" or spec.startswith("picamera2:"):
        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise SourceError(f"source {spec}: camera index must be a number")
        return SourceSpec("picamera2", index)
    if spec.startswith("/dev/"):
        return SourceSpec("device", spec)
    if "://" in spec:
        return SourceSpec("url", spec)
    return SourceSpec("file", os.path.abspath(spec))


def open_camera(spec: SourceSpec, cfg: RecorderConfig) -> Camera:
    if spec.kind == "picamera2":
        return Picamera2Camera(int(spec.target), cfg)
    return AVCamera(spec, cfg)


# V4L2's ioctls (linux/videodev2.h), read with fcntl: listing needs no v4l2-ctl.
_VIDIOC_QUERYCAP = 0x80685600
_VIDIOC_ENUM_FMT = 0xC0405602
_VIDIOC_ENUM_FRAMESIZES = 0xC02C564A
_V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
_V4L2_CAP_VIDEO_CAPTURE = 0x1
_V4L2_CAP_DEVICE_CAPS = 0x80000000
_V4L2_CAP_IO_MC = 0x20000000  # configured through the media controller (/dev/mediaN)
_FRMSIZE_DISCRETE = 1
_MAX_LISTED = 64  # formats or sizes of one device: enough for any real camera

# Video nodes a Raspberry Pi has with or without a camera, by QUERYCAP driver name: capture
# nodes some of them, cameras none. The CSI receivers deliver raw Bayer for libcamera, which
# picamera2 drives (auto takes a CSI camera that way, before any /dev/video node).
NOT_CAMERAS = {
    "bcm2835-codec": "the Pi's H.264/JPEG codec",
    "bcm2835-isp": "the Pi's ISP",
    "rpi-hevc-dec": "the Pi's HEVC decoder",
    "rpivid": "the Pi's HEVC decoder",
    "pispbe": "the Pi 5's ISP",
    "unicam": "a CSI receiver (a Pi camera: picamera2)",
    "rp1-cfe": "a CSI receiver (a Pi camera: picamera2)",
}


def not_a_camera(cap: bytes) -> str | None:
    """Why a node whose VIDIOC_QUERYCAP answer (struct v4l2_capability, 104 bytes) is `cap`
    is no camera to open as `/dev/videoN`, or None if it may be one (a UVC webcam, a capture
    card, the legacy Pi camera driver)."""
    driver = bytes(cap[0:16]).split(b"\0")[0].decode("utf-8", "replace")
    caps, device_caps = struct.unpack_from("=II", cap, 84)
    if caps & _V4L2_CAP_DEVICE_CAPS:
        caps = device_caps
    if driver in NOT_CAMERAS:
        return f"{driver}: {NOT_CAMERAS[driver]}"
    if not caps & _V4L2_CAP_VIDEO_CAPTURE:
        return f"{driver}: not a capture node"  # an encoder, an output, a metadata node
    if caps & _V4L2_CAP_IO_MC:
        return f"{driver}: needs the media controller"
    return None


def _querycap(path: str) -> bytes:
    """The node's VIDIOC_QUERYCAP answer; OSError if it cannot be opened or is not V4L2.
    O_NONBLOCK: opening a V4L2 node never waits, and a FIFO named like one neither."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cap = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, cap)
        return bytes(cap)
    finally:
        os.close(fd)


def auto_device(paths: list[str]) -> str | None:
    """The first of `paths` that may be a camera, for `--source auto`; None if none is. A node
    we may not open (not in the `video` group) is taken: opening it then says why, where
    passing it over would record the test picture instead of the camera."""
    skipped: list[str] = []
    chosen = None
    for path in paths:
        try:
            why = not_a_camera(_querycap(path))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EBUSY):
                chosen = path
                break
            why = f"not a V4L2 device ({exc.strerror or exc})"
        if why is None:
            chosen = path
            break
        skipped.append(f"{path} ({why})")
    if skipped:
        log.info("source auto: not cameras: %s", ", ".join(skipped))
    return chosen


def _v4l2_device(path: str) -> str | None:
    """`path: name, FORMAT WxH WxH …; …` for a camera, None for any other node (not_a_camera)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path}: cannot open ({exc.strerror})"
    try:
        cap = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, cap)
        card = bytes(cap[16:48]).split(b"\0")[0].decode("utf-8", "replace")
        if not_a_camera(bytes(cap)) is not None:
            return None  # a metadata or output node, or the Pi's codec and ISP (as auto)
        formats = []
        for i in range(_MAX_LISTED):
            fmt = bytearray(struct.pack("=II", i, _V4L2_BUF_TYPE_VIDEO_CAPTURE) + bytes(56))
            try:
                fcntl.ioctl(fd, _VIDIOC_ENUM_FMT, fmt)
            except OSError:
                break
            fourcc = bytes(fmt[44:48]).decode("ascii", "replace").strip()
            sizes = []
            for j in range(_MAX_LISTED):
                size = bytearray(struct.pack("=II", j, struct.unpack_from("=I", fmt, 44)[0])
                                 + bytes(36))
                try:
                    fcntl.ioctl(fd, _VIDIOC_ENUM_FRAMESIZES, size)
                except OSError:
                    break
                kind, width, height = struct.unpack_from("=III", size, 8)
                if kind != _FRMSIZE_DISCRETE:
                    sizes.append(f"up to {struct.unpack_from('=I', size, 16)[0]}x"
                                 f"{struct.unpack_from('=I', size, 24)[0]}")
                    break
                sizes.append(f"{width}x{height}")
            formats.append(f"{fourcc} {' '.join(sizes)}".strip())
        return f"{path}: {card}, " + ("; ".join(formats) or "no capture format")
    except OSError as exc:
        return f"{path}: not a V4L2 device ({exc.strerror})"
    finally:
        os.close(fd)


def _picamera2_lines() -> list[str]:
    import importlib
    import importlib.util

    if importlib.util.find_spec("picamera2") is None:
        return []
    try:
        picamera2 = importlib.import_module("picamera2")
        cameras = picamera2.Picamera2.global_camera_info()
    except (ImportError, RuntimeError, OSError) as exc:
        return [f"picamera2: none listed ({exc})"]
    lines = []
    for index, info in enumerate(cameras):
        sizes = ""
        try:
            cam = picamera2.Picamera2(index)
            try:
                modes = {tuple(m["size"]) for m in cam.sensor_modes}
            finally:
                cam.close()
            sizes = ", " + " ".join(f"{w}x{h}" for w, h in sorted(modes))
        except (RuntimeError, IndexError, ValueError, OSError, KeyError, TypeError, AttributeError):
            sizes = ", sizes unknown"
        lines.append(f"picamera2:{index}: {info.get('Model', 'camera')}"
                     f"{' (USB: use its /dev/video node)' if 'usb' in str(info.get('Id', '')) else ''}"
                     f"{sizes}")
    return lines


def list_cameras(out: TextIO) -> int:
    """`pancake.py --list-cameras`: what this machine can open, one per line, as `source`
    takes it; always `testsrc`. Exit code 0."""
    lines = _picamera2_lines()
    for path in sorted(glob.glob("/dev/video*"), key=lambda d: (len(d), d)):
        line = _v4l2_device(path)
        if line is not None:
            lines.append(line)
    lines.append("testsrc: a generated test picture (any size, any rate)")
    for line in lines:
        print(line, file=out)
    return 0
