"""Sends events as JSON datagrams to the post-processor's abstract socket, never blocking."""

from __future__ import annotations

import logging
import socket
import threading

from raspberry_pancake.shared.events import Event, EventError, abstract_address, encode
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter(60.0)
# Fields an event may lose and still mean what it says.
OPTIONAL = ("jpeg", "pts")


def _not_utf8(event: Event) -> list[tuple[str, str]]:
    """The fields that UTF-8 cannot carry, each with its value shown escaped.

    Linux names are bytes; Python carries those that are not UTF-8 as lone surrogates, which
    neither the datagram (UTF-8) nor postproc (it refuses them) can take."""
    odd = []
    for key, value in event.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "surrogateescape")
                odd.append((key, raw.decode("utf-8", "backslashreplace")))
    return odd


class Emitter:
    """Fire-and-forget sender. A receiver that is down or full loses the message: logged once
    per outage, and postproc catches up from the directory when it comes back."""

    def __init__(self, name: str | None, camera: str | None = None) -> None:
        self._address = abstract_address(name) if name else None
        # Every message says which camera it is about (DESIGN.md "Cameras and names"), except
        # one camera from flags under its default name: its messages stay the original's.
        self._camera = camera
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if name else None
        self._lock = threading.Lock()  # guards _down and the counters; sendto is thread-safe
        self._down = False
        self.sent = 0
        self.dropped = 0

    def emit(self, event: Event) -> bool:
        """Send one event; True if the kernel took it. Safe from any thread; never raises."""
        if self._sock is None or self._address is None:
            return False
        if self._camera is not None and "camera" not in event:
            event = Event(**event, camera=self._camera)  # type: ignore[typeddict-item]
        odd = _not_utf8(event)
        if odd:
            shown = ", ".join(f"{key} {value}" for key, value in odd)
            if not {key for key, _ in odd} <= set(OPTIONAL):
                self._count_drop()
                _limit.log(log, logging.ERROR, "utf8", "event not sent: %s not valid UTF-8, "
                           "which the post-processor cannot take; give the directory a UTF-8 "
                           "name", shown)
                return False
            # An edge still goes out (the alert matters more than its photo), without the path.
            _limit.log(log, logging.ERROR, "utf8-part", "event sent without %s: not valid UTF-8",
                       shown)
            event = Event(**{k: v for k, v in event.items()  # type: ignore[typeddict-item]
                             if k not in {key for key, _ in odd}})
        try:
            data = encode(event)
        except (EventError, ValueError, TypeError) as exc:  # too long, or not JSON at all (a bug)
            self._count_drop()
            _limit.log(log, logging.ERROR, "encode", "event not sent: %s", exc)
            return False
        try:
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:  # refused, no listener, its queue full, too big for the socket
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

    @staticmethod
    def camera_of(multi: bool, name: str) -> str | None:
        """The `camera` field a camera's messages carry: under --config, or when named."""
        return name if multi or name != "cam" else None

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
