"""Tells systemd the recorder is up once frames flow, and alive only while they keep flowing."""

from __future__ import annotations

import logging
import threading

from raspberry_pancake.recorder.frames import LatestFrame
from raspberry_pancake.shared.sdnotify import Notifier

log = logging.getLogger(__name__)

# Without a systemd watchdog, still notice a stalled capture this often (logged once).
DEFAULT_PERIOD = 10.0


class Watchdog(threading.Thread):
    """READY=1 at the first frame; then WATCHDOG=1 each period in which new frames arrived.

    A capture that stalls stops the pings, so systemd (WatchdogSec=) restarts the service.
    """

    def __init__(self, hub: LatestFrame, notifier: Notifier, stop: threading.Event) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._hub = hub
        self._notifier = notifier
        self._stop_event = stop
        interval = notifier.watchdog_interval()
        # Ping twice per watchdog period, as sd_watchdog_enabled(3) advises.
        self._period = interval / 2 if interval else DEFAULT_PERIOD

    def run(self) -> None:
        first = None
        while first is None and not self._stop_event.is_set():
            first = self._hub.wait_newer(-1, timeout=0.5)
        if first is None:
            return
        self._notifier.ready("recording")
        log.info("first frame captured: ready")
        seq, stalled = first.seq, False
        while not self._stop_event.wait(self._period):
            latest = self._hub.latest()
            if latest is not None and latest.seq > seq:
                seq = latest.seq
                self._notifier.watchdog()
                if stalled:
                    log.info("capture delivers frames again")
                stalled = False
            elif not stalled:
                stalled = True
                log.warning("no frame captured for %.0f s: not telling systemd we are alive",
                            self._period)
                self._notifier.status("capture stalled")
