"""Tells systemd the recorder is alive only while frames flow and every recording stage runs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from raspberry_pancake.recorder.frames import LatestFrame
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.sdnotify import Notifier

log = logging.getLogger(__name__)

# Without a systemd watchdog, still notice a stalled capture this often (logged once).
DEFAULT_PERIOD = 10.0
# How often the stages are looked at: a dead one costs at most this much recording.
CHECK_INTERVAL = 0.5
# How many times one stage is restarted; its next death ends the process (systemd restarts it).
RESTARTS = 1
# The exit code then: EX_SOFTWARE, "internal software error" (sysexits.h).
EXIT_STAGE_DIED = 70


class Watchdog(threading.Thread):
    """READY=1 at the first frame; then WATCHDOG=1 each period in which new frames arrived and
    every stage was alive. With several cameras (`hub` a sequence), a frame from any of them
    counts: one camera unplugged and being retried must not get the others restarted.
    A stage that died is restarted once (logged); a second death sets
    `fatal` and the stop event, and main exits with EXIT_STAGE_DIED.

    A capture that stalls, or a stage that stays dead, stops the pings, so systemd
    (WatchdogSec=) restarts the service.
    """

    def __init__(self, hub: LatestFrame | Sequence[LatestFrame], notifier: Notifier,
                 stop: threading.Event, stages: Callable[[], Sequence[Stage]] = list) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._hubs: tuple[LatestFrame, ...] = (
            (hub,) if isinstance(hub, LatestFrame) else tuple(hub))
        self._notifier = notifier
        self._stop_event = stop
        self._stages = stages
        interval = notifier.watchdog_interval()
        # Ping twice per watchdog period, as sd_watchdog_enabled(3) advises.
        self._period = interval / 2 if interval else DEFAULT_PERIOD
        self._check = min(CHECK_INTERVAL, self._period)
        self.fatal: str | None = None  # why the process must end, once a stage died for good
        # By stage object, not name: every camera's pipeline has an "encoder" and a "catalog".
        # The watchdog thread's alone.
        self._restarted: dict[int, int] = {}

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # without its watchdog the process must not go on
            log.exception("watchdog failed: stopping")
            self.fatal = f"watchdog failed: {type(exc).__name__}: {exc}"
            self._stop_event.set()

    def _run(self) -> None:
        first: tuple[int, ...] | None = None
        while first is None and not self._stop_event.is_set():
            if len(self._hubs) == 1:
                found = self._hubs[0].wait_newer(-1, timeout=self._check)
                first = None if found is None else (found.seq,)
            else:  # no single condition to wait on: look every check interval
                now_seqs = self._seqs()
                first = now_seqs if any(s >= 0 for s in now_seqs) else None
                if first is None:
                    self._stop_event.wait(self._check)
            if not self._supervise():
                return
        if first is None:
            return
        self._notifier.ready("recording")
        log.info("first frame captured: ready")
        seqs, stalled = first, False
        next_ping = time.monotonic() + self._period
        while not self._stop_event.wait(self._check):
            if not self._supervise():
                return
            now = time.monotonic()
            if now < next_ping:
                continue
            next_ping = now + self._period
            now_seqs = self._seqs()
            if any(a > b for a, b in zip(now_seqs, seqs, strict=True)):
                seqs = now_seqs
                self._notifier.watchdog()
                if stalled:
                    log.info("capture delivers frames again")
                stalled = False
            elif not stalled:
                stalled = True
                log.warning("no frame captured for %.0f s: not telling systemd we are alive",
                            self._period)
                self._notifier.status("capture stalled")

    def _seqs(self) -> tuple[int, ...]:
        """Each camera's newest frame number (-1 before its first)."""
        latest = [hub.latest() for hub in self._hubs]
        return tuple(-1 if f is None else f.seq for f in latest)

    def _supervise(self) -> bool:
        """Restart what died; False once a stage died more often than it may (stop is set)."""
        for stage in self._stages():
            if self._stop_event.is_set() or not stage.dead():
                continue
            why = _why(stage)
            if self._restarted.get(id(stage), 0) >= RESTARTS:
                self.fatal = f"{stage.name} stage died again ({why})"
                log.error("%s stage died again (%s): exiting with code %d so that it is "
                          "restarted as a whole", stage.name, why, EXIT_STAGE_DIED)
                self._notifier.status(self.fatal)
                self._stop_event.set()
                return False
            self._restarted[id(stage)] = self._restarted.get(id(stage), 0) + 1
            if stage.respawn():
                log.warning("%s stage restarted after %s", stage.name, why)
                self._notifier.status(f"{stage.name} stage restarted after {why}")
        return True


def _why(stage: Stage) -> str:
    exc = stage.failure
    if exc is None:
        return "it ended on its own"
    return f"{type(exc).__name__}: {exc}"
