"""Uploads converted mp4s into remote YYYY/MM/DD trees (SFTP, FTP): one worker per destination."""

from __future__ import annotations

import contextlib
import datetime as dt
import ftplib
import hashlib
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from raspberry_pancake.postproc.config import UPLOAD_ATTEMPTS, UPLOAD_BACKOFF_FIRST, FtpTarget, ScpTarget
from raspberry_pancake.shared.logs import RateLimiter

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# A transfer that makes no progress for this long is cut off and retried.
TRANSFER_TIMEOUT = 30.0
CHUNK = 256 * 1024
PART = ".part"
# Retries: 2, 4, 8 … s, at most 5 min apart; a file is given up after this many attempts
# (about an hour), and stays on disk for the next catch-up.
BACKOFF_FIRST = UPLOAD_BACKOFF_FIRST
BACKOFF_MAX = 300.0
MAX_ATTEMPTS = UPLOAD_ATTEMPTS
# An idle connection is closed rather than left to the server's idle timeout.
IDLE_CLOSE = 60.0
POLL = 0.25

# Recording names: continuous YYYYMMDD-hhmm or -hhmmss, detection YYYYMMDD-hhmmss, maybe -N.
_NAME = re.compile(r"^(\d{4})(\d{2})(\d{2})-\d{4}(?:\d{2})?(?:-\d+)?$")

Progress = Callable[[int, int], None]


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


class _Dialer:
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

    def forget(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sockets.discard(sock)  # type: ignore[arg-type]

    def shutdown_all(self) -> None:
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _FTP(ftplib.FTP):
    """ftplib.FTP on a socket opened by the caller (see _Dialer). Plain FTP because the user
    asked for it (the original's --upload-ftp); SFTP is there for everyone else."""

    def connect_socket(self, sock: socket.socket) -> str:
        self.sock = sock
        self.af = sock.family
        self.file = sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


class Destination(Protocol):
    label: str

    def upload(self, local: Path, stop: threading.Event,
               progress: Progress | None = None) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def _read_chunks(local: Path, stop: threading.Event, progress: Progress | None,
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


class SftpDestination:
    """SFTP through paramiko: key or agent auth, host key checked against known_hosts only."""

    def __init__(self, dest: ScpTarget, known_hosts: Path, key: Path | None,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 transfer_timeout: float = TRANSFER_TIMEOUT) -> None:
        self.dest = dest
        self._connect_timeout = connect_timeout
        self._transfer_timeout = transfer_timeout
        self.label = dest.label
        self._known_hosts = known_hosts
        self._key = key
        self._lock = threading.Lock()  # guards _client, which abort() closes from another thread
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._dialer = _Dialer()

    def _connect(self) -> paramiko.SFTPClient:
        # Imported here: paramiko and cryptography cost about 30 MB of RSS, which a
        # postproc without --upload-scp does not need to carry.
        import paramiko

        if self._sftp is not None:
            return self._sftp
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self._known_hosts))
        except OSError as exc:
            raise UploadError(f"cannot read known_hosts {self._known_hosts}: "
                              f"{exc.strerror or exc}") from None
        # Never trust on first use: an unknown host is refused, never added.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        d = self.dest
        sock: socket.socket | None = None
        try:
            sock = self._dialer.dial(d.host, d.port, self._connect_timeout)
            client.connect(
                d.host, port=d.port, username=d.user, sock=sock,
                key_filename=str(self._key) if self._key else None,
                look_for_keys=self._key is None, allow_agent=True,
                timeout=self._connect_timeout, banner_timeout=self._connect_timeout,
                auth_timeout=self._connect_timeout, channel_timeout=self._connect_timeout,
            )
            sftp = client.open_sftp()
            channel = sftp.get_channel()
            assert channel is not None
            channel.settimeout(self._transfer_timeout)
        except paramiko.BadHostKeyException:
            client.close()
            raise UploadError(f"host key of {d.host}:{d.port} does not match known_hosts: "
                              "refused") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise UploadError(f"authentication as {d.user} failed: {exc}") from None
        except paramiko.SSHException as exc:
            client.close()
            if "known_hosts" in str(exc):
                raise UploadError(f"host key of {d.host}:{d.port} is not in "
                                  f"{self._known_hosts}: refused") from None
            raise UploadError(f"SSH: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise UploadError(f"cannot connect: {exc}") from None
        finally:
            self._dialer.forget(sock)
        with self._lock:
            self._client, self._sftp = client, sftp
        return sftp

    def _makedirs(self, sftp: paramiko.SFTPClient, path: PurePosixPath) -> None:
        current = PurePosixPath(path.anchor) if path.is_absolute() else PurePosixPath()
        for part in path.parts[1 if path.is_absolute() else 0:]:
            current = current / part
            try:
                sftp.stat(str(current))
            except FileNotFoundError:
                sftp.mkdir(str(current))

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None) -> None:
        import paramiko

        try:
            total = local.stat().st_size
            sftp = self._connect()
            remote_dir = PurePosixPath(self.dest.remote_dir, *date_dirs(local))
            self._makedirs(sftp, remote_dir)
            final = str(remote_dir / local.name)
            part = final + PART
            with sftp.open(part, "wb") as f:
                f.set_pipelined(True)
                _read_chunks(local, stop, progress, total, f.write)
            size = sftp.stat(part).st_size
            if size != total:
                raise UploadError(f"{part} has {size} bytes, not {total}")
            try:
                sftp.posix_rename(part, final)
            except OSError:
                # A server without the posix-rename extension: plain SFTP rename will not
                # replace a file, so remove the old upload first.
                with contextlib.suppress(FileNotFoundError):
                    sftp.remove(final)
                sftp.rename(part, final)
        except UploadError:
            self.close()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            if stop.is_set():
                raise UploadAborted("stopping") from None
            raise UploadError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            client, self._client, self._sftp = self._client, None, None
        if client is not None:
            client.close()

    def abort(self) -> None:
        self._dialer.shutdown_all()
        self.close()


