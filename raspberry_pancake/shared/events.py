"""The pancake → postproc message schema: one JSON object per datagram, shared by both daemons."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypedDict

# An abstract datagram socket carries at most this much in one message (DESIGN.md).
MAX_DATAGRAM = 64 * 1024
# Linux abstract socket names share sun_path's 108 bytes with the leading NUL.
MAX_SOCKET_NAME = 107


class Event(TypedDict, total=False):
    """One message. Every field is optional on the wire; `validate` checks the combinations.

    h264: a finished file (absolute path); detection: an edge, or with h264 the clip around one;
    time: epoch seconds of the edge or of the file's start; jpeg: a snapshot taken at the edge;
    pts: the file's timestamps sidecar; disk/free/dir: a record directory runs short of space;
    labels/names/boxes/score: what a detection saw (DESIGN.md "Messages"); update: new labels or
    names while a detection is on; jpeg_boxes: the snapshot with the boxes drawn; health: the
    camera's state; camera: its name (absent: "cam").
    """

    h264: str
    detection: bool
    time: float
    jpeg: str
    pts: str
    disk: str
    free: int
    dir: str
    labels: list[str]
    names: list[str]
    boxes: list[list[float]]
    score: float
    update: bool
    jpeg_boxes: str
    health: str
    camera: str


class EventError(ValueError):
    """A datagram that is not a valid event; the message says why, in a few words."""


_TYPES: dict[str, tuple[type, ...]] = {
    "h264": (str,),
    "detection": (bool,),
    "time": (int, float),
    "jpeg": (str,),
    "pts": (str,),
    "disk": (str,),
    "free": (int,),
    "dir": (str,),
    "labels": (list,),
    "names": (list,),
    "boxes": (list,),
    "score": (int, float),
    "update": (bool,),
    "jpeg_boxes": (str,),
    "health": (str,),
    "camera": (str,),
}
_PATHS = ("h264", "jpeg", "pts", "dir", "jpeg_boxes")
# What a message is about: one of these must be there (the rest only qualify it).
_KINDS = frozenset({"h264", "detection", "disk", "update", "health"})
HEALTH = frozenset({"live", "offline", "delay", "error"})
CAMERA_NAME = re.compile(r"[a-z0-9_-]{1,32}")
# labels and names: a handful of short words each, as a caption and an MQTT payload show them.
MAX_WORDS = 32
MAX_WORD = 64
MAX_BOXES = 64
# A `time` outside 2000-01-01 .. 2200-01-01 UTC is a wrong clock or a forged datagram, and
# beyond year 9999 datetime cannot even show it: such an event is dropped.
TIME_MIN = 946684800
TIME_MAX = 7258118400
# `free` is a byte count: no filesystem holds more than 2**63 bytes.
FREE_MAX = 2**63
# Linux's PATH_MAX; text fields end up in alerts and log lines.
MAX_TEXT = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate(obj: Any) -> Event:
    """Return obj as an Event, or raise EventError. Unknown keys are ignored (new senders)."""
    if not isinstance(obj, dict):
        raise EventError("not a JSON object")
    event: dict[str, Any] = {}
    for key, types in _TYPES.items():
        if key not in obj:
            continue
        value = obj[key]
        # bool is an int in Python: keep "free": true and "time": true out.
        if isinstance(value, bool) and bool not in types:
            raise EventError(f"{key}: wrong type")
        if not isinstance(value, types):
            raise EventError(f"{key}: wrong type")
        if isinstance(value, str):
            _check_text(key, value)
        elif key == "time" and isinstance(value, int | float):
            _check_time(value)
        elif key == "free" and isinstance(value, int) and not 0 <= value <= FREE_MAX:
            raise EventError("free: out of range")
        elif key == "score" and isinstance(value, int | float):
            _check_fraction(key, value)
        elif key in ("labels", "names") and isinstance(value, list):
            _check_words(key, value)
        elif key == "boxes" and isinstance(value, list):
            _check_boxes(value)
        if key == "update" and value is not True:
            raise EventError("update: only true")
        if key == "health" and value not in HEALTH:
            raise EventError(f"health: not one of {', '.join(sorted(HEALTH))}")
        if key == "camera" and isinstance(value, str) and not CAMERA_NAME.fullmatch(value):
            raise EventError("camera: not a camera name (a-z, 0-9, _ and -, 1..32)")
        event[key] = value
    if not event.keys() & _KINDS:
        raise EventError("neither h264, detection, disk, update nor health")
    if "disk" in event and not ("free" in event and "dir" in event):
        raise EventError("disk without free and dir")
    return Event(**event)  # type: ignore[typeddict-item,no-any-return]


def _check_text(key: str, value: str) -> None:
    try:
        # JSON can spell a lone surrogate (\ud800). A Linux name may hold any bytes (Python
        # spells them as such surrogates), but the protocol carries UTF-8 names only.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"{key}: not valid Unicode") from None
    if len(value) > MAX_TEXT:
        raise EventError(f"{key}: longer than {MAX_TEXT} characters")
    # A newline would forge a line in postproc's log, where paths are quoted as they are.
    if _CONTROL.search(value):
        raise EventError(f"{key}: control character")
    if key in _PATHS and not value.startswith("/"):
        raise EventError(f"{key}: not an absolute path")


def _check_fraction(key: str, value: float) -> None:
    # Compared as is, like time: float() of a huge integer would raise OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError(f"{key}: not a finite number")
    if not 0 <= value <= 1:
        raise EventError(f"{key}: out of range (0..1)")


def _check_words(key: str, value: list[Any]) -> None:
    if len(value) > MAX_WORDS:
        raise EventError(f"{key}: more than {MAX_WORDS}")
    for word in value:
        if not isinstance(word, str):
            raise EventError(f"{key}: not a list of strings")
        _check_text(key, word)
        # Printable only: a caption and a log line show them as they are (no tab, no
        # zero-width or bidi control, which isprintable() refuses too).
        if not 1 <= len(word) <= MAX_WORD or not word.isprintable():
            raise EventError(f"{key}: not 1..{MAX_WORD} printable characters")


def _check_boxes(value: list[Any]) -> None:
    if len(value) > MAX_BOXES:
        raise EventError(f"boxes: more than {MAX_BOXES}")
    for box in value:
        if not isinstance(box, list) or len(box) != 4:
            raise EventError("boxes: not a list of [x, y, w, h]")
        for v in box:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise EventError("boxes: not a list of [x, y, w, h]")
            _check_fraction("boxes", v)


def _check_time(value: float) -> None:
    # Compared as is: a float() of a 4000-digit integer would raise OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError("time: not a finite number")
    if not TIME_MIN <= value <= TIME_MAX:
        raise EventError("time: out of range (years 2000 to 2200)")


def encode(event: Event) -> bytes:
    """The datagram for an event; raises EventError if it would not fit in one."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_DATAGRAM:
        raise EventError(f"event of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode(data: bytes) -> Event:
    """The event in a datagram, or EventError: too long, not UTF-8, not JSON, wrong fields.
    Nothing else escapes, whatever the datagram holds."""
    if len(data) > MAX_DATAGRAM:
        raise EventError("datagram too long")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("not UTF-8") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError("not JSON") from exc
    except RecursionError as exc:
        raise EventError("JSON nested too deep") from exc
    except ValueError as exc:
        # An integer of more than 4300 digits (sys.int_max_str_digits) is refused by int().
        raise EventError("number too long") from exc
    return validate(obj)


def abstract_address(name: str) -> str:
    """The abstract-namespace address for a socket name, as the original: NUL + name."""
    return "\0" + name
