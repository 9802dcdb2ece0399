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
    pts: the file's timestamps sidecar; disk/free/dir: a record directory runs short of space.
    """

    h264: str
    detection: bool
    time: float
    jpeg: str
    pts: str
    disk: str
    free: int
    dir: str


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
}
_PATHS = ("h264", "jpeg", "pts", "dir")
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
        event[key] = value
    if not event.keys() & {"h264", "detection", "disk"}:
        raise EventError("neither h264, detection nor disk")
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
