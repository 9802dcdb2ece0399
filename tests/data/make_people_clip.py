"""Cuts tests/data/people.mp4 from OpenCV's vtest.avi (Debian opencv-doc); see SOURCES.md."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 10
STILL = 4 * FPS  # the clip's own empty background, before and after the walk
WALK = (300, 380)  # vtest.avi frames 300..379: people walking both ways across the square
SIZE = (320, 240)


def main(src: str, dst: str) -> None:
    with av.open(src) as inp:
        frames = [f.reformat(SIZE[0], SIZE[1], "yuv420p") for f in inp.decode(video=0)]
    planes = [np.stack([f.to_ndarray()]) for f in frames]
    # The per-pixel median over the whole recording is the square with nobody on it: a real
    # still scene from the same camera, so that the clip has parts where nothing moves.
    still = np.median(np.concatenate(planes), axis=0).astype(np.uint8)
    seq = [still] * STILL + [p[0] for p in planes[WALK[0]:WALK[1]]] + [still] * STILL
    with av.open(dst, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, FPS)
        s.options = {"crf": "26", "preset": "medium"}
        for i, a in enumerate(seq):
            f = av.VideoFrame.from_ndarray(a, format="yuv420p")
            f.pts = i
            f.time_base = Fraction(1, FPS)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).with_name("people.mp4")))
