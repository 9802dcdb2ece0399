"""picamera2: a busy camera (another process has it) leaks no file descriptor per reopen."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from raspberry_pancake.recorder.config import parse
from raspberry_pancake.recorder.sources.base import SourceError
from raspberry_pancake.recorder.sources.picam import Picamera2Camera

FAKE = Path(__file__).resolve().parent / "fake_picamera2"
ATTEMPTS = 6


def _purge() -> None:
    for name in list(sys.modules):
        if name in ("picamera2", "libcamera") or name.startswith("picamera2."):
            del sys.modules[name]


@pytest.fixture
def picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in that follows picamera2's API (tests/fake_picamera2), one imx708."""
    monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", "imx708")
    monkeypatch.syspath_prepend(str(FAKE))
    _purge()
    import picamera2 as module

    assert "fake_picamera2" in str(module.__file__)
    yield module
    module.reset()
    _purge()


def open_fds() -> int:
    gc.collect()  # a half-made Picamera2's read end goes with the object: count what stays
    return len(os.listdir("/proc/self/fd"))


def test_opening_a_busy_camera_leaks_no_file_descriptor(picamera2: ModuleType) -> None:
    holder = picamera2.Picamera2(0)  # what another process holding the camera looks like
    try:
        cfg = parse(["--source", "picamera2", "--resolution", "352", "288", "--fps", "10"])
        camera = Picamera2Camera(0, cfg)
        with pytest.raises(SourceError, match="cannot open"):
            camera.open()  # the first: imports and caches settle
        before = open_fds()
        for _ in range(ATTEMPTS):
            with pytest.raises(SourceError, match=r"^source picamera2:0 imx708: cannot open"):
                camera.open()
        after = open_fds()
    finally:
        holder.close()
    assert after <= before, (before, after)
    # Once the other process lets go, the camera opens (and closes) as usual.
    camera = Picamera2Camera(0, cfg)
    camera.open()
    camera.stop()
