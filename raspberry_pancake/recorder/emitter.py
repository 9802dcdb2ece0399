"""Sends events as JSON datagrams to the post-processor's abstract socket, never blocking."""

from __future__ import annotations

import logging
import socket
import threading

from raspberry_pancake.shared.events import Event, EventError, abstract_address, encode

log = logging.getLogger(__name__)


class Emitter:
    """Fire-and-forget sender. A receiver that is down or full loses the message: logged once
    per outage, and postproc catches up from the directory when it comes back."""

    def __init__(self, name: str | None) -> None:
        self._address = abstract_address(name) if name else None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if name else None
        self._lock = threading.Lock()  # guards _down only; sendto itself is thread-safe
        self._down = False
        self.sent = 0
        self.dropped = 0

    def emit(self, event: Event) -> bool:
        """Send one event; True if the kernel took it. Safe from any thread."""
        if self._sock is None or self._address is None:
            return False
        try:
            data = encode(event)
        except EventError as exc:
            log.error("event not sent: %s", exc)
            return False
        try:
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except (ConnectionRefusedError, FileNotFoundError, BlockingIOError, OSError) as exc:
            with self._lock:
                first = not self._down
                self._down = True
                self.dropped += 1
            if first:
                log.warning("post-processor at @%s not taking events (%s): dropping until it is",
                            self._address[1:], exc.strerror or exc)
            return False
        with self._lock:
            if self._down:
                log.info("post-processor at @%s takes events again", self._address[1:])
            self._down = False
            self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
