"""Upload targets: the SFTP and FTP destinations the command line names."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def label(self) -> str:
        return f"ftp://{self.user}@{self.host}:{self.port}/{self.remote_dir}"
