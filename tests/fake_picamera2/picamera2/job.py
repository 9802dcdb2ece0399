"""Stand-in for picamera2.job: work the main thread hands to the camera's event loop."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

__all__ = ["CancelledError", "Job"]


class Job:
    """As picamera2/job.py: a list of functions, each returning (done, result), run in turn on
    the event loop's thread; the caller waits on a Future (Job.get_result, no timeout unless
    given: picamera2.py's stop() passes wait=True, so none)."""

    def __init__(self, functions: list[Callable[[], tuple[bool, Any]]],
                 signal_function: Callable[[Job], None] | None = None) -> None:
        self._functions = functions
        self._future: Future[Any] = Future()
        self._signal_function = signal_function
        self._result: Any = None

    def execute(self) -> bool:
        while self._functions:
            done, result = self._functions[0]()
            if not done:
                return False
            self._result = result
            self._functions.pop(0)
        return True

    def signal(self) -> None:
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function is not None:
            self._signal_function(self)

    def get_result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout=timeout)

    def cancel(self) -> None:
        self._future.set_exception(CancelledError())
