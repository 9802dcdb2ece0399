"""Bounded queues between stages: a producer never blocks; a full queue drops, counts, says so."""

from __future__ import annotations

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
    encoder): it never waits, and a full inbox loses the item on purpose, logged."""

    def __init__(self, maxsize: int, what: str, log: logging.Logger) -> None:
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=maxsize)
        self._what = what
        self._log = log
        self.dropped = 0

    def offer(self, item: T) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            _limit.log(self._log, logging.ERROR, f"drop {self._what}",
                       "%s behind: item dropped (%d so far)", self._what, self.dropped)
            return False
        return True

    def close(self) -> None:
        """No more items: the reader ends after the queued ones (blocks only while full)."""
        self._queue.put(_End())

    def __iter__(self) -> Iterator[T]:
        while not isinstance(item := self._queue.get(), _End):
            yield item
