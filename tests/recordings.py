"""Reading what pancake recorded: decode raw H.264 with PyAV, read the .pts sidecar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av


@dataclass
class Recording:
    path: Path
    frames: int  # decoded frames
    first_is_key: bool
    pts_ms: list[float]  # from the sidecar
    start: float  # epoch seconds of the first frame (the event's "time")

    @property
    def end(self) -> float:
        """Epoch seconds of the last frame."""
        return self.start + self.pts_ms[-1] / 1000

    @property
    def duration(self) -> float:
        return self.pts_ms[-1] / 1000


def read_pts(path: Path) -> list[float]:
    lines = path.read_text().splitlines()
    assert lines[0] == "# timecode format v2", lines[:1]
    return [float(x) for x in lines[1:]]


def decode(path: Path, start: float) -> Recording:
    frames = 0
    first_is_key = False
    with av.open(str(path), format="h264") as container:
        for frame in container.decode(video=0):
            if frames == 0:
                first_is_key = bool(frame.key_frame)
            frames += 1
    return Recording(path, frames, first_is_key, read_pts(path.with_suffix(".pts")), start)
