"""The watchdog of several cameras: any camera's frames keep it pinging; each camera's stages count alone."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from raspberry_pancake.recorder.frames import Frame, LatestFrame
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.recorder.watchdog import Watchdog
from raspberry_pancake.shared.sdnotify import Notifier


class Dies(Stage):
    """A stage whose thread raises once, the first time it runs."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.runs = 0
        self._end = threading.Event()

    def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("died on purpose")
        self._end.wait()

    def request_stop(self) -> None:
        self._end.set()


@pytest.fixture
def systemd() -> Iterator[tuple[socket.socket, Notifier]]:
    """A real notify socket, as systemd's, and a Notifier pointed at it (watchdog 1 s)."""
    name = f"\0pancake-wd-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(name)
    sock.settimeout(0.2)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name[1:], "WATCHDOG_USEC": "1000000"})
    yield sock, notifier
    notifier.close()
    sock.close()


def received(sock: socket.socket, seconds: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def publish(hub: LatestFrame, stop: threading.Event) -> None:
    seq = 0
    while not stop.wait(0.05):
        seq += 1
        hub.publish(Frame(seq, None, time.monotonic(), time.time()))  # type: ignore[arg-type]


def test_one_camera_delivering_keeps_the_pings_and_stages_of_one_name_count_apart(
        systemd: tuple[socket.socket, Notifier]) -> None:
    sock, notifier = systemd
    live, dead = LatestFrame(), LatestFrame()  # one camera delivers, the other never does
    stop, feeding = threading.Event(), threading.Event()
    feeder = threading.Thread(target=publish, args=(live, feeding), name="test-feeder")
    feeder.start()
    # Two cameras' encoders: the same stage name, each dying once. Each is restarted once;
    # neither death is the other's second.
    a, b = Dies("encoder"), Dies("encoder")
    a.start()
    b.start()
    dog = Watchdog([dead, live], notifier, stop, lambda: [a, b])
    dog.start()
    try:
        said = received(sock, 3.0)
    finally:
        stop.set()
        dog.join(2)
        feeding.set()
        feeder.join(2)
        a.stop()
        b.stop()
    assert dog.fatal is None, dog.fatal
    assert a.runs == 2 and b.runs == 2
    assert any("READY=1" in m for m in said), said
    assert sum("WATCHDOG=1" in m for m in said) >= 2, said
