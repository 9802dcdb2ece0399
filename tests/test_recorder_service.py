"""pancake under systemd's eyes: READY=1 and WATCHDOG=1 over a real NOTIFY_SOCKET, and the
free-space guard's event."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from conftest import Listener, Pancake, run_pancake

BASE = ["--source", "testsrc", "--fps", "12", "--resolution", "160", "120"]


def test_ready_then_watchdog_pings(tmp_path: Path, pancakes: list[Pancake]) -> None:
    name = f"notify-{uuid.uuid4().hex[:10]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.2)
    try:
        p = run_pancake(pancakes, [*BASE], tmp_path,
                        env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        got: list[tuple[float, str]] = []
        # Startup (imports, the camera) may take long on a loaded machine: the pings are
        # counted from READY on, for 6 s, in which 12 are due.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                continue
            if "READY=1" in got[-1][1].splitlines():
                deadline = time.monotonic() + 6
        rc, _ = p.stop()
        try:
            while True:
                got.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            pass
    finally:
        sock.close()
    assert rc == 0, p.log()
    messages = [m for _, m in got]
    assert "READY=1" in messages[0].splitlines(), messages
    pings = [t for t, m in got if "WATCHDOG=1" in m.splitlines()]
    # Every half period while frames flow; a loaded machine may lose some, not most.
    assert len(pings) >= 4, messages
    assert "STOPPING=1" in messages[-1].splitlines()


def test_low_disk_is_announced_once(tmp_path: Path, listener: Listener,
                                    pancakes: list[Pancake]) -> None:
    # 99.99% free is never had here: an endless low-space episode, reported once, and the file
    # being written is never deleted.
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(tmp_path), "--min-free", "99.99%",
                               "--emit", listener.name], tmp_path)
    p.wait_for("deleting the oldest recordings", timeout=30)
    p.wait_for("first frame captured", timeout=30)
    time.sleep(6)  # the guard checks again (every 5 s): still one message for the episode
    rc, _ = p.stop()
    assert rc == 0, p.log()
    disk = [e for e in listener.events() if "disk" in e]
    assert len(disk) == 1, listener.events()
    assert disk[0]["disk"] == "low" and disk[0]["dir"] == str(tmp_path)
    assert isinstance(disk[0]["free"], int)
    h264 = [e["h264"] for e in listener.events() if "h264" in e]
    assert h264 and all(Path(x).exists() for x in h264)


def test_bad_min_free_exits_2(tmp_path: Path, pancakes: list[Pancake]) -> None:
    p = run_pancake(pancakes, [*BASE, "--min-free", "lots"], tmp_path)
    assert p.proc.wait(20) == 2
    assert p.log().startswith("pancake.py: error: --min-free")
