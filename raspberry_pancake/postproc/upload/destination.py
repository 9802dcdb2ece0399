"""What every upload destination shares: its protocol, its errors, its remote YYYY/MM/DD path."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from raspberry_pancake.shared.events import CAMERA_NAME

CONNECT_TIMEOUT = 10.0
# A transfer that makes no progress for this long is cut off and retried.
TRANSFER_TIMEOUT = 30.0
CHUNK = 256 * 1024
PART = ".part"
# A message without "camera" is this camera's, whose paths stay as they always were
# (DESIGN.md "Cameras and names"; the same name as ledger.DEFAULT_CAMERA, which imports PyAV).
DEFAULT_CAMERA = "cam"

# Recording names: continuous YYYYMMDD-hhmm or -hhmmss, detection YYYYMMDD-hhmmss, maybe -N.
_NAME = re.compile(r"^(\d{4})(\d{2})(\d{2})-\d{4}(?:\d{2})?(?:-\d+)?$")

Progress = Callable[[int, int], None]
_S = TypeVar("_S", bound=socket.socket)


class UploadError(Exception):
    """One attempt failed; the message says why in a few words. Retried with backoff."""


class UploadAborted(UploadError):
    """The transfer was cut off on purpose (shutdown); only the .part is left remotely."""


def date_dirs(path: Path) -> tuple[str, str, str]:
    """YYYY, MM, DD from the recording's name, or from its mtime when the name does not parse."""
    match = _NAME.match(path.stem)
    if match:
        y, m, d = match.groups()
        try:
            dt.date(int(y), int(m), int(d))
        except ValueError:
            pass
        else:
            return y, m, d
    try:
        day = dt.date.fromtimestamp(path.stat().st_mtime)
    except OSError:
        day = dt.date.today()
    return f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"


def remote_parts(local: Path, camera: str) -> tuple[str, ...]:
    """The folders under the destination's directory: YYYY/MM/DD, under CAMERA/ for every
    camera but the default one. Raises UploadError for a name that cannot be a folder."""
    day = date_dirs(local)
    if camera == DEFAULT_CAMERA:
        return day
    if not CAMERA_NAME.fullmatch(camera):
        raise UploadError(f"{camera!r} is not a camera name: not uploaded")
    return (camera, *day)


class Dialer:
    """Opens the TCP connection itself, so that abort() from another thread can shut down a
    socket still waiting for a banner or welcome (a library's connect() cannot be cut off)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _sockets
        self._sockets: set[socket.socket] = set()

    def dial(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def wrap(self, sock: socket.socket, make: Callable[[socket.socket], _S]) -> _S:
        """make(sock) in sock's place: a TLS socket before its handshake (made without I/O,
        so under the lock). Wrapping detaches the plain socket, whose shutdown then reaches
        nothing; under the lock, shutdown_all() cuts off one or the other, never neither."""
        with self._lock:
            new = make(sock)
            self._sockets.discard(sock)
            self._sockets.add(new)
        return new

    def forget(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sockets.discard(sock)  # type: ignore[arg-type]

    def shutdown_all(self) -> None:
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            shutdown(sock)


def shutdown(sock: socket.socket) -> None:
    """Shut a socket down from another thread, so that a read or write blocked on it ends now.
    The plain socket's method even for a TLS one: SSLSocket.shutdown() also drops the TLS
    state under the feet of the thread still using it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Destination(Protocol):
    label: str

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None,
               camera: str = DEFAULT_CAMERA) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def read_chunks(local: Path, stop: threading.Event, progress: Progress | None,
                total: int, send: Callable[[bytes], Any]) -> int:
    sent = 0
    with local.open("rb") as f:
        while True:
            if stop.is_set():
                raise UploadAborted("stopping")
            chunk = f.read(CHUNK)
            if not chunk:
                return sent
            send(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)
