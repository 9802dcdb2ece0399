"""FTP destination (ftplib): the original's plain --upload-ftp, or explicit FTPS (--upload-ftps)."""

from __future__ import annotations

import ftplib
import socket
import ssl
import stat
import threading
from pathlib import Path, PurePosixPath
from typing import TextIO

from raspberry_pancake.postproc.upload.destination import (
    CONNECT_TIMEOUT,
    DEFAULT_CAMERA,
    PART,
    TRANSFER_TIMEOUT,
    Dialer,
    Progress,
    UploadAborted,
    UploadError,
    read_chunks,
    remote_parts,
    shutdown,
)
from raspberry_pancake.postproc.upload.targets import FtpTarget

# What one attempt may raise at the network boundary. ftplib.all_errors covers replies, socket
# errors, timeouts and TLS (ssl.SSLError is an OSError); ValueError too, because ftplib raises
# it for a reply it cannot parse (SIZE's int()), for a name it cannot send (a newline, bytes
# that are not UTF-8): each is one failed attempt, never the end of the worker's thread.
_ERRORS: tuple[type[BaseException], ...] = (*ftplib.all_errors, ValueError)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The client context for FTPS: certificate and host name always checked, against the CA
    certificates in ca_file only (a private CA, or a self-signed server certificate) when it
    is given, else against the system's CA roots. Raises OSError (ssl.SSLError included) for a
    file that cannot be read or holds no certificate."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _why(exc: BaseException, target: FtpTarget) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = str(target.ca_file) if target.ca_file is not None else "the system's CA roots"
        return (f"TLS: the server's certificate is refused: {exc.verify_message} "
                f"(trusting {trusted})")
    return f"{type(exc).__name__}: {exc}"


class _FTP(ftplib.FTP):
    """ftplib.FTP on sockets opened through a Dialer, so that abort() reaches each of them.
    Plain FTP because the user asked for it (the original's --upload-ftp); SFTP and FTPS are
    there for everyone else."""

    dialer: Dialer
    data_timeout: float

    def connect_socket(self, sock: socket.socket, host: str) -> str:
        self.sock = sock
        self.af = sock.family
        # The name the user gave, not the address: FTPS checks the certificate against it.
        self.host = host
        self.file = self._reader(sock)
        self.welcome = self.getresp()
        return self.welcome

    def _reader(self, sock: socket.socket) -> TextIO:
        # Replies are only logged, never parsed for names: a server's Latin-1 banner or
        # message must not end the connection (it did: UnicodeDecodeError).
        return sock.makefile("r", encoding=self.encoding, errors="replace")

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        """Passive mode only (works through NAT and firewalls; the original used it too)."""
        if rest is not None:
            raise ValueError("REST is not used here")
        host, port = self.makepasv()
        conn = self.dialer.dial(host, port, self.data_timeout)
        try:
            resp = self.sendcmd(cmd)
            # Some servers send a 2xx before the 1xx (ftplib's own comment and workaround).
            if resp[0] == "2":
                resp = self.getresp()
            if resp[0] != "1":
                raise ftplib.error_reply(resp)  # noqa: S321 (an exception class, not a connection)
            secured = self._secure_data(conn)
        except BaseException:
            self.dialer.forget(conn)
            conn.close()
            raise
        return secured, None

    def _secure_data(self, conn: socket.socket) -> socket.socket:
        return conn


class _FTPS(_FTP, ftplib.FTP_TLS):
    """Explicit FTPS: AUTH TLS on the control connection before the password is sent, PROT P
    so that every data connection is TLS too, each handshake cut off by abort()."""

    # PROT P was accepted (ftplib keeps the same in a private attribute).
    private_data = False

    def auth(self) -> str:
        resp = self.voidcmd("AUTH TLS")
        assert self.sock is not None  # connect_socket() came first
        self.sock = self._wrap(self.sock, None)
        self.file = self._reader(self.sock)
        return resp

    def prot_p(self) -> str:
        resp = super().prot_p()
        self.private_data = True
        return resp

    def _wrap(self, raw: socket.socket, session: ssl.SSLSession | None) -> ssl.SSLSocket:
        # In the dialer's set before the handshake, which is where a silent server holds us.
        tls = self.dialer.wrap(raw, lambda s: self.context.wrap_socket(
            s, server_hostname=self.host, do_handshake_on_connect=False, session=session))
        try:
            tls.do_handshake()
        except BaseException:
            self.dialer.forget(tls)
            tls.close()
            raise
        return tls

    def _secure_data(self, conn: socket.socket) -> socket.socket:
        if not self.private_data:
            return conn
        # The control connection's TLS session, resumed: vsftpd and ProFTPD by default refuse
        # a data connection that does not resume it (it proves the same client opened it).
        session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
        return self._wrap(conn, session)