class FtpDestination:
    """FTP through ftplib, with timeouts on connect and on every read and write."""

    def __init__(self, dest: FtpTarget, connect_timeout: float = CONNECT_TIMEOUT,
                 transfer_timeout: float = TRANSFER_TIMEOUT) -> None:
        self.dest = dest
        self._connect_timeout = connect_timeout
        self._transfer_timeout = transfer_timeout
        self.label = dest.label
        self._lock = threading.Lock()  # guards _ftp and _data, which abort() shuts down
        self._ftp: ftplib.FTP | None = None
        self._data: socket.socket | None = None
        self._home = "/"
        self._dialer = _Dialer()

    def _connect(self) -> ftplib.FTP:
        if self._ftp is not None:
            return self._ftp
        d = self.dest
        ftp = _FTP(timeout=self._transfer_timeout)
        sock: socket.socket | None = None
        try:
            sock = self._dialer.dial(d.host, d.port, self._connect_timeout)
            ftp.connect_socket(sock)
            # The welcome is read under the connect timeout; later replies under the other.
            sock.settimeout(self._transfer_timeout)
            ftp.login(d.user, d.password.reveal())
            ftp.voidcmd("TYPE I")
            self._home = ftp.pwd()
        except ftplib.error_perm as exc:
            ftp.close()
            raise UploadError(f"login as {d.user} refused: {exc}") from None
        except ftplib.all_errors as exc:
            ftp.close()
            if sock is not None:
                sock.close()
            raise UploadError(f"cannot connect: {type(exc).__name__}: {exc}") from None
        finally:
            self._dialer.forget(sock)
        with self._lock:
            self._ftp = ftp
        return ftp

    def _chdirs(self, ftp: ftplib.FTP, path: PurePosixPath) -> None:
        ftp.cwd("/" if path.is_absolute() else self._home)
        for part in path.parts[1 if path.is_absolute() else 0:]:
            try:
                ftp.cwd(part)
            except ftplib.error_perm:
                ftp.mkd(part)
                ftp.cwd(part)

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None) -> None:
        try:
            total = local.stat().st_size
            ftp = self._connect()
            self._chdirs(ftp, PurePosixPath(self.dest.remote_dir, *date_dirs(local)))
            part = local.name + PART
            conn = ftp.transfercmd(f"STOR {part}")
            with self._lock:
                self._data = conn
            try:
                _read_chunks(local, stop, progress, total, conn.sendall)
            finally:
                with self._lock:
                    self._data = None
                conn.close()
            ftp.voidresp()
            size = ftp.size(part)
            if size != total:
                raise UploadError(f"{part} has {size} bytes, not {total}")
            ftp.rename(part, local.name)
        except UploadError:
            self.close()
            raise
        except ftplib.all_errors as exc:
            self.close()
            if stop.is_set():
                raise UploadAborted("stopping") from None
            raise UploadError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def abort(self) -> None:
        self._dialer.shutdown_all()
        with self._lock:
            data, ftp = self._data, self._ftp
        for sock in (data, ftp.sock if ftp is not None else None):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


