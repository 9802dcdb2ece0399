"""Stand-in for picamera2.outputs.output: the base class every encoder destination subclasses."""

from __future__ import annotations

from typing import Any


class Output:
    """Receives encoded frames: `outputframe(frame, keyframe, timestamp, packet, audio)` since
    0.3.23, `outputframe(frame, keyframe, timestamp)` before (outputs/output.py line 25/26)."""

    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                    packet: Any = None, audio: bool = False) -> None:
        """One encoded frame; `timestamp` is in microseconds from the encoder's first frame."""

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        pass
