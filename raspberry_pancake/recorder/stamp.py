"""Where the burned-in clock goes and how big it is, for the sources and the motion detector."""

from __future__ import annotations

import time

__all__ = ["CELL_H", "CELL_W", "FORMS", "MARGIN", "layout", "scale_for", "stamp_size"]

CELL_W, CELL_H = 6, 9  # glyph plus one column of spacing; one row above and below
MARGIN = 4  # from the picture's edges, on every side
# The stamp's forms, longest first: the year goes when even the smallest glyphs leave no
# room for it (a picture under 122 pixels wide), then the date, then the seconds.
FORMS = ("%Y-%m-%d %H:%M:%S", "%m-%d %H:%M:%S", "%H:%M:%S", "%H:%M")


def stamp_size(chars: int, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of `chars` characters at `scale` pixels per font pixel; the
    cells' blank rows and last spacing column hold the outline."""
    return chars * CELL_W * scale, CELL_H * scale


def scale_for(height: int) -> int:
    return max(1, round(height / CELL_H))


def layout(width: int, height: int, text_height: int) -> tuple[str, int] | None:
    """The form and scale of the stamp on a width x height picture: the asked height when it
    fits, else smaller glyphs, else a shorter form; None when not even "hh:mm" fits."""
    if text_height <= 0:
        return None
    wanted = scale_for(text_height)
    for form in FORMS:
        chars = len(time.strftime(form, time.localtime(0)))
        for scale in range(wanted, 0, -1):
            w, h = stamp_size(chars, scale)
            if w <= width - 2 * MARGIN and h <= height - 2 * MARGIN:
                return form, scale
    return None