JOURNAL_DIR = ".uploaded"
JOURNAL_SUFFIX = ".names"
# The journal is rewritten with only the names still on disk when its stale lines outnumber
# the live ones by this much (a Pi may run for months between restarts).
JOURNAL_SLACK = 256


def journal_key(label: str) -> str:
    """A short, stable file name for one destination (its spec, which holds no secret)."""
    return hashlib.sha256(label.encode()).hexdigest()[:12]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UploadJournal:
    """Which mp4s of one directory one destination has acknowledged.

    `mp4_dir/.uploaded/<key>.names`, key = a short hash of the destination's spec (user, host,
    port, remote dir: a changed spec is a new destination that gets everything). One name per
    line, appended and fsync'd only after the upload's size check and rename succeeded; the
    first line is a comment naming the destination for whoever looks. A subdirectory, because
    the retention scripts and the disk guard count and delete only regular files of the
    directory itself: the journal is never taken for a recording, never deleted with one.

    A name whose file is gone (a retention script deleted it) is ignored; the file is
    rewritten with only the names still present on start, and whenever the stale lines
    outnumber the live ones by JOURNAL_SLACK, so it does not grow forever. A line torn by a
    power cut names no file (every candidate ends in .mp4) and goes at the next rewrite.
    Losing the journal costs duplicate uploads, never a missing one.
    """

    def __init__(self, mp4_dir: Path, label: str) -> None:
        self.mp4_dir = mp4_dir
        self.label = label
        self.path = mp4_dir / JOURNAL_DIR / (journal_key(label) + JOURNAL_SUFFIX)
        self._lock = threading.Lock()  # guards _names, _lines and the file (worker vs trigger)
        self._names: set[str] = set()
        self._lines = 0
        self._limiter = RateLimiter()

    def load(self) -> None:
        """Read the journal and rewrite it with only the names whose file is still there."""
        names: list[str] = []
        try:
            with self.path.open("r", encoding="utf-8", errors="surrogateescape") as f:
                names = [line.rstrip("\n") for line in f if not line.startswith("#")]
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("%s: cannot read upload journal %s (%s): its files are offered again",
                      self.label, self.path, exc.strerror or exc)
        with self._lock:
            self._lines = len(names)
            self._names = set(names)
            self._compact(self.present())

    def present(self) -> set[str]:
        """Names of the mp4s in the directory (regular files, not hidden)."""
        found: set[str] = set()
        try:
            with os.scandir(self.mp4_dir) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") or not name.endswith(".mp4") or "\n" in name:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        found.add(name)
        except OSError as exc:
            self._limiter.log(log, logging.ERROR, "list", "%s: cannot list %s: %s",
                              self.label, self.mp4_dir, exc.strerror or exc)
        return found

    def _compact(self, present: set[str]) -> None:
        """Caller holds the lock. Rewrite under a temporary name, then rename."""
        live = self._names & present
        if live == self._names and self._lines == len(live) and self.path.exists():
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(exist_ok=True)
            with tmp.open("w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"# uploaded to {self.label}\n")
                f.writelines(name + "\n" for name in sorted(live))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            log.error("%s: cannot write upload journal %s: %s", self.label, self.path,
                      exc.strerror or exc)
            tmp.unlink(missing_ok=True)
            return
        self._names, self._lines = live, len(live)

    def unacknowledged(self) -> list[Path]:
        """The directory's mp4s this destination has not acknowledged, oldest name first
        (recording names sort by time); compacts the journal when it has grown stale."""
        present = self.present()
        with self._lock:
            if self._lines > 2 * len(self._names & present) + JOURNAL_SLACK:
                self._compact(present)
            todo = present - self._names
        return [self.mp4_dir / name for name in sorted(todo)]

    def acknowledged(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def record(self, mp4: Path) -> None:
        """Append one uploaded name, fsync'd. A failure is logged: the file is uploaded again
        at the next catch-up (a duplicate, never a loss)."""
        if mp4.parent != self.mp4_dir or "\n" in mp4.name:
            return
        with self._lock:
            try:
                created = not self.path.exists()
                if created:
                    self.path.parent.mkdir(exist_ok=True)
                with self.path.open("a", encoding="utf-8", errors="surrogateescape") as f:
                    if created:
                        f.write(f"# uploaded to {self.label}\n")
                    f.write(mp4.name + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                if created:
                    _fsync_dir(self.path.parent)
            except OSError as exc:
                self._limiter.log(log, logging.ERROR, "write",
                                  "%s: cannot append to upload journal %s: %s", self.label,
                                  self.path, exc.strerror or exc)
                return
            self._names.add(mp4.name)
            self._lines += 1


class UploadWorker:
    """One destination's thread and bounded queue: a dead destination holds back only itself.

    With a journal, every mp4 of the directory reaches the destination in the end: catch_up()
    offers, oldest first, each one the destination has not acknowledged; a file dropped from
    the full queue, given up after the last attempt, or converted just before a stop is
    offered again at the next catch-up. A catch-up that found the queue full runs again as
    soon as the queue is empty, so a backlog drains at the destination's pace while the
    queue stays bounded. Files given up in this run go after the others, so that one file a
    destination keeps refusing cannot hold back the rest.
    """

    def __init__(self, dest: Destination, queue_size: int, stop: threading.Event,
                 backoff_first: float = BACKOFF_FIRST, max_attempts: int = MAX_ATTEMPTS,
                 journal: UploadJournal | None = None) -> None:
        self.dest = dest
        self.journal = journal
        self._queue: queue.Queue[Path] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        self._backoff_first = backoff_first
        self._max_attempts = max_attempts
        self._limiter = RateLimiter()
        # Names queued or being uploaded: a catch-up never queues a file twice.
        self._lock = threading.Lock()  # guards _inflight, _gave_up, _more
        self._inflight: set[str] = set()
        self._gave_up: dict[str, int] = {}  # name -> times given up since start
        self._more = False  # a catch-up left files waiting: run another when the queue empties
        name = "upload-" + re.sub(r"[^A-Za-z0-9@.:_-]", "_", dest.label.split("://", 1)[-1])
        self._thread = threading.Thread(target=self._run, name=name[:60], daemon=True)
        self.uploaded = 0
        self.dropped = 0
        self.given_up = 0

    def start(self) -> None:
        self._thread.start()

    def offer(self, mp4: Path) -> bool:
        """Queue one file unless it is queued already; False (logged) when the queue is full."""
        with self._lock:
            if mp4.name in self._inflight:
                return True
            self._inflight.add(mp4.name)
        try:
            self._queue.put_nowait(mp4)
        except queue.Full:
            with self._lock:
                self._inflight.discard(mp4.name)
            self.dropped += 1
            log.warning("upload queue of %s full: dropped %s (it stays on disk for the next "
                        "catch-up)", self.dest.label, mp4)
            return False
        return True

    def catch_up(self, fresh: Sequence[Path] = ()) -> int:
        """Offer `fresh` (just converted) and every mp4 not yet acknowledged, oldest first,
        until the queue is full; the rest wait for the next catch-up. Returns how many of the
        older files were offered."""
        older = [] if self.journal is None else self.journal.unacknowledged()
        fresh_names = {f.name for f in fresh}
        with self._lock:
            older = [f for f in older if f.name not in fresh_names
                     and f.name not in self._inflight]
            gave_up = dict(self._gave_up)
        todo = sorted([*older, *fresh], key=lambda f: (gave_up.get(f.name, 0), f.name, str(f)))
        offered = waiting = 0
        full = False
        for mp4 in todo:
            is_fresh = mp4.name in fresh_names
            if full and not is_fresh:
                # One line for the backlog, not one per file; a fresh file still gets its own.
                waiting += 1
                continue
            if not self.offer(mp4):
                full = True
            elif not is_fresh:
                offered += 1
        if waiting:
            log.warning("%s: queue full: %d more earlier file(s) wait for the next catch-up "
                        "(when the queue empties)", self.dest.label, waiting)
        if full and self.journal is not None:
            with self._lock:
                self._more = True
        if offered:
            log.info("%s: catch-up: offered %d earlier file(s) not uploaded yet",
                     self.dest.label, offered)
        return offered

    def abort(self) -> None:
        """Cut off a transfer in progress (shutdown: it leaves only the remote .part)."""
        self.dest.abort()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    mp4 = self._queue.get(timeout=POLL)
                except queue.Empty:
                    with self._lock:
                        more, self._more = self._more, False
                    if more:
                        self.catch_up()
                        continue
                    if time.monotonic() - idle_since > IDLE_CLOSE:
                        self.dest.close()
                        idle_since = float("inf")
                    continue
                try:
                    self._upload(mp4)
                finally:
                    with self._lock:
                        self._inflight.discard(mp4.name)
                idle_since = time.monotonic()
        finally:
            self.dest.close()
            left = self._queue.qsize()
            if left:
                log.info("%s: %d upload(s) not done at stop (the next catch-up offers them)",
                         self.dest.label, left)

    def _upload(self, mp4: Path) -> None:
        delay = self._backoff_first
        for attempt in range(1, self._max_attempts + 1):
            if not mp4.is_file():
                log.warning("%s: %s no longer exists: not uploaded", self.dest.label, mp4)
                return
            started = time.monotonic()
            try:
                self.dest.upload(mp4, self._stop)
            except UploadAborted:
                log.info("%s: upload of %s cut off by shutdown", self.dest.label, mp4)
                return
            except UploadError as exc:
                if attempt == self._max_attempts:
                    self._limiter.log(log, logging.WARNING, "fail",
                                      "%s: upload of %s failed (attempt %d): %s",
                                      self.dest.label, mp4.name, attempt, exc)
                    break
                self._limiter.log(log, logging.WARNING, "fail",
                                  "%s: upload of %s failed (attempt %d): %s; retry in %g s",
                                  self.dest.label, mp4.name, attempt, exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if self.journal is not None:
                self.journal.record(mp4)
            self.uploaded += 1
            log.info("%s: uploaded %s in %.1f s", self.dest.label, mp4.name,
                     time.monotonic() - started)
            return
        self.given_up += 1
        with self._lock:
            self._gave_up[mp4.name] = self._gave_up.get(mp4.name, 0) + 1
        log.error("%s: gave up on %s after %d attempts (it stays on disk for the next "
                  "catch-up)", self.dest.label, mp4, self._max_attempts)


class UploadTrigger:
    """Collects converted files and hands them to every destination when a trigger fires:
    after every N conversions, and/or at given minutes of the hour. A trigger minute that
    passes while the machine sleeps or the clock jumps is skipped, not fired late."""

    def __init__(self, workers: Sequence[UploadWorker], after: int | None,
                 minutes: tuple[int, ...], stop: threading.Event,
                 now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        self._now = now  # wall clock: the user's minutes are local time
        self._workers = list(workers)
        self._after = after
        self._minutes = frozenset(minutes)
        self._stop = stop
        self._lock = threading.Lock()  # guards _pending and _count (converter and clock threads)
        self._pending: list[Path] = []
        self._count = 0
        self._thread = threading.Thread(target=self._clock, name="upload-clock", daemon=True)

    def start(self) -> None:
        if self._minutes and self._workers:
            self._thread.start()

    def join(self, timeout: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def converted(self, mp4: Path) -> None:
        if not self._workers:
            return
        with self._lock:
            self._pending.append(mp4)
            self._count += 1
            due = self._after is not None and self._count >= self._after
        if due:
            self.fire(f"{self._after} conversion(s)")

    def fire(self, reason: str) -> None:
        """Offer the files converted since the last trigger, and (for a worker with a journal)
        every earlier one its destination has not acknowledged yet.

        The catch-up runs at every trigger, not only on start: a file dropped from a full queue
        or given up while a destination was down would otherwise wait for a restart, which on
        a Pi left alone for months may never come. It costs one directory listing per trigger.
        """
        with self._lock:
            files, self._pending, self._count = self._pending, [], 0
        if files:
            log.info("upload triggered by %s: %d file(s)", reason, len(files))
        for worker in self._workers:
            worker.catch_up(files)

    def _clock(self) -> None:
        fired: tuple[int, int, int, int] | None = None
        while not self._stop.is_set():
            now = self._now()
            # Wake just after the next minute starts, then look at the clock again: after a
            # sleep or a clock jump the minutes in between are simply not seen.
            wait = 60.0 - now.second - now.microsecond / 1e6 + 0.05
            if self._stop.wait(min(wait, 60.0)):
                return
            now = self._now()
            key = (now.toordinal(), now.hour, now.minute, now.year)
            if now.minute in self._minutes and key != fired:
                fired = key
                self.fire(f"minute {now.minute:02d}")
