"""pancake.py --self-check: what the Pi camera path runs on, and whether recording from it will work."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raspberry_pancake.recorder.sources.picam import KNOWN_BAD, is_usb, picamera2_version

log = logging.getLogger(__name__)

# The VideoCore H.264 encoder of a Pi 4 and earlier, which picamera2's H264Encoder opens.
HARDWARE_ENCODER = "/dev/video11"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each a reason recording will not work

    @property
    def ok(self) -> bool:
        return not self.problems


def _where(module: Any) -> str:
    return os.path.dirname(str(getattr(module, "__file__", "?")))


def _imported(name: str, report: Report) -> Any:
    """The module, or None with a line saying why not (any error: a broken install raises
    more than ImportError, e.g. numpy's "dtype size changed" ValueError under simplejpeg)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 (reported, not raised: that is the check)
        report.lines.append(f"{name}: does not import: {type(exc).__name__}: {exc}")
        return None


def _libraries(av: Any) -> str:
    versions = getattr(av, "library_versions", {})
    return ", ".join(f"{lib} {'.'.join(map(str, v))}" for lib, v in sorted(versions.items()))


def _check_libraries(report: Report) -> None:
    report.lines.append(f"python: {sys.version.split()[0]} ({sys.executable})")
    numpy = _imported("numpy", report)
    if numpy is not None:
        report.lines.append(f"numpy: {numpy.__version__} ({_where(numpy)})")
    av = _imported("av", report)
    if av is None:
        report.problems.append("PyAV (av) does not import")
    else:
        report.lines.append(f"av: {av.__version__} ({_where(av)}); FFmpeg {_libraries(av)}")
    if importlib.util.find_spec("simplejpeg") is None:
        report.lines.append("simplejpeg: not installed")
    elif (simplejpeg := _imported("simplejpeg", report)) is not None:
        report.lines.append(f"simplejpeg: imports ({_where(simplejpeg)})")
    else:
        report.lines.append("  (picamera2 imports simplejpeg; a pip numpy 2 over apt's "
                            "simplejpeg breaks it: keep numpy at the system's version)")


def _check_picamera2(report: Report) -> None:
    if importlib.util.find_spec("picamera2") is None:
        report.lines.append("picamera2: not installed")
        report.problems.append("picamera2 is not installed (on Raspberry Pi OS: apt install "
                               "--no-install-recommends python3-picamera2; a venv needs "
                               "--system-site-packages)")
        return
    version = picamera2_version() or "unknown version"
    picamera2 = _imported("picamera2", report)
    if picamera2 is None:
        report.problems.append("picamera2 does not import")
        return
    report.lines.append(f"picamera2: {version} ({_where(picamera2)})")
    if version in KNOWN_BAD:
        report.lines.append(f"picamera2 {version} is known bad: {KNOWN_BAD[version]}")
        report.problems.append(f"picamera2 {version} is known bad")
    platform = getattr(picamera2.Picamera2, "platform", None)
    report.lines.append(f"platform: {getattr(platform, 'name', platform)}")
    encoders = _imported("picamera2.encoders", report)
    if encoders is None:
        report.problems.append("picamera2.encoders does not import")
        return
    encoder = encoders.H264Encoder
    software = encoder.__name__.startswith("Libav")
    report.lines.append(f"H.264 encoder: {encoder.__module__}.{encoder.__name__}"
                        + (" (software: pancake records with its own libx264)" if software else ""))
    if not software:
        try:
            os.close(os.open(HARDWARE_ENCODER, os.O_RDWR))
            report.lines.append(f"{HARDWARE_ENCODER}: opens")
        except OSError as exc:
            report.lines.append(f"{HARDWARE_ENCODER}: does not open: {exc.strerror or exc}")
            report.problems.append(f"the hardware encoder {HARDWARE_ENCODER} does not open")
    _check_cameras(picamera2, report)


def _check_cameras(picamera2: Any, report: Report) -> None:
    try:
        cameras = picamera2.Picamera2.global_camera_info()
    except (RuntimeError, OSError, ValueError) as exc:
        report.lines.append(f"cameras: cannot list: {exc}")
        report.problems.append("picamera2 cannot list cameras")
        return
    for index, info in enumerate(cameras):
        usb = " (USB: use --source /dev/videoN)" if is_usb(info) else ""
        report.lines.append(f"camera picamera2:{index}: {info.get('Model', '?')} "
                            f"id {info.get('Id', '?')}{usb}")
    if not any(not is_usb(info) for info in cameras):
        report.lines.append("cameras: no Pi camera listed")
        report.problems.append("picamera2 lists no Pi camera")


def check() -> Report:
    report = Report()
    _check_libraries(report)
    _check_picamera2(report)
    return report


def run(emit: Callable[[str], None] = print) -> int:
    """--self-check: print the report; 0 when recording from a Pi camera will work, else 1."""
    report = check()
    for line in report.lines:
        emit(line)
    if report.ok:
        emit("self-check: OK: recording from the Pi camera will work")
        return 0
    emit("self-check: FAILED: " + "; ".join(report.problems))
    return 1


def log_report() -> None:
    """The same lines in the log, at every start from a Pi camera."""
    report = check()
    for line in report.lines:
        log.info("self-check: %s", line)
    for problem in report.problems:
        log.warning("self-check: %s", problem)
