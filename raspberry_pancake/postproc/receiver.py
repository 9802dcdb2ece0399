"""Receives events on the abstract datagram socket: sender uid, schema and paths checked."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.shared.events import MAX_DATAGRAM, Event, EventError, abstract_address, decode
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

# struct ucred: pid, uid, gid.
_UCRED = struct.Struct("3i")
POLL = 0.25


class ReceiverError(Exception):
    """The socket cannot be opened (name taken): one line, exit non-zero."""


class Rejected(Exception):
    """A datagram that is dropped; the message says why, for a rate-limited log line."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A checked event. Paths are resolved, regular files inside the allowed directories."""

    event: Event
    h264: Path | None
    jpeg: Path | None
    pts: Path | None
    sender_uid: int
    jpeg_boxes: Path | None = None  # the snapshot with the detector's boxes drawn


def open_socket(name: str) -> socket.socket:
    """Bind "\\0name" with SO_PASSCRED, so every datagram carries its sender's credentials."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(abstract_address(name))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ReceiverError(f"socket name @{name} is taken: another postproc is running "
                                "with this socket_name") from None
        raise ReceiverError(f"cannot bind socket @{name}: {exc.strerror or exc}") from None
    sock.settimeout(POLL)
    return sock


class PathPolicy:
    """Which files an event may name: regular files, resolved, inside the given directories.

    With no directories (the original's command line has no --h264-dir), any regular file of
    the right kind is accepted: the sender's uid is still checked.
    """

    def __init__(self, dirs: Iterable[Path]) -> None:
        self.dirs = tuple(Path(os.path.realpath(d)) for d in dirs)

    def check(self, field: str, text: str, suffixes: tuple[str, ...]) -> Path:
        if not text.lower().endswith(suffixes):
            raise Rejected(f"{field}: not a {'/'.join(suffixes)} file")
        try:
            # realpath resolves "..", and symlinks to where they point: a link out of the
            # directory is judged by its target.
            real = Path(os.path.realpath(text))
            if self.dirs and not any(real.is_relative_to(d) and real != d for d in self.dirs):
                raise Rejected(f"{field}: outside the --h264-dir directories")
            st = os.stat(real)
        except OSError as exc:
            raise Rejected(f"{field}: {exc.strerror or exc}") from None
        except ValueError:
            # A NUL or a lone surrogate that validate() let through would end up here.
            raise Rejected(f"{field}: not a file name") from None
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(f"{field}: not a regular file")
        return real


def accept(data: bytes, uid: int, allowed: frozenset[int], paths: PathPolicy) -> Accepted:
    """Check one datagram; raise Rejected (or EventError) with the reason."""
    if uid not in allowed:
        raise Rejected(f"sender uid {uid} not allowed")
    event = decode(data)
    h264 = jpeg = pts = boxes = None
    if "h264" in event:
        h264 = paths.check("h264", event["h264"], (".h264",))
    if "jpeg" in event:
        try:
            jpeg = paths.check("jpeg", event["jpeg"], (".jpg", ".jpeg"))
        except Rejected as exc:
            # The edge still matters without its picture.
            log.warning("event's snapshot ignored: %s", exc)
    if "jpeg_boxes" in event:
        try:
            boxes = paths.check("jpeg_boxes", event["jpeg_boxes"], (".jpg", ".jpeg"))
        except Rejected as exc:
            log.warning("event's snapshot with boxes ignored: %s", exc)
    if "pts" in event:
        try:
            pts = paths.check("pts", event["pts"], (".pts", ".txt"))
        except Rejected as exc:
            log.warning("event's timestamps ignored: %s", exc)
    return Accepted(event, h264, jpeg, pts, uid, boxes)


def sender_uid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                and len(payload) >= _UCRED.size:
            _pid, uid, _gid = _UCRED.unpack_from(payload)
            return int(uid)
    return None


class Receiver:
    """The receiving thread: one datagram at a time, no thread per datagram. A bad datagram is
    a rate-limited drop; anything else that ends the loop (a bug) is the supervisor's, which
    runs the loop again on the same socket."""

    def __init__(self, sock: socket.socket, allowed_uids: frozenset[int], paths: PathPolicy,
                 handle: Callable[[Accepted], None], stop: threading.Event) -> None:
        self._sock = sock
        self._allowed = allowed_uids
        self._paths = paths
        self._handle = handle
        self._stop = stop
        self._limiter = RateLimiter()
        self._thread = StageThread("receiver", self._run)
        self.accepted = 0
        self.dropped = 0

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the thread; the socket is closed once it has ended (a restarted loop
        needs it, so the loop itself never closes it)."""
        done = self._thread.join(timeout)
        if done:
            self._sock.close()
        return done

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        # One key per reason kind (the text before the first colon), so that a flood of one
        # kind does not hide another.
        self._limiter.log(log, logging.WARNING, reason.split(":", 1)[0],
                          "event dropped: %s", reason)

    def _run(self) -> None:
        space = socket.CMSG_SPACE(_UCRED.size)
        while not self._stop.is_set():
            try:
                data, ancdata, flags, _addr = self._sock.recvmsg(MAX_DATAGRAM, space)
            except TimeoutError:
                continue
            except OSError as exc:
                self._limiter.log(log, logging.ERROR, "recv", "receive failed: %s",
                                  exc.strerror or exc)
                self._stop.wait(POLL)
                continue
            if flags & socket.MSG_TRUNC:
                self._drop(f"longer than {MAX_DATAGRAM} bytes")
                continue
            uid = sender_uid(ancdata)
            if uid is None:
                self._drop("no sender credentials")
                continue
            try:
                accepted = accept(data, uid, self._allowed, self._paths)
            except (Rejected, EventError) as exc:
                self._drop(str(exc))
                continue
            self.accepted += 1
            self._handle(accepted)
