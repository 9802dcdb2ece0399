"""What a detector returns: a bool, or a Detection carrying labels, names, boxes and a score."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Box", "Detection", "as_detection"]

# [x, y, w, h] as fractions of the frame (DESIGN.md "Messages").
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Detection:
    """One detector's answer for one frame. Truthiness decides the edge; the rest travels in
    the edge message, the catalog, the alert caption and MQTT."""

    detected: bool
    labels: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    score: float | None = None

    def __bool__(self) -> bool:
        return self.detected


NOTHING = Detection(False)


def _box(value: Any) -> Box | None:
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    # Clipped to the frame: a box a little outside it is still the thing that was seen.
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    x1, y1 = min(max(x + w, 0.0), 1.0), min(max(y + h, 0.0), 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return (round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4))


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        return tuple(dict.fromkeys(str(v) for v in value if str(v)))
    except TypeError:
        return ()


def as_detection(value: Any) -> Detection:
    """Whatever a detector returned, as a Detection: a bool, a Detection, a Mapping with
    `detected`/`labels`/`names`/`boxes`/`score`, or any object with those attributes (the
    motion detector's Motion). A Mapping without `detected` is detected when truthy."""
    if isinstance(value, Detection):
        return value
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
    boxes = tuple(b for b in (_box(v) for v in (get("boxes") or ())) if b is not None)
    score = get("score")
    try:
        score = None if score is None else min(max(float(score), 0.0), 1.0)
    except (TypeError, ValueError):
        score = None
    if score is not None and not math.isfinite(score):
        score = None
    return Detection(detected, _words(get("labels") or ()), _words(get("names") or ()), boxes,
                     score)
