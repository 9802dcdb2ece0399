"""What stands in for the hardware and the version: the cameras, the test hooks, picamera2's version.

Not picamera2 API. The version is read from the installed metadata, as a Pi's python3-picamera2
provides it (`picamera2-X.dist-info`): this stand-in ships 0.3.33, and a test that puts a
directory holding another `picamera2-X.dist-info` first on sys.path gets the behaviour of X
where picamera2's behaviour changed between versions (each place cites the version).

Cameras: $FAKE_PICAMERA2_CAMERAS, comma-separated models (default "imx708"; empty for none),
read at every listing; "usb:NAME" is a USB camera behind libcamera's UVC pipeline.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from dataclasses import dataclass

from .platform import Platform, get_platform


def _version() -> tuple[int, ...]:
    text = importlib.metadata.version("picamera2")
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


VERSION = _version()

# Sensor modes (size, bit depth) as libcamera lists them, and the native format.
SENSORS: dict[str, tuple[str, list[tuple[tuple[int, int], int]]]] = {
    "imx708": ("SRGGB10_CSI2P", [((1536, 864), 10), ((2304, 1296), 10), ((4608, 2592), 10)]),
    "imx219": ("SBGGR10_CSI2P", [((640, 480), 10), ((1640, 1232), 10), ((1920, 1080), 10),
                                 ((3280, 2464), 10)]),
}


@dataclass(frozen=True)
class CameraSpec:
    key: int  # position in $FAKE_PICAMERA2_CAMERAS: the test hooks' camera number
    model: str
    usb: bool

    @property
    def id(self) -> str:
        # Ids as libcamera gives them: the device-tree path of the sensor's I2C address, or the
        # USB path with vendor:product (USB ones contain "/usb", which picamera2 sorts on).
        pi5 = get_platform() == Platform.PISP
        if self.usb:
            base = "/base/axi/pcie@120000/rp1/usb@200000" if pi5 else \
                "/base/scb/pcie@7d500000/pci@0,0/usb@0,0"
            return f"{base}-1.{self.key + 1}:1.0-046d:0825"
        base = f"/base/axi/pcie@120000/rp1/i2c@{88000 + 0x1000 * self.key:x}" if pi5 else \
            f"/base/soc/i2c0mux/i2c@{self.key + 1}"
        return f"{base}/{self.model}@1a"


_lock = threading.Lock()  # guards _unplugged, _unlisted, _acquired and _broken
_unplugged: set[int] = set()  # no frames any more
_unlisted: set[int] = set()  # not enumerated by libcamera any more
_acquired: set[int] = set()
_broken: set[int] = set()  # the next request on this camera fails inside the event loop


def specs() -> list[CameraSpec]:
    names = [m for m in os.environ.get("FAKE_PICAMERA2_CAMERAS", "imx708").split(",") if m]
    return [CameraSpec(i, n.removeprefix("usb:"), n.startswith("usb:")) for i, n in enumerate(names)]


def present() -> list[CameraSpec]:
    """The cameras libcamera enumerates now, in its own order."""
    with _lock:
        gone = set(_unlisted)
    return [s for s in specs() if s.key not in gone]


def unplug(num: int, listed: bool | None = None) -> None:
    """Test hook: camera `num` (its place in $FAKE_PICAMERA2_CAMERAS) stops delivering frames.

    A CSI camera stays listed, as on a Pi: its sensor driver was bound at boot from the device
    tree and stays bound when the ribbon is pulled, so libcamera still enumerates it and a
    reopen "succeeds" and delivers nothing. A USB camera disappears (libcamera's UVC hotplug).
    `listed` overrides that.
    """
    usb = any(s.usb for s in specs() if s.key == num)
    with _lock:
        _unplugged.add(num)
        if (not usb) if listed is None else listed:
            _unlisted.discard(num)
        else:
            _unlisted.add(num)


def plug(num: int) -> None:
    """Test hook: camera `num` is back (a running capture does not resume; reopen it)."""
    with _lock:
        _unplugged.discard(num)
        _unlisted.discard(num)
        _broken.discard(num)


def break_event_loop(num: int) -> None:
    """Test hook: the next frame of camera `num` fails inside picamera2's process_requests, as
    an OSError from a V4L2 ioctl in an encoder would: the event-loop thread dies of it."""
    with _lock:
        _broken.add(num)


def take_broken(num: int) -> bool:
    with _lock:
        if num in _broken:
            _broken.discard(num)
            return True
        return False


def unplugged(num: int) -> bool:
    with _lock:
        return num in _unplugged


def acquire(num: int) -> None:
    with _lock:
        if num in _acquired:
            raise RuntimeError(f"Failed to acquire camera {num}: Device or resource busy")
        _acquired.add(num)


def release(num: int) -> None:
    with _lock:
        _acquired.discard(num)


def reset() -> None:
    """Test hook: every camera plugged and free, as after a reboot."""
    with _lock:
        _unplugged.clear()
        _unlisted.clear()
        _broken.clear()
