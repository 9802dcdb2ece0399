"""Continuous recording: packets into back-to-back raw H.264 files split on the clock."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from raspberry_pancake.recorder.frames import Packet
from raspberry_pancake.recorder.recording.splits import create_unique, file_stem
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.catalog import Kind
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.inbox import Inbox
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

# The first line of a timestamps sidecar, in the form mkvmerge and picamera2 use.
PTS_HEADER = "# timecode format v2\n"
# Both files of a recording are handed to the OS (flush, not fsync) at every keyframe and at
# least this often: a crash or kill -9 then keeps every frame's time up to the last keyframe.
# A power cut loses what the kernel had not yet written back, video and sidecar alike; fsync
# happens at close only, because a sync per second would wear an SD card and stall the writer.
FLUSH_EVERY = 1.0
# Packets waiting for the disk: minutes of video at any sane bitrate, so a slow SD card
# stalls nothing; past it, packets drop with a log line.
QUEUE_PACKETS = 4096
# Sidecars whose stem takes a name as much as a video does: a new recording never adopts a
# snapshot or a timestamps file left without its video (retention would take them for its own).
SIDECARS = (".pts", ".jpg")


class RecordingSink(Protocol):
    """The catalog as a writer sees it: told of each file, asked about names. Neither call
    waits for the disk (the catalog writes on its own thread)."""

    def opened(self, path: Path, kind: Kind, start: float) -> None: ...
    def closed(self, path: Path, kind: Kind, start: float, end: float,
               frames: int) -> None: ...
    def name_used(self, stem: str) -> bool: ...
    def deleted(self, path: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterHooks:
    """What a writer tells the rest of the recorder: files opened and finished."""

    opened: Callable[[str], None]
    closed: Callable[[str], None]
    emit: Callable[[Event], None]
    catalog: RecordingSink | None = None  # None: no catalog is kept (a test, a bench)


def _name_taken(directory: Path, catalog: RecordingSink | None) -> Callable[[str], bool]:
    def used(stem: str) -> bool:
        if any((directory / (stem + ext)).exists() for ext in SIDECARS):
            return True
        return catalog is not None and catalog.name_used(stem)
    return used


class H264File:
    """One raw .h264 file and its .pts sidecar (capture times, ms from the first frame)."""

    def __init__(self, directory: Path, wall: float, with_seconds: bool,
                 siblings: tuple[Path, ...] = (), kind: Kind = "continuous",
                 catalog: RecordingSink | None = None) -> None:
        self.path, self._file = create_unique(directory, file_stem(wall, with_seconds), ".h264",
                                              siblings, _name_taken(directory, catalog))
        self.kind: Kind = kind
        self.pts_path = self.path.with_suffix(".pts")
        try:
            self._pts: BinaryIO = open(self.pts_path, "wb")
            self._pts.write(PTS_HEADER.encode())
        except OSError:
            self._file.close()
            self.path.unlink(missing_ok=True)
            raise
        self.wall = wall
        self._first: float | None = None
        self._flushed = 0.0  # capture time of the last flush to the OS
        self.frames = 0
        self.first_mono = 0.0
        self.last_mono = 0.0

    def write(self, packet: Packet) -> None:
        if self._first is None:
            self._first = self.first_mono = self._flushed = packet.mono
        self._pts.write(f"{(packet.mono - self._first) * 1000:.3f}\n".encode())
        if packet.keyframe or packet.mono - self._flushed >= FLUSH_EVERY:
            # The sidecar's line goes out before the frame: a crash leaves no keyframe on
            # disk without its time, and the video's buffer goes out with it.
            self._pts.flush()
            self._file.write(packet.data)
            self._file.flush()
            self._flushed = packet.mono
        else:
            self._file.write(packet.data)
        self.frames += 1
        self.last_mono = packet.mono

    @property
    def duration(self) -> float:
        return self.last_mono - self.first_mono

    def close(self) -> None:
        """Flush to disk, then close: the finished message promises a whole file."""
        try:
            for f in (self._file, self._pts):
                f.flush()
                os.fsync(f.fileno())
        finally:
            try:
                self._file.close()
            finally:
                self._pts.close()

    def finish(self, hooks: WriterHooks, detection: bool = False) -> None:
        """Close the file, and announce it: a clip around an edge carries "detection": true.
        A file that got no frame at all (the disk was full) is removed, not announced."""
        try:
            self.close()
        except OSError as exc:
            log.error("closing %s failed: %s", self.path, exc)
        hooks.closed(str(self.path))
        if hooks.catalog is not None:
            # An empty file is removed below, but it was catalogued when opened: closed with
            # 0 frames is the truth about it (and its name stays used).
            hooks.catalog.closed(self.path, self.kind, self.wall, self.wall + self.duration,
                                 self.frames)
        if self.frames == 0:
            for path in (self.path, self.pts_path):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # a read-only remount: an empty file stays, said once
                    _limit.log(log, logging.ERROR, "unlink", "cannot remove empty %s: %s",
                               path, exc.strerror or exc)
            if hooks.catalog is not None and not self.path.exists():
                hooks.catalog.deleted(self.path)  # nothing for postproc to convert
            return
        log.info("%s: %d frames, %.1f s", self.path.name, self.frames, self.duration)
        event = Event(h264=str(self.path), pts=str(self.pts_path), time=round(self.wall, 3))
        if detection:
            event["detection"] = True
        hooks.emit(event)


class DiskRetry:
    """After a failed write, wait before opening the next file, doubling the wait: a full disk
    must not turn into a new file every second. Times are monotonic seconds."""

    FIRST, MAX = 1.0, 30.0

    def __init__(self) -> None:
        self._until = float("-inf")
        self._delay = self.FIRST

    def ready(self, now: float) -> bool:
        return now >= self._until

    def failed(self, now: float) -> None:
        self._until = now + self._delay
        self._delay = min(self._delay * 2, self.MAX)

    def succeeded(self) -> None:
        self._delay = self.FIRST


class SegmentWriter(Stage):
    """Writes every packet; starts a new file at each boundary packet (an IDR at a split time)."""

    def __init__(self, directory: Path, split: float, hooks: WriterHooks,
                 siblings: tuple[Path, ...] = ()) -> None:
        super().__init__("segments")
        self._dir = directory
        self._siblings = siblings
        self._with_seconds = split % 60 != 0
        self._hooks = hooks
        self._inbox: Inbox[Packet] = Inbox(QUEUE_PACKETS, "segment writer", log)
        self._file: H264File | None = None
        self._retry = DiskRetry()
        self._failing = False

    def put(self, packet: Packet) -> None:
        """From the encoder thread; never blocks it."""
        self._inbox.offer(packet)

    def request_stop(self) -> None:
        """Write what is queued, close the file, then end (after the encoder has stopped)."""
        self._inbox.close()

    def salvage(self, stopping: bool) -> None:
        """Finish the file in hand: it is announced, and the next keyframe starts a new one."""
        self._close()
        if stopping:
            for _ in self._inbox:
                pass

    def run(self) -> None:
        for packet in self._inbox:
            try:
                self._write(packet)
            except OSError as exc:
                # ENOSPC and friends: keep what was written, never the process; a keyframe
                # after the retry wait opens a fresh file once the disk takes writes again.
                _limit.log(log, logging.ERROR, "write", "segment write failed: %s", exc)
                self._failing = True
                self._retry.failed(packet.mono)
                self._close()
        self._close()

    def _write(self, packet: Packet) -> None:
        if packet.boundary or (self._file is None and packet.keyframe):
            self._close()
            if not self._retry.ready(packet.mono):
                return  # the disk failed a moment ago: these frames are lost, said above
            self._file = H264File(self._dir, packet.wall, self._with_seconds, self._siblings,
                                  "continuous", self._hooks.catalog)
            self._hooks.opened(str(self._file.path))
            if self._hooks.catalog is not None:
                self._hooks.catalog.opened(self._file.path, "continuous", packet.wall)
        if self._file is not None:
            self._file.write(packet)
            if self._failing:
                self._failing = False
                self._retry.succeeded()
                log.info("disk takes writes again: recording resumed in %s", self._file.path.name)

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.finish(self._hooks)
