"""pancake.py's command line: parsed and checked once into a frozen RecorderConfig."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from raspberry_pancake.shared.cli import Bounded, ConfigError, OneLineParser
from raspberry_pancake.shared.credentials import Secret, SecretError
from raspberry_pancake.shared.credentials import resolve as resolve_secret
from raspberry_pancake.shared.events import MAX_SOCKET_NAME
from raspberry_pancake.shared.retention import DEFAULT_MIN_FREE, Amount, parse_min_free
from raspberry_pancake.shared.statedir import catalog_path
from raspberry_pancake.shared.statedir import state_dir as default_state_dir

__all__ = ["ConfigError", "MaskError", "RecorderConfig", "Size", "load_detect", "mask_grey",
           "parse", "read_mask", "read_mask_bytes"]

DEFAULT_SPLIT = 900.0
CAMERA_NAME = re.compile(r"[a-z0-9_-]{1,32}")
# --detect-interval's default when faces are searched (DESIGN: 0.5 s for faces).
FACE_INTERVAL = 0.5
# --detect's words (DESIGN.md "Detectors"): the user's detect() in one of its two forms, and
# the built-in detectors.
USER_DETECT = ("image", "no-image")
DETECTORS = (*USER_DETECT, "motion", "faces")
# The motion detector's defaults (detect/motion.py MotionConfig keeps the same).
MOTION_MIN_AREA = 0.3
MOTION_SENSITIVITY = 5
MOTION_MIN_DURATION = 1.0
FACE_MATCH = 0.6
# A gpiozero pin: a BCM number, or a name gpiozero knows ("GPIO17", "BOARD11", "J8:11").
GPIO_PIN = re.compile(r"[A-Za-z0-9:_]{1,16}")
FACES_MODULE = "raspberry_pancake.recorder.detect.faces"
# A mask larger than this a side is refused before it is decoded: an upload of a few bytes
# can claim a picture of gigabytes.
MAX_MASK_SIDE = 8192
# --trigger-token: shorter is guessable over the LAN (401s are not throttled).
TRIGGER_TOKEN_MIN = 16


@dataclass(frozen=True, slots=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    port: int
    bind: str
    resolution: Size
    fps: float
    vflip: bool
    hflip: bool
    rotation: int
    annotate_text_size: int
    max_stream_fps: float
    record_continuous: Path | None
    detection_mode: str | None  # "edge" or "all"
    detection_dir: Path | None
    record_resize: Size | None
    detect: str | None  # the user's detect(): "no-image" or "image", or None
    detect_resize: Size | None
    detect_interval: float
    emit: str | None
    login: Path | None
    # A Secret: a camera URL may carry a password, and a Secret never prints it.
    source: Secret
    record_split: float
    customize: Path | None
    log: str | None
    certfile: Path | None
    keyfile: Path | None
    min_free: Amount
    trust_proxy: bool = False
    self_check: bool = False
    # The catalog file (--catalog, else pancake.db in the state directory) and the state
    # directory to make first when the catalog lives there (None with --catalog).
    catalog: Path | None = None
    state_dir: Path | None = None
    # The camera's name (paths, topics, URLs) and title (for people): DESIGN.md "Cameras and
    # names". `multi` is set under --config: messages carry the camera, files go in DIR/NAME/.
    name: str = "cam"
    title: str = "cam"
    multi: bool = False
    # The user's detect(), loaded once by parse(): customize.py's side effects (a GPIO pin
    # opened, a model loaded) must happen once per process, not once per check.
    detect_fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    # Every --detect word in the order given ("image", "motion", …; empty: none) and how their
    # answers combine: "or" (any of them) or "and" (all of them).
    detectors: tuple[str, ...] = ()
    detect_combine: str = "or"
    motion_mask: Path | None = None
    motion_min_area: float = MOTION_MIN_AREA
    motion_sensitivity: int = MOTION_SENSITIVITY
    motion_min_duration: float = MOTION_MIN_DURATION
    faces_dir: Path | None = None
    face_match: float = FACE_MATCH
    # A PIR or door sensor (gpiozero): the pin as a BCM number or a gpiozero pin name.
    detect_gpio: int | str | None = None
    detect_gpio_kind: str = "motion"  # "motion" (MotionSensor) or "button" (Button)
    # POST /api/trigger's bearer token (a Secret: never printed), None: no token accepted.
    trigger_token: Secret | None = None
    # Where the page's masks are kept (DESIGN.md "State"), masks/ in the state directory.
    masks_dir: Path | None = None
    # The state directory itself (--state-dir, else the default), --catalog or not: the
    # logouts, the masks. None only in configs made by hand (tests).
    state_home: Path | None = None

    @property
    def stored_mask(self) -> Path | None:
        """The mask saved from the page for this camera (it may not exist)."""
        return self.masks_dir / f"{self.name}.png" if self.masks_dir is not None else None

    @property
    def frame_size(self) -> Size:
        """The size of captured frames after rotation: what the live view and detect() see."""
        if self.rotation in (90, 270):
            return Size(self.resolution.height, self.resolution.width)
        return self.resolution

    @property
    def detecting(self) -> bool:
        """Any detector at all: a --detect word or a --detect-gpio sensor."""
        return bool(self.detectors) or self.detect_gpio is not None

    @property
    def record_size(self) -> Size:
        return self.record_resize or self.frame_size

    @property
    def recording(self) -> bool:
        return self.record_continuous is not None or self.detection_dir is not None

    @property
    def record_dirs(self) -> tuple[Path, ...]:
        dirs = [d for d in (self.record_continuous, self.detection_dir) if d is not None]
        return tuple(dict.fromkeys(dirs))


_size = Bounded(int, lambda v: 16 <= v <= 8192 and v % 2 == 0,
                "is not an even number of pixels in 16..8192",
                "is not an even number of pixels in 16..8192")


_positive = Bounded(float, lambda v: 0 < v < 1e9, "is not a number", "is not a positive number")


def _detect_list(text: str) -> tuple[str, ...]:
    words = [w.strip() for w in text.split(",")]
    for w in words:
        if w not in DETECTORS:
            raise argparse.ArgumentTypeError(
                f"{w!r} is not one of {', '.join(DETECTORS)} (a comma-separated list)")
    if len(set(words) & set(USER_DETECT)) > 1:
        raise argparse.ArgumentTypeError("image and no-image exclude each other: detect() "
                                         "takes the picture or it does not")
    return tuple(dict.fromkeys(words))


_percent = Bounded(float, lambda v: 0 < v <= 100, "is not a number",
                   "is not a percent above 0, at most 100")


_sensitivity = Bounded(int, lambda v: 1 <= v <= 10, "is not a whole number 1..10", "is not 1..10")


_seconds = Bounded(float, lambda v: 0 <= v <= 3600, "is not a number", "is not 0..3600 seconds")


_distance = Bounded(float, lambda v: 0 < v <= 2, "is not a number",
                    "is not a distance above 0, at most 2")


def _pin(text: str) -> int | str:
    if text.isdigit():
        if int(text) > 63:
            raise argparse.ArgumentTypeError(f"{text!r} is not a GPIO number (0..63)")
        return int(text)
    if not GPIO_PIN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPIO pin (17, GPIO17, BOARD11)")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="pancake.py",
                      description="Raspberry Pancake: one camera's recorder and live view.")
    p.add_argument("--port", type=int, default=8000, metavar="8000",
                   help="webserver port hosting the camera live view")
    p.add_argument("--bind", default="", metavar="ADDRESS",
                   help="address the live view listens on (default: all; 127.0.0.1 for local only)")
    p.add_argument("--resolution", type=_size, nargs=2, default=[320, 240], metavar=("320", "240"),
                   help="resolution of camera live view")
    p.add_argument("--fps", type=_positive, default=12.0, metavar="12", help="camera framerate")
    p.add_argument("--vflip", action="store_true")
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--rotation", type=int, default=0, choices=[0, 90, 180, 270])
    p.add_argument("--annotate-text-size", type=int, default=24, metavar="24",
                   help="height in pixels of the burned-in date and time; 0 for none")
    p.add_argument("--max-stream-fps", type=_positive, default=10.0, metavar="10",
                   help="max streaming framerate")
    p.add_argument("--record-continuous", metavar="h264_dir",
                   help="record video into h264_dir, split every --record-split seconds")
    p.add_argument("--record-detection", nargs=2, metavar=("{edge,all}", "h264_dir"),
                   help="on detection, record video into h264_dir")
    p.add_argument("--record-resize", type=_size, nargs=2, metavar=("w", "h"),
                   help="resize image for video recording")
    p.add_argument("--detect", type=_detect_list, metavar="LIST",
                   help="comma-separated detectors: image (detect(rgb_bytes) from customize.py) "
                        "or no-image (detect()), motion, faces")
    p.add_argument("--detect-combine", choices=["or", "and"], default=None,
                   help="detection is on while any detector says so (or, the default) or all")
    p.add_argument("--detect-resize", type=_size, nargs=2, metavar=("w", "h"),
                   help="resize image for detection")
    p.add_argument("--detect-interval", type=_positive, metavar="seconds",
                   help="time between detect() calls (default 1/fps)")
    p.add_argument("--detect-gpio", type=_pin, metavar="PIN",
                   help="a PIR or door sensor on this GPIO pin (gpiozero) is a detector too")
    p.add_argument("--detect-gpio-kind", choices=["motion", "button"], default=None,
                   help="the sensor: motion (a PIR, gpiozero MotionSensor; the default) or "
                        "button (a door contact, gpiozero Button)")
    p.add_argument("--motion-mask", metavar="PNG",
                   help="white = watch, black = ignore; any size, scaled to the picture")
    p.add_argument("--motion-min-area", type=_percent, metavar="PCT",
                   help=f"percent of the watched picture that must change (default "
                        f"{MOTION_MIN_AREA:g})")
    p.add_argument("--motion-sensitivity", type=_sensitivity, metavar="1..10",
                   help=f"how small a change counts (default {MOTION_SENSITIVITY})")
    p.add_argument("--motion-min-duration", type=_seconds, metavar="SECONDS",
                   help=f"how long a change must last to be motion, and the quiet after it "
                        f"(default {MOTION_MIN_DURATION:g})")
    p.add_argument("--faces", metavar="DIR",
                   help="the known faces (default: faces/ in the state directory)")
    p.add_argument("--face-match", type=_distance, metavar="DIST",
                   help=f"the largest distance at which a face is someone enrolled "
                        f"(default {FACE_MATCH:g})")
    p.add_argument("--emit", metavar="socket_address", help="unix domain socket to post-processor")
    p.add_argument("--login", metavar="password_hash_file",
                   help="password-protect streaming webpage")
    p.add_argument("--source", default="auto", metavar="SPEC",
                   help="auto, picamera2[:N], /dev/videoN, rtsp://… or http://…, a video file, "
                        "testsrc; @/path/to/file or env:VARNAME to read it from there (a URL "
                        "with a password, which the command line shows to every user)")
    p.add_argument("--record-split", type=_positive, default=DEFAULT_SPLIT, metavar="SECONDS",
                   help="split recordings on wall-clock multiples of this (default 900)")
    p.add_argument("--customize", metavar="PATH",
                   help="file defining detect() (default: customize.py here, else beside pancake.py)")
    p.add_argument("--log", metavar="path", help="log file, rotated at midnight; stdout if not given")
    p.add_argument("--min-free", default=DEFAULT_MIN_FREE, metavar="SIZE|PCT",
                   help="keep this much free on the record directories' filesystems by deleting "
                        "the oldest recordings (default 5%%; e.g. 2G, 500M, 10%%)")
    p.add_argument("--certfile", metavar="PEM", help="serve HTTPS/WSS with this certificate")
    p.add_argument("--keyfile", metavar="PEM", help="private key of --certfile")
    p.add_argument("--self-check", action="store_true",
                   help="report what the Pi camera path runs on (picamera2, av, numpy, the "
                        "encoder, the cameras) and exit: 0 if recording will work, else 1")
    p.add_argument("--catalog", metavar="PATH",
                   help="the catalog of recordings and events (default: pancake.db in the "
                        "state directory)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where pancake keeps its state: the catalog, the logouts (default: "
                        "$XDG_STATE_HOME/pancake, else ~/.local/state/pancake)")
    p.add_argument("--name", default="cam", metavar="NAME",
                   help="the camera's name in paths, topics and URLs: a-z 0-9 _ -, at most 32 "
                        "(default cam)")
    p.add_argument("--title", metavar="TEXT",
                   help="the camera's name for people, on the page and in alerts (default: --name)")
    # Taken out by main before parse() (camconfig.split_argv); here for --help and the README.
    p.add_argument("--config", metavar="FILE",
                   help="run the cameras of this TOML file (1 to 8) behind one page; "
                        "instead of --source and the other camera flags")
    p.add_argument("--list-cameras", action="store_true",
                   help="print the cameras this machine can open (picamera2, V4L2) and exit")
    p.add_argument("--trigger-token", metavar="@FILE|env:VAR",
                   help="a token that lets other programs POST /api/trigger "
                        "(Authorization: Bearer TOKEN), read from a file or the environment")
    p.add_argument("--trust-proxy", action="store_true",
                   help="behind a reverse proxy: take the client's address and scheme from its "
                        "X-Forwarded-For / X-Real-Ip and X-Forwarded-Proto headers")
    return p


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes a Linux file name may hold, as surrogate escapes
        return False
    return True


def _record_dir(flag: str, text: str) -> Path:
    path = Path(text).absolute()
    if not path.exists():
        raise ConfigError(f"{flag}: directory {text!r} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{flag}: {text!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: directory {text!r} is not writable")
    return path


def _source(text: str) -> Secret:
    """--source as given, or read from `@/path` (its first line) or `env:VARNAME`."""
    if text.startswith(("@", "env:")):
        try:
            return resolve_secret("--source", text)
        except SecretError as exc:  # its message names the file or variable, never the value
            raise ConfigError(str(exc)) from None
    if not text.strip():
        raise ConfigError("--source: empty (auto, testsrc, a device, a URL or a file)")
    return Secret(text, "the command line")


def _trigger_token(text: str) -> Secret:
    """--trigger-token from `@/path` or `env:VAR` only: a literal would show in the process list,
    and this flag is new, so no old command line depends on one."""
    flag = "--trigger-token"
    if not text.startswith(("@", "env:")):
        raise ConfigError(f"{flag}: give @/path/to/file or env:VARNAME, not the token itself "
                          "(every user can read a command line)")
    try:
        token = resolve_secret(flag, text)
    except SecretError as exc:  # its message names the file or variable, never the value
        raise ConfigError(str(exc)) from None
    value = token.reveal()
    if len(value) < TRIGGER_TOKEN_MIN:
        raise ConfigError(f"{flag}: the token in {token.source} is shorter than "
                          f"{TRIGGER_TOKEN_MIN} characters")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError(f"{flag}: the token in {token.source} must be printable ASCII "
                          "without spaces (it travels in an HTTP header)")
    return token


def _catalog(catalog: str | None, state: str | None) -> tuple[Path, Path | None]:
    """The catalog's path, and the state directory to make when the catalog is in it."""
    explicit = Path(catalog).absolute() if catalog is not None else None
    directory = Path(state).absolute() if state is not None else None
    if explicit is not None:
        if explicit.is_dir():
            raise ConfigError(f"--catalog: {catalog!r} is a directory")
        if not explicit.parent.is_dir():
            raise ConfigError(f"--catalog: the directory of {catalog!r} does not exist")
    if directory is not None and directory.exists() and not directory.is_dir():
        raise ConfigError(f"--state-dir: {state!r} is not a directory")
    path = catalog_path(explicit, directory)
    return path, None if explicit is not None else path.parent


