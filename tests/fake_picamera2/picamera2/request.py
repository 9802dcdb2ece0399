"""Stand-in for picamera2.request: CompletedRequest and MappedArray over numpy frame buffers."""

from __future__ import annotations

from typing import Any

import numpy as np


class CompletedRequest:
    """One frame's buffers (one per configured stream) and its metadata."""

    def __init__(self, buffers: dict[str, np.ndarray], metadata: dict[str, Any],
                 config: dict[str, Any]) -> None:
        self._buffers = buffers
        self._metadata = metadata
        self.config = config
        self.stream_map = {name: name for name in buffers}
        self.ref_count = 1

    def acquire(self) -> None:
        self.ref_count += 1

    def release(self) -> None:
        self.ref_count -= 1

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def make_buffer(self, name: str) -> np.ndarray:
        if name not in self._buffers:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self._buffers[name].reshape(-1).copy()

    def make_array(self, name: str) -> np.ndarray:
        """YUV420 as picamera2 returns it: (height*3/2) rows of `stride` bytes, padding kept."""
        return self.make_buffer(name).reshape(self._buffers[name].shape)


class MappedArray:
    """`with MappedArray(request, "main") as m: m.array` is the stream's own buffer, writable."""

    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True,
                 write: bool = True) -> None:
        self._request = request
        self._stream = stream
        self._reshape = reshape
        self._array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        buf = self._request._buffers[self._stream]
        self._array = buf if self._reshape else buf.reshape(-1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None

    @property
    def array(self) -> np.ndarray:
        assert self._array is not None
        return self._array
