"""The camera for --source: `auto` looks for one; picamera2 for a Pi camera, PyAV for the rest."""

from __future__ import annotations

import glob
import logging
import os

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
            devices = sorted(glob.glob("/dev/video*"), key=lambda d: (len(d), d))
            chosen = SourceSpec("device", devices[0]) if devices else SourceSpec("testsrc", "")
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
