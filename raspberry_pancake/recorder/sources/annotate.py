"""Burns the date and time into frames: a bitmap font rendered once a second, pasted per frame."""

from __future__ import annotations

import logging
import time

import av
import numpy as np
import numpy.typing as npt

from raspberry_pancake.recorder.stamp import (
    CELL_H,
    CELL_W,
    FORMS,
    MARGIN,
    layout,
    scale_for,
    stamp_size,
)

# 5x7 glyphs, one string of five bits per row. Only what a timestamp needs.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    ":": ("00000", "01100", "01100", "00000", "01100", "01100", "00000"),
    ".": ("00000", "00000", "00000", "00000", "00000", "01100", "01100"),
    " ": ("00000",) * 7,
}
# Studio-swing luma: white text with a black outline reads on any picture.
_TEXT_Y, _EDGE_Y = 235, 16

# layout, stamp_size and FORMS are re-exported: tests and the sources read them from here.
__all__ = ["FORMS", "Annotator", "layout", "render", "stamp_size"]

Mask = npt.NDArray[np.bool_]
Plane = npt.NDArray[np.uint8]

log = logging.getLogger(__name__)


def render(text: str, height: int) -> tuple[Mask, Mask]:
    """The text's pixels and its one-pixel outline, as masks about `height` pixels tall (a
    whole number of font pixels: stamp_size(len(text), scale) for a height of 9 * scale)."""
    scale = scale_for(height)
    cells = np.zeros((CELL_H, CELL_W * len(text)), dtype=bool)
    for i, ch in enumerate(text):
        rows = _GLYPHS.get(ch, _GLYPHS[" "])
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                cells[r + 1, i * CELL_W + c] = bit == "1"
    glyphs = np.kron(cells, np.ones((scale, scale), dtype=bool))
    # Grown on a padded copy: np.roll wraps round, and once put the first glyph's left
    # outline at the right end, past the last character.
    padded = np.pad(glyphs, 1)
    grown = padded.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(padded, dy, axis=0), dx, axis=1)
    return glyphs, (grown & ~padded)[1:-1, 1:-1]


class Annotator:
    """Writes local date and time into the top-left corner of yuv420p frames, in place, as
    large as --annotate-text-size asks and the picture's width allows."""

    def __init__(self, text_height: int) -> None:
        self._height = text_height
        self._second = -1
        self._size: tuple[int, int] | None = None
        self._layout: tuple[str, int] | None = None
        self._text: Mask | None = None
        self._edge: Mask | None = None

    def _fit(self, width: int, height: int) -> tuple[str, int] | None:
        if self._size != (width, height):
            self._size, self._second = (width, height), -1
            self._layout = layout(width, height, self._height)
            wanted = scale_for(self._height)
            if self._layout is None:
                log.warning("no room for the date and time on a %dx%d picture", width, height)
            elif self._layout != (FORMS[0], wanted):
                form, scale = self._layout
                shown = form
                for code, word in _WORDS.items():
                    shown = shown.replace(code, word)
                log.info("date and time as %s, %d pixels high (--annotate-text-size %d), to "
                         "fit a %d pixel wide picture", shown, stamp_size(0, scale)[1],
                         self._height, width)
        return self._layout

    def _masks(self, wall: float, form: str, scale: int) -> tuple[Mask, Mask]:
        second = int(wall)
        if second != self._second or self._text is None or self._edge is None:
            stamp = time.strftime(form, time.localtime(second))
            self._text, self._edge = render(stamp, scale * CELL_H)
            self._second = second
        return self._text, self._edge

    def __call__(self, frame: av.VideoFrame, wall: float) -> None:
        """Stamp a yuv420p PyAV frame."""
        if self._height <= 0:
            return
        planes = [np.frombuffer(memoryview(p), np.uint8).reshape(-1, p.line_size)
                  for p in frame.planes[:3]]
        self.stamp(planes[0], planes[1], planes[2], frame.width, frame.height, wall)

    def stamp(self, y: Plane, u: Plane, v: Plane, width: int, height: int, wall: float) -> None:
        """Stamp YUV 4:2:0 planes given as arrays (rows may be padded beyond `width`)."""
        if self._height <= 0:
            return
        fit = self._fit(width, height)
        if fit is None:
            return
        text, edge = self._masks(wall, *fit)
        # layout() keeps the stamp inside; the crop only guards the planes' bounds.
        h = min(text.shape[0], height - MARGIN)
        w = min(text.shape[1], width - MARGIN)
        box = y[MARGIN:MARGIN + h, MARGIN:MARGIN + w]
        box[text[:h, :w]] = _TEXT_Y
        box[edge[:h, :w]] = _EDGE_Y
        # Neutral chroma under the text so it is white on any colour; rounded outwards, so
        # that a box of odd size leaves no coloured half-line.
        y0, x0 = MARGIN // 2, MARGIN // 2
        y1, x1 = (MARGIN + h + 1) // 2, (MARGIN + w + 1) // 2
        u[y0:y1, x0:x1] = 128
        v[y0:y1, x0:x1] = 128


# For the log line: a form as people read it ("MM-DD hh:mm:ss").
_WORDS = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%H": "hh", "%M": "mm", "%S": "ss"}