class FtpDestination:
    """FTP or FTPS through ftplib, with timeouts on connect and on every read and write."""

    def __init__(self, dest: FtpTarget, connect_timeout: float = CONNECT_TIMEOUT,
                 transfer_timeout: float = TRANSFER_TIMEOUT) -> None:
        self.dest = dest
        self._connect_timeout = connect_timeout
        self._transfer_timeout = transfer_timeout
        self.label = dest.label
        # Made at the first attempt and kept: the CA file is read once (the config checked it).
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()  # guards _ftp, whose control socket abort() shuts down
        self._ftp: _FTP | None = None
        self._home = "/"
        # Every socket of a connection in progress and every data connection: abort() cuts
        # them off.
        self._dialer = Dialer()

    def _connect(self) -> _FTP:
        if self._ftp is not None:
            return self._ftp
        d = self.dest
        ftp: _FTP
        if d.tls:
            if self._context is None:
                try:
                    self._context = tls_context(d.ca_file)
                except OSError as exc:  # gone or changed since the config read it
                    raise UploadError(f"cannot load CA certificates from {d.ca_file}: "
                                      f"{exc.strerror or exc}") from None
            ftp = _FTPS(context=self._context, timeout=self._transfer_timeout)
        else:
            ftp = _FTP(timeout=self._transfer_timeout)
        ftp.dialer = self._dialer
        ftp.data_timeout = self._transfer_timeout
        sock: socket.socket | None = None
        step = "connect"
        try:
            sock = self._dialer.dial(d.host, d.port, self._connect_timeout)
            ftp.connect_socket(sock, d.host)
            # The welcome is read under the connect timeout; later replies under the other.
            sock.settimeout(self._transfer_timeout)
            if isinstance(ftp, _FTPS):
                step = "AUTH TLS"
                ftp.auth()
            step = f"login as {d.user}"
            ftp.login(d.user, d.password.reveal())
            if isinstance(ftp, _FTPS):
                step = "PROT P (encrypted data connections)"
                ftp.prot_p()
            step = "TYPE I"
            ftp.voidcmd("TYPE I")
            self._home = ftp.pwd()
        except ftplib.error_perm as exc:
            ftp.close()
            raise UploadError(f"{step} refused: {exc}") from None
        except _ERRORS as exc:
            ftp.close()
            if sock is not None:
                sock.close()
            raise UploadError(f"cannot connect: {_why(exc, d)}") from None
        finally:
            self._dialer.forget(sock)
            self._dialer.forget(ftp.sock)
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

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None,
               camera: str = DEFAULT_CAMERA) -> None:
        try:
            st = local.stat()
            if not stat.S_ISREG(st.st_mode):
                # A FIFO named like an mp4 would block the open below for good.
                raise UploadError(f"{local.name}: not a regular file")
            total = st.st_size
            ftp = self._connect()
            self._chdirs(ftp, PurePosixPath(self.dest.remote_dir, *remote_parts(local, camera)))
            part = local.name + PART
            conn = ftp.transfercmd(f"STOR {part}")
            eof_at_close: ssl.SSLEOFError | None = None
            try:
                sent = read_chunks(local, stop, progress, total, conn.sendall)
                if isinstance(conn, ssl.SSLSocket):
                    # TLS's close_notify: without it the server cannot tell the end of the
                    # file from a cut connection (ftplib's storbinary does the same).
                    try:
                        conn.unwrap()
                    except ssl.SSLEOFError as exc:
                        # Ours went; the server closed without answering it (some do). Only
                        # its 226 below, for the whole file, says the file arrived.
                        if sent != total:
                            raise
                        eof_at_close = exc
            finally:
                self._dialer.forget(conn)
                conn.close()
            reply = ftp.voidresp()
            if eof_at_close is not None and not reply.startswith("226"):
                raise UploadError(f"{_why(eof_at_close, self.dest)}; then {reply[:100]}")
            size = ftp.size(part)
            if size != total:
                raise UploadError(f"{part} has {size} bytes, not {total}")
            ftp.rename(part, local.name)
        except UploadError:
            self.close()
            raise
        except _ERRORS as exc:
            self.close()
            if stop.is_set():
                raise UploadAborted("stopping") from None
            raise UploadError(_why(exc, self.dest)) from None

    def close(self) -> None:
        with self._lock:
            ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def abort(self) -> None:
        self._dialer.shutdown_all()
        with self._lock:
            ftp = self._ftp
        if ftp is not None and ftp.sock is not None:
            shutdown(ftp.sock)
