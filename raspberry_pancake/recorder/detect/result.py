"""What a detector returns: a bool, or a Detection carrying labels, names, boxes, faces and a score."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raspberry_pancake.shared.faces import UNKNOWN

__all__ = ["Box", "Detection", "FaceTag", "as_detection", "combine"]

# [x, y, w, h] as fractions of the frame (DESIGN.md "Messages").
Box = tuple[float, float, float, float]
# What one message may carry (shared/events.py refuses more, and with it the whole message).
MAX_WORDS = 32
MAX_WORD = 64
MAX_BOXES = 64


@dataclass(frozen=True, slots=True)
class FaceTag:
    """One face as the faces detector named it: its box (also among the boxes), its name (a
    person or "unknown"), and a probable match's name or "" (captions only: NAME?). Kept
    together so that combining with other detectors cannot pair a box with another's name."""

    box: Box
    name: str
    probable: str = ""

    @property
    def label(self) -> str:
        """What the snapshot writes over the box: "Anna", "unknown", or "Anna?"."""
        return f"{self.probable}?" if self.probable and self.name == UNKNOWN else self.name


@dataclass(frozen=True, slots=True)
class Detection:
    """One detector's answer for one frame. Truthiness decides the edge; the rest travels in
    the edge message, the catalog, the alert caption and MQTT. `faces` is for pancake itself
    (the snapshot's labels, the event's stored faces); no message carries it."""

    detected: bool
    labels: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    score: float | None = None
    faces: tuple[FaceTag, ...] = ()

    def __bool__(self) -> bool:
        return self.detected


NOTHING = Detection(False)


def _box(value: Any) -> Box | None:
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    # Clipped to the frame: a box a little outside it is still the thing that was seen.
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    x1, y1 = min(max(x + w, 0.0), 1.0), min(max(y + h, 0.0), 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return (round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4))


def _word(value: Any) -> str | None:
    """A label or name as a message carries it: 1..64 printable characters, else None (a
    word the schema refuses would drop the whole edge message at the receiver)."""
    text = " ".join(str(value).split())  # tabs and newlines to spaces, as a caption shows it
    if len(text) > MAX_WORD:
        text = text[:MAX_WORD].rstrip()
    return text if text and text.isprintable() else None


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        words = (_word(v) for v in value)
        return tuple(dict.fromkeys(w for w in words if w is not None))[:MAX_WORDS]
    except TypeError:
        return ()


def _faces(value: Any) -> tuple[FaceTag, ...]:
    """FaceTags only (the faces detector's; anything else is not a face we can vouch for),
    with boxes and words as a message would carry them."""
    out = []
    try:
        for tag in value or ():
            if not isinstance(tag, FaceTag):
                continue
            box, name = _box(tag.box), _word(tag.name)
            if box is None or name is None:
                continue
            out.append(FaceTag(box, name, (_word(tag.probable) or "") if tag.probable else ""))
    except TypeError:
        return ()
    return tuple(dict.fromkeys(out))[:MAX_BOXES]


def as_detection(value: Any) -> Detection:
    """Whatever a detector returned, as a Detection: a bool, a Detection, a Mapping with
    `detected`/`labels`/`names`/`boxes`/`score`/`faces`, or any object with those attributes
    (the motion detector's Motion, through its to_detection()). A Mapping without `detected`
    is detected when truthy. Words and boxes a message could not carry are left out."""
    to = getattr(value, "to_detection", None)
    if callable(to):  # the motion detector's Motion: its boxes are in pixels of its frame
        value = to()
    if isinstance(value, bool) or value is None:
        return Detection(bool(value))
    get: Any
    if isinstance(value, Mapping):
        get = value.get
        detected = bool(value.get("detected", bool(value)))
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(value, key, default)
        detected = bool(value)
    try:
        boxes = tuple(b for b in (_box(v) for v in (get("boxes") or ())) if b is not None)
    except TypeError:  # boxes that are not a sequence at all
        boxes = ()
    boxes = boxes[:MAX_BOXES]
    score = get("score")
    try:
        score = None if score is None else min(max(float(score), 0.0), 1.0)
    except (TypeError, ValueError, OverflowError):
        score = None
    if score is not None and not math.isfinite(score):
        score = None
    return Detection(detected, _words(get("labels") or ()), _words(get("names") or ()), boxes,
                     score, _faces(get("faces")))


def _union(parts: Iterable[Sequence[Any]], limit: int) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(v for part in parts for v in part))[:limit]


def combine(results: Sequence[Detection], how: str = "or") -> Detection:
    """Several detectors' answers for one frame as one: detected when any of them is ("or")
    or all of them are ("and"); the labels, names, boxes and faces of those that detected,
    unioned in order; the highest of their scores."""
    if how not in ("or", "and"):
        raise ValueError(f"combine: {how!r} is neither 'or' nor 'and'")
    if not results:
        return NOTHING
    detected = any(results) if how == "or" else all(results)
    if not detected:
        return NOTHING
    on = [r for r in results if r]
    scores = [r.score for r in on if r.score is not None]
    return Detection(True, _union((r.labels for r in on), MAX_WORDS),
                     _union((r.names for r in on), MAX_WORDS),
                     _union((r.boxes for r in on), MAX_BOXES),
                     max(scores) if scores else None,
                     _union((r.faces for r in on), MAX_BOXES))
