"""Stand-in for picamera2.encoders.encoder: the Encoder base class and Quality."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

from .. import _standin
from ..outputs import Output

# Outputs get (frame, keyframe, timestamp, packet, audio) since 0.3.23; before, three arguments
# (v0.3.22 encoders/encoder.py line 257: `out.outputframe(frame, keyframe, timestamp)`).
_FIVE_ARGUMENTS = _standin.VERSION >= (0, 3, 23)


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class Encoder:
    """As picamera2's (encoders/encoder.py): sized and named by Picamera2.start_encoder, fed one
    request per frame from the event loop, hands each encoded frame to every output with a
    timestamp in µs counted from the first frame it encoded (its `firsttimestamp`, the sensor
    time of that frame, _timestamp lines 364-372)."""

    def __init__(self) -> None:
        self.width = 0
        self.height = 0
        self.stride = 0
        self.format: str | None = None
        self._output: list[Output] = []
        self._running = False
        self.name: str | None = None
        self._lock = threading.Lock()
        self._output_lock = threading.Lock()
        self.firsttimestamp: int | None = None
        self.framerate: float | None = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def output(self) -> Output | list[Output]:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Output | list[Output]) -> None:
        outputs = value if isinstance(value, list) else [value]
        for out in outputs:
            if not isinstance(out, Output):
                raise RuntimeError("Must pass Output")
        self._output = outputs

    def encode(self, stream: Any, request: Any) -> None:
        with self._lock:
            if not self._running:
                return
            self._encode(stream, request)

    def _encode(self, stream: Any, request: Any) -> None:
        raise NotImplementedError

    def start(self, quality: Quality | None = None) -> None:
        # As encoder.py lines 299-309: _running is set before _start(), so an encoder whose
        # _start() raised still counts as running (stop() then goes through _stop()).
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self._setup(quality)
            self._running = True
            self.firsttimestamp = None
            for out in self._output:
                out.start()
            self._start()

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            self._stop()
            for out in self._output:
                out.stop()

    def _setup(self, quality: Quality | None) -> None:
        pass

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def outputframe(self, frame: Any, keyframe: bool = True, timestamp: int | None = None,
                    packet: Any = None, audio: bool = False) -> None:
        with self._output_lock:
            for out in self._output:
                if _FIVE_ARGUMENTS:
                    out.outputframe(frame, keyframe, timestamp, packet, audio)
                else:
                    out.outputframe(frame, keyframe, timestamp)

    def _timestamp(self, request: Any) -> int:
        ts = int(request.get_metadata()["SensorTimestamp"] // 1000)
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        return ts - self.firsttimestamp
