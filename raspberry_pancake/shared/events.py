"""The pancake → postproc message schema: one JSON object per datagram, shared by both daemons."""

from __future__ import annotations

import json
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
        if key in _PATHS and isinstance(value, str) and (
                "\0" in value or not value.startswith("/")):
            raise EventError(f"{key}: not an absolute path")
        event[key] = value
    if not event.keys() & {"h264", "detection", "disk"}:
        raise EventError("neither h264, detection nor disk")
    if "disk" in event and not ("free" in event and "dir" in event):
        raise EventError("disk without free and dir")
    return Event(**event)  # type: ignore[typeddict-item,no-any-return]


def encode(event: Event) -> bytes:
    """The datagram for an event; raises EventError if it would not fit in one."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_DATAGRAM:
        raise EventError(f"event of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode(data: bytes) -> Event:
    """The event in a datagram, or EventError: too long, not UTF-8, not JSON, wrong fields."""
    if len(data) > MAX_DATAGRAM:
        raise EventError("datagram too long")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EventError("not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise EventError("not JSON") from exc
    except RecursionError as exc:
        raise EventError("JSON nested too deep") from exc
    return validate(obj)


def abstract_address(name: str) -> str:
    """The abstract-namespace address for a socket name, as the original: NUL + name."""
    return "\0" + name
