"""Upload targets: the SFTP, FTP, FTPS and rclone destinations the command line names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.shared.credentials import Secret


@dataclass(frozen=True, slots=True)
class ScpTarget:
    user: str
    host: str
    port: int
    remote_dir: str

    @property
    def label(self) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}/{self.remote_dir}"


@dataclass(frozen=True, slots=True)
class FtpTarget:
    host: str
    port: int
    user: str
    password: Secret
    remote_dir: str
    # Explicit TLS (AUTH TLS, then PROT P): --upload-ftps. The server's certificate is checked
    # against ca_file, or the system's CA roots when it is None, and against host.
    tls: bool = False
    ca_file: Path | None = None

    @property
    def label(self) -> str:
        # The scheme tells FTPS from FTP in the logs; a destination moved from one to the
        # other is a new destination for the journal, which costs one repeated upload each.
        scheme = "ftps" if self.tls else "ftp"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{self.remote_dir}"


@dataclass(frozen=True, slots=True)
class RcloneTarget:
    """`--upload-rclone REMOTE:PATH`: any remote spec rclone takes (a configured remote, or a
    connection string such as `:sftp,host=…:path`); its secrets stay in rclone's config."""

    remote: str  # everything up to and including the colon that ends the remote
    remote_dir: str  # the path on the remote, may be empty (the remote's root)
    rclone: str  # the program's path
    config: Path | None = None  # --rclone-config

    @property
    def label(self) -> str:
        return f"rclone {self.remote}{self.remote_dir}"
