"""SFTP destination (paramiko, imported only when an upload to SFTP is configured)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

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
)
from raspberry_pancake.postproc.upload.targets import ScpTarget

if TYPE_CHECKING:
    import paramiko


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
        self._dialer = Dialer()

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

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None,
               camera: str = DEFAULT_CAMERA) -> None:
        import paramiko

        try:
            total = local.stat().st_size
            sftp = self._connect()
            remote_dir = PurePosixPath(self.dest.remote_dir, *remote_parts(local, camera))
            self._makedirs(sftp, remote_dir)
            final = str(remote_dir / local.name)
            part = final + PART
            with sftp.open(part, "wb") as f:
                f.set_pipelined(True)
                read_chunks(local, stop, progress, total, f.write)
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
