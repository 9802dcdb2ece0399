"""Upload targets: the SFTP, FTP, FTPS and rclone destinations the command line names."""

from __future__ import annotations

import re
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
        """For logs and the catalog's uploads: the spec with its secrets masked (a connection
        string may carry a password or a key, though the README says to keep them in rclone's
        config), so that it can be logged and stored."""
        text = self.remote
        for value in self.secrets():
            text = text.replace(value, "***")
        return f"rclone {mask_userinfo(text)}{self.remote_dir}"

    def secrets(self) -> list[str]:
        """The values of a connection string's parameters whose key names a secret
        (`:s3,secret_access_key=…:`, `:sftp,pass=…:`), longest first."""
        found = [m.group(2).strip("'\"") for m in _PARAM.finditer(self.remote)
                 if _SECRET_KEY.search(m.group(1))]
        return sorted({v for v in found if v}, key=len, reverse=True)


# One `key=value` of a connection string (`:backend,key=value,key='v,a:l'…:`).
_PARAM = re.compile(r"[,:]([A-Za-z0-9_-]+)=('[^']*'|\"[^\"]*\"|[^,:'\"]*)")
_SECRET_KEY = re.compile(r"pass|secret|key|token|auth|credential|bearer|session", re.IGNORECASE)
_USERINFO = re.compile(r"(://[^/\s:@'\"]*:)[^/\s@'\"]*@")


def mask_userinfo(text: str) -> str:
    """A URL's password (`http://user:pw@host`) masked."""
    return _USERINFO.sub(r"\1***@", text)
