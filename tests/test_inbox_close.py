"""shared.inbox: closing never waits, even on a full inbox that nobody reads."""

from __future__ import annotations

import logging
import threading

from raspberry_pancake.shared.inbox import Inbox

log = logging.getLogger(__name__)

# Far above what close() takes on a loaded machine; a hang is what is tested.
PATIENCE = 10.0


def close_in_thread(inbox: Inbox[int]) -> threading.Thread:
    closer = threading.Thread(target=inbox.close, name="test-closer", daemon=True)
    closer.start()
    closer.join(PATIENCE)
    return closer


def test_close_on_a_full_inbox_nobody_reads_returns() -> None:
    inbox: Inbox[int] = Inbox(3, "test", log)
    assert all(inbox.offer(n) for n in range(3))
    assert not inbox.offer(99)  # full
    closer = close_in_thread(inbox)
    assert not closer.is_alive(), "Inbox.close() hung on a full queue"
    # A reader that comes later still gets what was queued, then the end.
    assert list(inbox) == [0, 1, 2]
    assert list(inbox) == []  # and a second reader (a respawned stage) ends too
    assert not inbox.offer(4)  # nothing is taken after the end


def test_close_ends_a_waiting_reader() -> None:
    inbox: Inbox[int] = Inbox(3, "test", log)
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(inbox), name="test-reader",
                              daemon=True)
    reader.start()
    inbox.offer(1)
    inbox.offer(2)
    closer = close_in_thread(inbox)
    assert not closer.is_alive()
    reader.join(PATIENCE)
    assert not reader.is_alive(), "the reader did not end at close()"
    assert got == [1, 2]


def test_close_twice_and_close_while_draining() -> None:
    inbox: Inbox[int] = Inbox(2, "test", log)
    inbox.offer(1)
    inbox.offer(2)
    for _ in range(2):
        assert not close_in_thread(inbox).is_alive()
    assert list(inbox) == [1, 2]
