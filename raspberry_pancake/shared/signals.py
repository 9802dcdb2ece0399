"""SIGTERM and SIGINT turned into a stop event by a thread: the handlers themselves take no lock."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(threading.Thread):
    """Sets `stop` when SIGTERM or SIGINT arrives, from its own thread.

    `threading.Event.set()` takes a lock: a second signal whose handler runs while the first
    handler holds it waits for itself for ever (systemd, `timeout` and a double Ctrl-C all send
    bursts). So the Python handler only assigns a plain attribute; the interpreter's C handler
    also writes the signal number to a socket (`signal.set_wakeup_fd`), and this thread, blocked
    on that socket, sets the event. Must be made and started on the main thread.
    """

    def __init__(self, stop: threading.Event) -> None:
        super().__init__(name="signals", daemon=True)
        self._stop_event = stop
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._closing = False
        self.received: int | None = None  # the first signal's number; written by the handler

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def start(self) -> None:
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        super().start()

    def run(self) -> None:
        wanted = {int(s) for s in STOP_SIGNALS}
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if self._closing or not data:
                return
            got = [b for b in data if b in wanted]
            if got and not self._stop_event.is_set():
                log.info("%s received: stopping", signal.Signals(got[0]).name)
                self._stop_event.set()

    def close(self) -> None:
        """Stop the thread; call from the main thread, never from a handler. Stop signals after
        this are ignored: the process is on its way out, and the rest of a burst landing during
        interpreter shutdown (which restores the default handlers) must not turn a clean exit
        into death by SIGTERM."""
        self._closing = True
        try:
            self._writer.send(b"\0")
        except OSError:
            pass
        self.join(timeout=1.0)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        self._writer.close()
        self._reader.close()
