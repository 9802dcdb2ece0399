"""Stand-in for picamera2.request: CompletedRequest and MappedArray over numpy frame buffers.

Each buffer has two sides: `cpu`, what Python sees through MappedArray and make_array, and
`device`, what the hardware H.264 encoder reads by DMA. The ISP writes both. picamera2's
MappedArray ends with a DMA-buffer sync that flushes the CPU cache, so what pre_callback drew
reaches the encoder — except in 0.3.32, where request.py's _MappedBuffer syncs only for the
legacy LibcameraAllocator (`if self.__allocator.needs_sync`, v0.3.32 request.py lines 37-40;
restored in 0.3.33 by commit fcbdcca): there the drawing stays in the CPU cache and the
hardware encoder records the picture without it. This stand-in copies `cpu` to `device` on
MappedArray's exit, except as 0.3.32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _standin

_FLUSHES = _standin.VERSION != (0, 3, 32)


class FrameBuffer:
    """One stream's buffer of one request, allocated at configure and reused (a dmabuf)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.cpu = np.zeros(shape, np.uint8)
        self.device = np.zeros(shape, np.uint8)

    def isp_write(self, data: np.ndarray) -> None:
        self.device[...] = data
        self.cpu[...] = data

    def flush(self) -> None:
        self.device[...] = self.cpu


class CompletedRequest:
    """One frame's buffers (one per configured stream) and its metadata; recycled to the camera
    when its reference count drops to zero (picamera2 request.py: acquire/release)."""

    def __init__(self, picam2: Any, buffers: dict[str, FrameBuffer], metadata: dict[str, Any],
                 recycle: Callable[[dict[str, FrameBuffer]], None]) -> None:
        self.picam2 = picam2
        self.buffers = buffers
        self._metadata = metadata
        self._recycle = recycle
        self.lock = picam2.request_lock
        self.config = dict(picam2.camera_config)
        self.stream_map = dict(picam2.stream_map)
        self.ref_count = 1

    def acquire(self) -> None:
        with self.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count > 0:
                return
        self._recycle(self.buffers)
        self.config = {}
        self.stream_map = {}

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def _buffer(self, name: str) -> FrameBuffer:
        if self.stream_map.get(name) is None:
            raise KeyError(name)
        return self.buffers[name]

    def make_buffer(self, name: str) -> np.ndarray:
        return self._buffer(name).cpu.reshape(-1).copy()

    def make_array(self, name: str) -> np.ndarray:
        """YUV420 as picamera2 returns it: (height*3/2) rows of `stride` bytes, padding kept."""
        return self._buffer(name).cpu.copy()


class MappedArray:
    """`with MappedArray(request, "main") as m: m.array` is the stream's own buffer, writable."""

    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True,
                 write: bool = True) -> None:
        self._buffer = request._buffer(stream)
        self._reshape = reshape
        self._array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        buf = self._buffer.cpu
        self._array = buf if self._reshape else buf.reshape(-1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None
        if _FLUSHES:
            self._buffer.flush()

    @property
    def array(self) -> np.ndarray:
        assert self._array is not None
        return self._array
