"""--source auto passes over the Pi's codec, ISP and CSI-receiver nodes: they are no cameras."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import pytest

from raspberry_pancake.recorder.sources.choose import auto_device, not_a_camera

# linux/videodev2.h
CAPTURE, M2M_MPLANE, STREAMING, IO_MC, DEVICE_CAPS = (0x1, 0x4000, 0x04000000, 0x20000000,
                                                       0x80000000)
EXT_PIX_FORMAT, META_CAPTURE, READWRITE = 0x00200000, 0x00800000, 0x01000000


def querycap(driver: str, card: str, bus: str, device_caps: int, extra: int = 0) -> bytes:
    """struct v4l2_capability as the kernel fills it: driver[16], card[32], bus_info[32],
    version, capabilities (the driver's, with DEVICE_CAPS), device_caps (this node's),
    reserved[3]: 104 bytes."""
    data = struct.pack("=16s32s32sIII12x", driver.encode(), card.encode(), bus.encode(),
                       0x00060100, device_caps | extra | DEVICE_CAPS, device_caps)
    assert len(data) == 104
    return data


WEBCAM = querycap("uvcvideo", "HD Pro Webcam C920", "usb-0000:01:00.0-1.2",
                  CAPTURE | STREAMING | EXT_PIX_FORMAT, META_CAPTURE)


@pytest.mark.parametrize(("cap", "why"), [
    (querycap("bcm2835-isp", "bcm2835-isp-capture0", "platform:bcm2835-isp",
              CAPTURE | STREAMING | EXT_PIX_FORMAT), "bcm2835-isp: the Pi's ISP"),
    (querycap("bcm2835-codec", "bcm2835-codec-decode", "platform:bcm2835-codec",
              M2M_MPLANE | STREAMING | EXT_PIX_FORMAT), "bcm2835-codec: the Pi's"),
    (querycap("rpi-hevc-dec", "rpi-hevc-dec", "platform:rpi-hevc-dec",
              M2M_MPLANE | STREAMING), "rpi-hevc-dec: the Pi's HEVC decoder"),
    (querycap("pispbe", "pispbe", "platform:1000880000.pisp_be",
              CAPTURE | STREAMING | IO_MC), "pispbe: the Pi 5's ISP"),
    (querycap("unicam", "unicam", "platform:fe801000.csi",
              CAPTURE | STREAMING | READWRITE | IO_MC), "unicam: a CSI receiver"),
    (querycap("some-isp", "capture", "platform:isp", CAPTURE | STREAMING | IO_MC),
     "some-isp: needs the media controller"),
    (querycap("uvcvideo", "HD Pro Webcam C920", "usb-0000:01:00.0-1.2",
              META_CAPTURE | STREAMING), "uvcvideo: not a capture node"),
])
def test_the_pis_own_nodes_are_not_cameras(cap: bytes, why: str) -> None:
    reason = not_a_camera(cap)
    assert reason is not None and reason.startswith(why), reason


@pytest.mark.parametrize("cap", [
    WEBCAM,
    # The legacy camera stack's driver: a Pi camera readable through V4L2 as YUV.
    querycap("bm2835 mmal", "mmal service 16.1", "platform:bcm2835-v4l2-0",
             CAPTURE | STREAMING | READWRITE),
])
def test_cameras_are_cameras(cap: bytes) -> None:
    assert not_a_camera(cap) is None


def test_auto_passes_over_nodes_that_are_not_v4l2(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    plain = tmp_path / "video0"
    plain.write_bytes(b"")
    pipe = tmp_path / "video1"
    os.mkfifo(pipe)  # opened without blocking
    missing = tmp_path / "video2"
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(auto_device([str(plain), str(pipe),
                                                                 str(missing)])),
                         name="test-auto", daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "auto hung on a FIFO"
    assert got == [None]
    assert f"{plain} (not a V4L2 device" in caplog.text
    assert f"{missing} (not a V4L2 device" in caplog.text
