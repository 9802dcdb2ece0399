"""Tells systemd how the service is doing (sd_notify): ready, watchdog pings, status, stopping."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# systemd reads the notification socket promptly; if it does not, a ping is better lost than
# a capture thread held up.
SEND_TIMEOUT = 1.0


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET, a path or an abstract `@name`.

    Without NOTIFY_SOCKET (not started by systemd, or not Type=notify) every call is a no-op
    returning False. Never raises: a message that cannot be sent is logged once per outage.
    Safe to call from any thread (one sendto per message).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._env = env
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._failing = False
        target = env.get("NOTIFY_SOCKET", "")
        if not target:
            return
        if target.startswith("@"):
            self._address = "\0" + target[1:]
        elif target.startswith("/"):
            self._address = target
        else:
            # systemd ≥ 254 may also hand out vsock: addresses, which a Pi's service never gets.
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket address: not notifying systemd",
                        target)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(SEND_TIMEOUT)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; True if systemd's socket took it."""
        if self._sock is None or self._address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            self._sock.sendto(data, self._address)
        except OSError as exc:  # socket gone (systemd re-executing), full, or refused
            if not self._failing:
                log.warning("cannot notify systemd at %r: %s", self._address.replace("\0", "@"),
                            exc.strerror or exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd again")
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup finished (for pancake: the camera delivers frames)."""
        return self.notify("READY=1", *([_status(status)] if status is not None else []))

    def watchdog(self) -> bool:
        """All is well; send at least every watchdog_interval() / 2 seconds."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """Ask systemd to act as if the watchdog had expired (restart us) now."""
        return self.notify("WATCHDOG=trigger")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status`."""
        return self.notify(_status(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) times out: a slow camera."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1_000_000), 1)}")

    def watchdog_interval(self) -> float | None:
        """The watchdog period in seconds if systemd expects pings from this process, else None."""
        usec = self._env.get("WATCHDOG_USEC", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        pid = self._env.get("WATCHDOG_PID", "")
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None  # meant for another process (we are a child of the watched one)
        return int(usec) / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())
