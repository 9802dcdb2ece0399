"""Stand-in for picamera2.encoders.encoder: the Encoder base class and Quality."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

from ..outputs import Output


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class Encoder:
    """As picamera2's: sized and named by Picamera2.start_encoder, fed one request per frame,
    hands each encoded frame to every output with a timestamp in microseconds counted from
    the first frame it encoded (its `firsttimestamp`, the sensor time of that frame)."""

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
            if self._running:
                self._encode(stream, request)

    def _encode(self, stream: Any, request: Any) -> None:
        raise NotImplementedError

    def start(self, quality: Quality | None = None) -> None:
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
                out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, request: Any) -> int:
        # As picamera2: the sensor timestamp (ns) in µs, relative to the first frame encoded.
        ts = int(request.get_metadata()["SensorTimestamp"] // 1000)
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        return ts - self.firsttimestamp
