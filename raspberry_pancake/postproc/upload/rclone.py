"""Uploads through the rclone program: any of its remotes, with .part then a server-side move."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path, PurePosixPath

from raspberry_pancake.postproc.upload.destination import (
    CONNECT_TIMEOUT,
    DEFAULT_CAMERA,
    PART,
    TRANSFER_TIMEOUT,
    Progress,
    UploadAborted,
    UploadError,
    remote_parts,
)
from raspberry_pancake.postproc.upload.targets import RcloneTarget, mask_userinfo
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

# Each command is one attempt: rclone's own retries would hide an outage from the worker,
# which retries with its backoff and records every attempt in the catalog.
ONE_ATTEMPT = ("--low-level-retries", "1", "--retries", "1")
# Never a prompt (an encrypted config without RCLONE_CONFIG_PASS fails at once), no stats.
QUIET = ("--ask-password=false", "--stats", "0")
# A command that is not a transfer (a listing, a move) is cut off after this, whatever rclone's
# own timeouts say: a safety net for a remote that keeps a connection alive and answers nothing.
COMMAND_BOUND = 120.0
# A transfer is cut off by rclone's --timeout when it stalls; this bound only catches an rclone
# that hangs otherwise: COMMAND_BOUND plus the file at this slow a rate.
SLOWEST_RATE = 8 * 1024
# At most this many of a command's stderr lines are logged (rate-limited besides).
STDERR_LINES = 5
# rclone's own prefix ("2024/06/23 17:00:00 ERROR : "), dropped from what we log.
_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")
# Not a problem: a connection string needs no config file.
_NO_CONFIG = re.compile(r'NOTICE: Config file ".*" not found - using defaults')


class RcloneDestination:
    """One rclone command per step (copyto the .part, lsjson its size, moveto the name), each a
    child process in its own process group, which abort() kills."""

    def __init__(self, target: RcloneTarget, connect_timeout: float = CONNECT_TIMEOUT,
                 transfer_timeout: float = TRANSFER_TIMEOUT) -> None:
        self.target = target
        self.label = target.label
        self._flags = ("--contimeout", f"{connect_timeout:g}s",
                       "--timeout", f"{transfer_timeout:g}s", *ONE_ATTEMPT, *QUIET)
        self._secrets = target.secrets()
        self._limiter = RateLimiter()
        self._lock = threading.Lock()  # guards _proc, which abort() kills from another thread
        self._proc: subprocess.Popen[bytes] | None = None

    def _path(self, *parts: str) -> str:
        """REMOTE:PATH/… as rclone takes it."""
        return self.target.remote + str(PurePosixPath(self.target.remote_dir, *parts))

    def _argv(self, command: str, *args: str) -> list[str]:
        argv = [self.target.rclone, command]
        if self.target.config is not None:
            argv += ["--config", str(self.target.config)]
        return [*argv, *self._flags, *args]

    def _clean(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return mask_userinfo(text)

    def _stderr(self, err: bytes) -> list[str]:
        """rclone's stderr as lines worth reading, secrets masked."""
        lines = []
        for raw in err.decode("utf-8", "replace").splitlines():
            line = _STAMP.sub("", raw).strip()
            if line and not _NO_CONFIG.search(line):
                lines.append(self._clean(line)[:300])
        return lines

    def _run(self, stop: threading.Event, bound: float, command: str, *args: str) -> str:
        """Run one rclone command; its stdout. Raises UploadAborted when stopped (the child
        killed), UploadError when it fails (the reason: its last stderr line)."""
        argv = self._argv(command, *args)
        with self._lock:
            # Under the lock: after stop is set and abort() has run, no child starts.
            if stop.is_set():
                raise UploadAborted("stopping")
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                raise UploadError(f"cannot run {self.target.rclone}: "
                                  f"{exc.strerror or exc}") from None
            self._proc = proc
        timed_out = False
        try:
            try:
                out, err = proc.communicate(timeout=bound)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill(proc)
                out, err = proc.communicate()
        finally:
            with self._lock:
                self._proc = None
        lines = self._stderr(err)
        if stop.is_set():
            raise UploadAborted("stopping")
        reason = lines[-1] if lines else ""
        for line in lines[-STDERR_LINES - 1:-1] if proc.returncode else lines[:STDERR_LINES]:
            # Before a failure: what led to it (its last line is the reason, logged by the
            # worker); after a success: rclone's notices (a modtime it could not set, …).
            self._limiter.log(log, logging.WARNING, f"stderr {command}", "%s: rclone %s: %s",
                              self.label, command, line)
        if timed_out:
            raise UploadError(f"rclone {command} still running after {bound:g} s: cut off")
        if proc.returncode != 0:
            raise UploadError(f"rclone {command} exit {proc.returncode}"
                              + (f": {reason}" if reason else ""))
        return out.decode("utf-8", "replace")

    def _size(self, stop: threading.Event, remote: str, name: str) -> int:
        out = self._run(stop, COMMAND_BOUND, "lsjson", "--files-only", "--no-mimetype",
                        "--no-modtime", remote)
        try:
            entries = json.loads(out)
            sizes = [int(e["Size"]) for e in entries if isinstance(e, dict)]
        except (ValueError, TypeError, KeyError):
            raise UploadError(f"rclone lsjson: not a listing: {out[:100]!r}") from None
        if len(sizes) != 1:
            # Two files of one name (a remote such as Google Drive allows it): `rclone dedupe`.
            raise UploadError(f"rclone lsjson: {len(sizes)} files named {name}")
        return sizes[0]

    def upload(self, local: Path, stop: threading.Event, progress: Progress | None = None,
               camera: str = DEFAULT_CAMERA) -> None:
        try:
            total = local.stat().st_size
        except OSError as exc:
            raise UploadError(f"{local}: {exc.strerror or exc}") from None
        parts = remote_parts(local, camera)
        part = self._path(*parts, local.name + PART)
        final = self._path(*parts, local.name)
        # A .part left by an attempt cut off is compared (size, time or hash) and replaced in
        # place, or kept when whole: not --no-check-dest, which on a remote that allows two
        # files of one name (Google Drive) would add a second. copyto makes the folders.
        self._run(stop, COMMAND_BOUND + total / SLOWEST_RATE, "copyto", str(local), part)
        size = self._size(stop, part, local.name + PART)
        if size != total:
            raise UploadError(f"{local.name}{PART} has {size} bytes, not {total}")
        # A server-side move where the backend has one (copy and delete on the others).
        self._run(stop, COMMAND_BOUND, "moveto", part, final)
        if progress is not None:
            progress(total, total)

    def close(self) -> None:
        """Nothing stays open between uploads: each command is its own process."""

    def abort(self) -> None:
        """Kill the command in progress (its whole process group), so a stop is prompt."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        # Only while it has not been reaped: its pid (= its group's id) is still its own.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
