"""Stage threads that can be started again, and the supervisor that restarts them or gives up."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# A stage that dies this many times within DEATH_WINDOW seconds is not going to get better by
# itself: postproc exits non-zero and systemd (Restart=on-failure) starts it afresh.
MAX_DEATHS = 3
DEATH_WINDOW = 300.0
# How often the main thread looks at the stages.
CHECK_INTERVAL = 0.5


class StageThread:
    """A stage's thread: runs the stage's loop; `restart` runs the same loop in a fresh thread.

    The stage object, its queues and its counters are kept, so whatever waits in its queue is
    still done after a restart. An exception that ends the loop is kept for the supervisor,
    which names it in the log; nothing else catches it.
    """

    def __init__(self, name: str, loop: Callable[[], None]) -> None:
        self.name = name
        self._loop = loop
        self._thread: threading.Thread | None = None
        self.failure: Exception | None = None  # what ended the last run; None if it returned
        self.runs = 0

    def _target(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - the supervisor's boundary: logged there
            self.failure = exc

    def start(self) -> None:
        self.failure = None
        self.runs += 1
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()

    restart = start

    @property
    def started(self) -> bool:
        return self._thread is not None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """True when the thread has ended (or was never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_alive()


def describe(exc: BaseException | None) -> str:
    """`Type: message (at file.py:line in function)`, one line, for the log."""
    if exc is None:
        return "its loop returned"
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300] if str(exc) else \
        type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


class Supervisor:
    """Watches the stage threads from the main thread: a stage that ended while postproc is
    not stopping is logged and restarted; one that ends MAX_DEATHS times within DEATH_WINDOW
    makes `check` return False, and postproc then stops and exits non-zero."""

    def __init__(self, stop: threading.Event, max_deaths: int = MAX_DEATHS,
                 window: float = DEATH_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stop = stop
        self._max_deaths = max_deaths
        self._window = window
        self._clock = clock
        self._stages: list[StageThread] = []
        self._deaths: dict[str, deque[float]] = {}
        self.failed: str | None = None  # the stage that kept failing

    def watch(self, stage: StageThread) -> None:
        self._stages.append(stage)
        self._deaths[stage.name] = deque()

    def check(self) -> bool:
        """Restart what died; False when a stage keeps dying (the caller stops and exits)."""
        for stage in self._stages:
            if not stage.started or stage.is_alive() or self._stop.is_set():
                continue
            now = self._clock()
            deaths = self._deaths[stage.name]
            deaths.append(now)
            while deaths and now - deaths[0] > self._window:
                deaths.popleft()
            what = describe(stage.failure)
            if len(deaths) >= self._max_deaths:
                log.error("stage %s stopped by %s: %d times within %g s, so postproc exits "
                          "(systemd starts it again)", stage.name, what, len(deaths),
                          self._window)
                self.failed = stage.name
                return False
            log.error("stage %s stopped by %s; restarting it (%d of %d allowed within %g s)",
                      stage.name, what, len(deaths), self._max_deaths - 1, self._window)
            stage.restart()
        return True
