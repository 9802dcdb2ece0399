"""Burns the date and time into frames: a bitmap font rendered once a second, pasted per frame."""

from __future__ import annotations

import time

import av
import numpy as np
import numpy.typing as npt

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
_CELL_W, _CELL_H = 6, 9  # glyph plus one column of spacing; one row above and below
_MARGIN = 4
# Studio-swing luma: white text with a black outline reads on any picture.
_TEXT_Y, _EDGE_Y = 235, 16

Mask = npt.NDArray[np.bool_]
Plane = npt.NDArray[np.uint8]


def render(text: str, height: int) -> tuple[Mask, Mask]:
    """The text's pixels and its one-pixel outline, as masks about `height` pixels tall."""
    scale = max(1, round(height / _CELL_H))
    cells = np.zeros((_CELL_H, _CELL_W * len(text)), dtype=bool)
    for i, ch in enumerate(text):
        rows = _GLYPHS.get(ch, _GLYPHS[" "])
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                cells[r + 1, i * _CELL_W + c] = bit == "1"
    glyphs = np.kron(cells, np.ones((scale, scale), dtype=bool))
    grown = glyphs.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(glyphs, dy, axis=0), dx, axis=1)
    return glyphs, grown & ~glyphs


class Annotator:
    """Writes local date and time into the top-left corner of yuv420p frames, in place."""

    def __init__(self, text_height: int) -> None:
        self._height = text_height
        self._second = -1
        self._text: Mask | None = None
        self._edge: Mask | None = None

    def _masks(self, wall: float) -> tuple[Mask, Mask]:
        second = int(wall)
        if second != self._second or self._text is None or self._edge is None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._text, self._edge = render(stamp, self._height)
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
        text, edge = self._masks(wall)
        h = min(text.shape[0], height - _MARGIN)
        w = min(text.shape[1], width - _MARGIN)
        if h <= 0 or w <= 0:
            return
        box = y[_MARGIN:_MARGIN + h, _MARGIN:_MARGIN + w]
        box[text[:h, :w]] = _TEXT_Y
        box[edge[:h, :w]] = _EDGE_Y
        # Neutral chroma under the text so it is white on any colour.
        y0, x0, y1, x1 = _MARGIN // 2, _MARGIN // 2, (_MARGIN + h) // 2, (_MARGIN + w) // 2
        u[y0:y1, x0:x1] = 128
        v[y0:y1, x0:x1] = 128