def _customize_path(text: str | None) -> Path:
    if text is not None:
        return Path(text).absolute()
    here = Path.cwd() / "customize.py"
    if here.exists():
        return here
    return Path(sys.argv[0]).absolute().parent / "customize.py"


def _readable_file(flag: str, text: str) -> Path:
    path = Path(text).absolute()
    if not path.is_file():
        raise ConfigError(f"{flag}: file {text!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag}: file {text!r} is not readable")
    return path


def parse(argv: Sequence[str] | None = None) -> RecorderConfig:
    """Parse and check the command line; raise ConfigError for cross-flag and file problems."""
    a = build_parser().parse_args(argv)
    detectors: tuple[str, ...] = a.detect or ()
    user = next((w for w in detectors if w in USER_DETECT), None)
    if not detectors and a.detect_gpio is None:
        for flag, value in (("--record-detection", a.record_detection),
                            ("--detect-resize", a.detect_resize),
                            ("--detect-interval", a.detect_interval),
                            ("--detect-combine", a.detect_combine)):
            if value is not None:
                raise ConfigError(f"{flag} requires --detect (or --detect-gpio)")
    if user != "image" and a.detect_resize is not None:
        raise ConfigError("--detect-resize requires --detect image")
    for flag, value, needs in (("--motion-mask", a.motion_mask, "motion"),
                               ("--motion-min-area", a.motion_min_area, "motion"),
                               ("--motion-sensitivity", a.motion_sensitivity, "motion"),
                               ("--motion-min-duration", a.motion_min_duration, "motion"),
                               ("--faces", a.faces, "faces"),
                               ("--face-match", a.face_match, "faces")):
        if value is not None and needs not in detectors:
            raise ConfigError(f"{flag} requires --detect {needs}")
    if a.detect_gpio_kind is not None and a.detect_gpio is None:
        raise ConfigError("--detect-gpio-kind requires --detect-gpio")
    motion_mask = _mask("--motion-mask", a.motion_mask) if a.motion_mask is not None else None
    if a.detect_gpio is not None and importlib.util.find_spec("gpiozero") is None:
        raise ConfigError("--detect-gpio needs gpiozero: pip install 'gpiozero>=2' "
                          "(on Raspberry Pi OS: apt install python3-gpiozero)")
    if a.record_resize is not None and not (a.record_continuous or a.record_detection):
        raise ConfigError("--record-resize requires --record-continuous or --record-detection")
    if not 1 <= a.port <= 65535:
        raise ConfigError(f"--port: {a.port} is not a port number (1..65535)")
    if a.fps > 120:
        raise ConfigError(f"--fps: {a.fps:g} is more than 120")
    if a.annotate_text_size != 0 and not 6 <= a.annotate_text_size <= 160:
        raise ConfigError("--annotate-text-size: 0 (off) or 6..160")
    if a.record_split < 1:
        raise ConfigError("--record-split: at least 1 second")
    if a.emit is not None and not 0 < len(a.emit.encode()) <= MAX_SOCKET_NAME:
        raise ConfigError(f"--emit: a socket name of 1..{MAX_SOCKET_NAME} bytes")
    try:
        min_free = parse_min_free(a.min_free)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if (a.certfile is None) != (a.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together")
    mode = detection_dir = None
    if a.record_detection is not None:
        mode, text = a.record_detection
        if mode not in ("edge", "all"):
            raise ConfigError(f"--record-detection: {mode!r} is not one of edge, all")
        detection_dir = _record_dir("--record-detection", text)
    continuous = (_record_dir("--record-continuous", a.record_continuous)
                  if a.record_continuous is not None else None)
    if a.emit is not None:
        for flag, d in (("--record-continuous", continuous), ("--record-detection", detection_dir)):
            if d is not None and not _utf8(str(d)):
                shown = os.fsencode(d).decode("utf-8", "backslashreplace")
                raise ConfigError(f"{flag}: '{shown}' is not a UTF-8 name, and --emit's messages "
                                  "can only carry UTF-8 paths: rename the directory")
    catalog, state_dir = _catalog(a.catalog, a.state_dir)
    trigger_token = _trigger_token(a.trigger_token) if a.trigger_token is not None else None
    if not CAMERA_NAME.fullmatch(a.name):
        raise ConfigError(f"--name: {a.name!r} is not a camera name (a-z, 0-9, _ and -, 1..32)")
    title = a.name if a.title is None else a.title
    if not 1 <= len(title) <= 64 or not title.isprintable():
        raise ConfigError("--title: 1..64 printable characters")
    customize = _customize_path(a.customize) if user is not None else None
    # Loaded here, once: a bad file fails now, not when the first frame arrives.
    detect_fn = load_detect(customize, user) if customize is not None and user else None
    faces_dir = None
    if "faces" in detectors:
        faces_dir = (Path(a.faces).absolute() if a.faces is not None
                     else default_state_dir(Path(a.state_dir).absolute() if a.state_dir
                                         else None) / "faces")
        if faces_dir.exists() and not faces_dir.is_dir():
            raise ConfigError(f"--faces: {str(faces_dir)!r} is not a directory")
        # Whether it is installed at all (found, not imported: the detectors sit above the
        # command line); its models are checked when the detector is made.
        if importlib.util.find_spec(FACES_MODULE) is None:
            raise ConfigError("--detect faces: not available in this version of pancake")
    return RecorderConfig(
        port=a.port,
        bind=a.bind,
        resolution=Size(*a.resolution),
        fps=a.fps,
        vflip=a.vflip,
        hflip=a.hflip,
        rotation=a.rotation,
        annotate_text_size=a.annotate_text_size,
        max_stream_fps=a.max_stream_fps,
        record_continuous=continuous,
        detection_mode=mode,
        detection_dir=detection_dir,
        record_resize=Size(*a.record_resize) if a.record_resize else None,
        detect=user,
        detect_resize=Size(*a.detect_resize) if a.detect_resize else None,
        detect_interval=(a.detect_interval if a.detect_interval is not None
                         # Faces cost ~90 ms a face: twice a second finds a face in time.
                         else max(FACE_INTERVAL, 1.0 / a.fps) if "faces" in detectors
                         else 1.0 / a.fps),
        emit=a.emit,
        login=_readable_file("--login", a.login) if a.login is not None else None,
        source=_source(a.source),
        record_split=a.record_split,
        customize=customize,
        log=a.log,
        certfile=_readable_file("--certfile", a.certfile) if a.certfile else None,
        keyfile=_readable_file("--keyfile", a.keyfile) if a.keyfile else None,
        min_free=min_free,
        trust_proxy=a.trust_proxy,
        self_check=a.self_check,
        catalog=catalog,
        state_dir=state_dir,
        name=a.name,
        title=title,
        detect_fn=detect_fn,
        detectors=detectors,
        detect_combine=a.detect_combine or "or",
        motion_mask=motion_mask,
        motion_min_area=(a.motion_min_area if a.motion_min_area is not None
                         else MOTION_MIN_AREA),
        motion_sensitivity=(a.motion_sensitivity if a.motion_sensitivity is not None
                            else MOTION_SENSITIVITY),
        motion_min_duration=(a.motion_min_duration if a.motion_min_duration is not None
                             else MOTION_MIN_DURATION),
        faces_dir=faces_dir,
        face_match=a.face_match if a.face_match is not None else FACE_MATCH,
        detect_gpio=a.detect_gpio,
        detect_gpio_kind=a.detect_gpio_kind or "motion",
        trigger_token=trigger_token,
        # --state-dir's even with --catalog elsewhere (state_dir above is None then).
        state_home=(home := default_state_dir(Path(a.state_dir).absolute()
                                              if a.state_dir else None)),
        masks_dir=home / "masks",
    )


class MaskError(ValueError):
    """A mask that cannot be used; its message is one line naming the file and what is wrong."""


def read_mask(path: str | Path) -> npt.NDArray[np.uint8]:
    """The mask file's grey levels at its own size; MaskError if it is not a picture or all
    black. Here, below the detectors, so that the command line, the page's upload and the
    motion detector check a mask by the same rules."""
    p = Path(path)
    try:
        return _decode_mask(str(p), f"motion mask {p}")
    except FileNotFoundError:
        raise MaskError(f"motion mask {p}: no such file") from None
    except IsADirectoryError:
        raise MaskError(f"motion mask {p}: is a directory, not an image") from None
    except PermissionError:
        raise MaskError(f"motion mask {p}: cannot be read (permission denied)") from None


def read_mask_bytes(data: bytes, shown: str = "the uploaded mask") -> npt.NDArray[np.uint8]:
    """A mask sent to the page (a PNG's bytes) by read_mask's rules; MaskError naming `shown`."""
    if not data:
        raise MaskError(f"{shown}: empty, not an image")
    return _decode_mask(io.BytesIO(data), shown)


def _decode_mask(source: str | io.BytesIO, shown: str) -> npt.NDArray[np.uint8]:
    """The first picture of `source` as grey levels; FileNotFoundError and its kin pass."""
    try:
        with av.open(source, "r") as container:
            if not container.streams.video:
                raise MaskError(f"{shown}: not an image (no picture in it)")
            ctx = container.streams.video[0].codec_context
            if max(ctx.width, ctx.height) > MAX_MASK_SIDE:
                raise MaskError(f"{shown}: {ctx.width}x{ctx.height} is larger than "
                                f"{MAX_MASK_SIDE} pixels a side")
            frame = next(container.decode(video=0), None)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (av.FFmpegError, OSError, StopIteration) as e:
        # FFmpeg opens anything its probes recognise; a text file or a truncated PNG lands here.
        raise MaskError(f"{shown}: not an image ({type(e).__name__})") from None
    if frame is None:
        raise MaskError(f"{shown}: not an image (no picture in it)")
    grey = mask_grey(frame)
    if not (grey >= 128).any():
        raise MaskError(f"{shown}: all black, so nothing would be watched "
                        "(white = watch, black = ignore)")
    return grey


def mask_grey(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """A decoded mask picture as grey levels; transparent pixels count as black (ignored)."""
    if frame.format.name in ("rgba", "bgra", "argb", "abgr", "ya8", "pal8", "rgba64be", "rgba64le",
                             "ya16be", "ya16le"):
        rgba = frame.to_ndarray(format="rgba")
        luma = (rgba[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        return np.where(rgba[..., 3] >= 128, luma, 0).astype(np.uint8)
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def _mask(flag: str, text: str) -> Path:
    path = Path(text).absolute()
    try:
        read_mask(path)
    except MaskError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    return path


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("customize", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--customize: cannot load {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"--detect needs {str(path)!r}, which does not exist") from None
    except Exception as exc:  # noqa: BLE001 — the user's file: any error is reported, not raised
        raise ConfigError(f"{str(path)!r} failed to load: {type(exc).__name__}: {exc}") from None
    return module


def load_detect(path: Path, kind: str) -> Callable[..., Any]:
    """The user's detect function, checked against --detect: detect() or detect(bytes)."""
    if not path.is_file():
        raise ConfigError(f"--detect needs {str(path)!r}, which does not exist")
    detect = getattr(_load_module(path), "detect", None)
    if not callable(detect):
        raise ConfigError(f"{str(path)!r} does not define detect()")
    try:
        sig = inspect.signature(detect)
    except (TypeError, ValueError):
        return detect  # type: ignore[no-any-return]  # a builtin or C callable: trust it
    args: tuple[object, ...] = () if kind == "no-image" else (b"",)
    try:
        sig.bind(*args)
    except TypeError:
        want = "detect()" if kind == "no-image" else "detect(bytes)"
        raise ConfigError(f"--detect {kind} needs {want}, but {str(path)!r} defines "
                          f"detect{sig}") from None
    return detect  # type: ignore[no-any-return]
