"""Uploads through the rclone program: any of its remotes, with .part then a server-side move."""

from __future__ import annotations

import threading
from pathlib import Path

from raspberry_pancake.postproc.upload.destination import Progress, UploadError
from raspberry_pancake.postproc.upload.targets import RcloneTarget


class RcloneDestination:
    """Placeholder while the rclone helper writes it: every attempt fails (and is retried)."""

    def __init__(self, target: RcloneTarget) -> None:
        self.target = target
        self.label = target.label

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None) -> None:
        raise UploadError("rclone uploads are not written yet")

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
