"""shared.sdnotify against real datagram sockets, as systemd's notification socket is one."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raspberry_pancake.shared.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    # systemd reads credentials with each message (that is how NotifyAccess=main works).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def recv(sock: socket.socket) -> tuple[str, int]:
    """A message and the pid the kernel says sent it."""
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], sys.byteorder)
    return data.decode(), pid


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = receiver(path)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"pancake-notify-test-{uuid.uuid4().hex}"
    sock = receiver("\0" + name)
    yield sock, "@" + name
    sock.close()


def test_messages_reach_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready()
    assert recv(sock) == ("READY=1", os.getpid())
    assert n.ready("camera delivers frames")
    assert recv(sock)[0] == "READY=1\nSTATUS=camera delivers frames"
    assert n.watchdog()
    assert recv(sock)[0] == "WATCHDOG=1"
    assert n.status("recording\nto h264/ ")  # one line, whatever it is given
    assert recv(sock)[0] == "STATUS=recording to h264/"
    assert n.stopping()
    assert recv(sock)[0] == "STOPPING=1"
    assert n.watchdog_trigger()
    assert recv(sock)[0] == "WATCHDOG=trigger"
    assert n.extend_timeout(2.5)
    assert recv(sock)[0] == "EXTEND_TIMEOUT_USEC=2500000"
    n.close()
    assert not n.watchdog()


def test_messages_reach_an_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, address = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": address})
    assert n.status("ünïcode ok")
    assert recv(sock)[0] == "STATUS=ünïcode ok"
    n.close()


def test_a_child_process_notifies_from_the_environment(
        abstract_socket: tuple[socket.socket, str]) -> None:
    sock, address = abstract_socket
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000",
           "PYTHONPATH": str(ROOT)}
    code = ("import os; from raspberry_pancake.shared.sdnotify import Notifier; n = Notifier(); "
            "os.environ['WATCHDOG_PID'] = str(os.getpid()); "
            "print(n.watchdog_interval()); n.ready(); n.watchdog()")
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "30.0\n"
    first, pid = recv(sock)
    assert first == "READY=1" and pid not in (-1, os.getpid())
    assert recv(sock) == ("WATCHDOG=1", pid)


def test_no_socket_means_no_op(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
    assert n.watchdog_interval() is None
    n.close()
    with caplog.at_level(logging.WARNING):
        odd = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not odd.enabled and not odd.ready()
    assert "not a Unix socket address" in caplog.text


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 30.0
    assert Notifier({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}).watchdog_interval() == 0.5
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    for bad in ("", "0", "-5", "thirty", "1.5"):
        assert Notifier({"WATCHDOG_USEC": bad}).watchdog_interval() is None, bad
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}).watchdog_interval() is None


def test_a_vanished_socket_is_logged_once_and_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "notify")
    sock = receiver(path)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.watchdog()
    sock.close()
    os.unlink(path)
    with caplog.at_level(logging.INFO, logger="raspberry_pancake.shared.sdnotify"):
        assert not n.watchdog()
        assert not n.watchdog()
        assert not n.ready()
        assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1
        sock = receiver(path)  # systemd is back (daemon-reexec)
        assert n.watchdog()
        assert recv(sock)[0] == "WATCHDOG=1"
        assert "notifying systemd again" in caplog.text
    sock.close()
    n.close()
