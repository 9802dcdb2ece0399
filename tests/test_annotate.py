"""The burned-in date and time, read back from what pancake recorded: whole, and inside the picture."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from conftest import Pancake, run_pancake

from raspberry_pancake.recorder.sources.annotate import FORMS, render

MARGIN = 4  # pixels the stamp keeps from the picture's edges
TEXT_SIZE = 24  # the default --annotate-text-size
CELL_HEIGHT = 9  # the font's: 7 rows of glyph, one blank above and below
Plane = npt.NDArray[np.uint8]


def decoded(path: Path) -> list[tuple[Plane, Plane, Plane]]:
    """Every frame of a raw .h264 file as its Y, U and V planes."""
    frames = []
    with av.open(str(path), format="h264") as container:
        for frame in container.decode(video=0):
            yuv = np.asarray(frame.to_ndarray(format="yuv420p"), dtype=np.uint8)
            h, w = frame.height, frame.width
            u = yuv[h:h + h // 4].reshape(h // 2, w // 2)
            v = yuv[h + h // 4:].reshape(h // 2, w // 2)
            frames.append((yuv[:h], u, v))
    return frames


def neutral_right_edge(u: Plane, v: Plane) -> int:
    """The right edge, in pixels, of the grey box the stamp sits on: the annotator makes the
    chroma neutral under it, and testsrc2's colours never are (not in its top rows)."""
    grey = (np.abs(u[2:6].astype(int) - 128) <= 8) & (np.abs(v[2:6].astype(int) - 128) <= 8)
    columns = np.flatnonzero(grey.mean(axis=0) >= 0.75)
    assert columns.size, "no stamp found"
    return 2 * (int(columns.max()) + 1)


def best_reading(y: Plane, seconds: range) -> tuple[float, str, int, int]:
    """The stamp that matches the picture best: (agreement 0..1, text, scale, right edge),
    among every form, scale and second it could be. A stamp cut by the picture's edge never
    matches, since the whole rendering must lie inside the picture."""
    height, width = y.shape
    best = (0.0, "", 0, 0)
    for form in FORMS:
        for text in {time.strftime(form, time.localtime(s)) for s in seconds}:
            for scale in range(1, 6):
                glyphs, edge = render(text, CELL_HEIGHT * scale)
                drawn = glyphs | edge
                h, w = glyphs.shape
                for x in (MARGIN - 1, MARGIN, MARGIN + 1):  # a pixel either way may do
                    if x + w > width or MARGIN + h > height:
                        continue
                    seen = y[MARGIN:MARGIN + h, x:x + w] > 128
                    score = float(np.mean(seen[drawn] == glyphs[drawn]))
                    if score > best[0]:
                        best = (score, text, scale, x + w)
    return best


@pytest.mark.parametrize(("args", "size", "form", "scale"), [
    (["--resolution", "640", "480"], (640, 480), FORMS[0], 3),  # as large as asked
    (["--resolution", "320", "240"], (320, 240), FORMS[0], 2),  # the default: was cut off
    (["--resolution", "320", "240", "--rotation", "90"], (240, 320), FORMS[0], 2),
    (["--resolution", "160", "120"], (160, 120), FORMS[0], 1),
    (["--resolution", "96", "64"], (96, 64), FORMS[1], 1),  # too narrow for the year
])
def test_stamp_is_whole_and_inside_the_picture(tmp_path: Path, pancakes: list[Pancake],
                                               args: list[str], size: tuple[int, int],
                                               form: str, scale: int) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    began = int(time.time())
    p = run_pancake(pancakes, ["--source", "testsrc", "--fps", "5", "--record-continuous",
                               str(rec), "--annotate-text-size", str(TEXT_SIZE), *args], tmp_path)
    p.wait_for("first frame captured", timeout=30)
    time.sleep(2.5)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    seconds = range(began - 1, int(time.time()) + 2)
    frames = [f for path in sorted(rec.glob("*.h264")) for f in decoded(path)]
    assert len(frames) >= 5, p.log()
    width, height = size
    read = []
    for y, u, v in (frames[0], frames[len(frames) // 2], frames[-1]):
        assert y.shape == (height, width)
        right = neutral_right_edge(u, v)
        assert right <= width - MARGIN, f"the stamp runs to x={right} of {width}"
        score, text, found_scale, text_right = best_reading(y, seconds)
        assert score >= 0.9, (score, text, found_scale)
        assert len(text) == len(time.strftime(form)), text  # all of it, in the expected form
        assert found_scale == scale
        assert abs(text_right - right) <= 2, (text_right, right)
        read.append(text)
    assert read[0] != read[-1], read  # the clock runs: a stamp per second, not one for all
