"""FTP destination (ftplib), the plain FTP the original's --upload-ftp spoke."""

from __future__ import annotations

import contextlib
import ftplib
import socket
import threading
from pathlib import Path, PurePosixPath

from raspberry_pancake.postproc.upload.destination import (
    CONNECT_TIMEOUT,
    PART,
    TRANSFER_TIMEOUT,
    Dialer,
    Progress,
    UploadAborted,
    UploadError,
    date_dirs,
    read_chunks,
)
from raspberry_pancake.postproc.upload.targets import FtpTarget


class _FTP(ftplib.FTP):
    """ftplib.FTP on a socket opened by the caller (see Dialer). Plain FTP because the user
    asked for it (the original's --upload-ftp); SFTP is there for everyone else."""

    def connect_socket(self, sock: socket.socket) -> str:
        self.sock = sock
        self.af = sock.family
        self.file = sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


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
        self._dialer = Dialer()

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
                read_chunks(local, stop, progress, total, conn.sendall)
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
