"""Bounded queues between stages: a producer never blocks; a full queue drops, counts, says so."""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Iterator
from typing import Generic, TypeVar

from raspberry_pancake.shared.logs import RateLimiter

T = TypeVar("T")
_limit = RateLimiter()


class _End:
    """The marker after the last item: the stage's thread finishes what is queued, then ends."""


class Inbox(Generic[T]):
    """What a stage's thread reads. `offer` is for other threads (the capture thread, the
    encoder): it never waits, and a full inbox loses the item on purpose, logged. `close` never
    waits either, even on a full inbox nobody reads (a stage stopped after its thread died)."""

    def __init__(self, maxsize: int, what: str, log: logging.Logger) -> None:
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=maxsize)
        self._what = what
        self._log = log
        # Set before the end marker is offered, read by the reader before it waits: a marker
        # that did not fit (the inbox was full) is then not needed, since the reader cannot be
        # waiting on a full queue and stops once it has drained it.
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: T) -> bool:
        if self._closed:
            return False  # after the end: the reader would never see it
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            _limit.log(self._log, logging.ERROR, f"drop {self._what}",
                       "%s behind: item dropped (%d so far)", self._what, self.dropped)
            return False
        return True

    def close(self) -> None:
        """No more items: the reader ends after the queued ones. Never blocks."""
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_End())

    def __iter__(self) -> Iterator[T]:
        while not (self._closed and self._queue.empty()):
            item = self._queue.get()
            if isinstance(item, _End):
                return
            yield item
