"""Recordings as the page plays them: an h264 remuxed into a cached mp4, a time range cut from segments."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import av.error
from av.video.stream import VideoStream

from raspberry_pancake.shared.remux import (
    TIME_BASE,
    ConversionError,
    EmptyRecording,
    read_sidecar,
    remux,
    sidecar_for,
)

log = logging.getLogger(__name__)

# A remuxed file is kept this long after its last use: seeking (a range request each) and
# replaying within a few minutes never remux again.
CACHE_SECONDS = 300.0
CACHE_FILES = 8
# A fragment per keyframe, the moov (without samples) first: the file plays from its first
# fragment while the rest is still being written, and needs no rewrite at the end.
FRAGMENTED = "+frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True, slots=True)
class Piece:
    """One recording of a range: its file, its wall-clock start, and its fps fallback."""

    h264: Path
    start: float
    fps: float


class Remuxing:
    """A remux under way into a temporary file that grows: readers follow it as it is written
    (a fragmented mp4 plays from its first bytes) until `done`; then it is the cache's file."""

    def __init__(self, tmp: Path, out: Path) -> None:
        self.tmp = tmp
        self.out = out
        self._cond = threading.Condition()
        # Guarded by _cond: set once, by the remux thread, when it ends.
        self._done = False
        self._error: ConversionError | None = None

    def end(self, error: ConversionError | None) -> None:
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        with self._cond:
            return self._done

    @property
    def error(self) -> ConversionError | None:
        with self._cond:
            return self._error

    def started(self, timeout: float) -> None:
        """Wait until the file has bytes to read or the remux ended; raise its error, if any,
        so that an unplayable recording is refused before any answer is sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._done and time.monotonic() < deadline:
                try:
                    if os.stat(self.tmp).st_size > 0:
                        return
                except FileNotFoundError:
                    pass
                self._cond.wait(0.02)  # the muxer writes without telling: poll its size
            if self._error is not None:
                raise self._error

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` for the remux to end; whether it has."""
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
            return self._done

    def reader(self) -> BinaryIO:
        """The growing file open for reading from its start (the finished one when it is
        already done): an open file keeps reading the same bytes after the rename."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return (self.out if self._done else self.tmp).open("rb")


class RemuxCache:
    """mp4s remuxed from .h264 files on request, kept in a private directory for a few minutes.

    Remuxing copies packets (no decode), a 15-minute segment in a second or two. `begin` starts
    it on a "remux" thread writing a fragmented mp4 (playable from its first fragment) under a
    temporary name, renamed into the cache when whole; requests for the same recording meanwhile
    join that one file. `mp4` waits for the whole file.
    """

    def __init__(self, directory: Path, seconds: float = CACHE_SECONDS,
                 files: int = CACHE_FILES) -> None:
        self.directory = directory
        self.seconds = seconds
        self.files = files
        self._lock = threading.Lock()
        # Guarded by _lock: the remuxes under way by key, and their threads (joined by close).
        self._making: dict[str, Remuxing] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def begin(self, key: str, h264: Path, fps: float) -> Path | Remuxing:
        """The cached mp4 of `h264` under `key` (a catalog id) when it is there and newer than
        the recording, else the remux under way (started now if none is)."""
        self._prepare()
        out = self.directory / f"{key}.mp4"
        with self._lock:
            making = self._making.get(key)
            if making is not None:
                return making
            try:
                if out.stat().st_mtime >= h264.stat().st_mtime:
                    os.utime(out)  # used: kept a while longer
                    return out
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConversionError(f"cannot stat: {exc.strerror or exc}") from None
            if self._stop.is_set():
                raise ConversionError("shutting down")
            fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".mp4", dir=self.directory)
            os.close(fd)
            making = Remuxing(Path(tmp), out)
            self._making[key] = making
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._remux, args=(key, making, h264, fps),
                                      name="remux", daemon=True)
            self._threads.append(thread)
            thread.start()
        return making

    def _remux(self, key: str, making: Remuxing, h264: Path, fps: float) -> None:
        error: ConversionError | None = None
        try:
            sidecar = sidecar_for(h264)
            remux_fragmented(h264, making.tmp, fps, sidecar if sidecar.exists() else None,
                             self._stop)
            os.replace(making.tmp, making.out)
        except ConversionError as exc:
            error = exc
        except OSError as exc:
            error = ConversionError(f"cannot write the cache: {exc.strerror or exc}")
        finally:
            if error is not None:
                making.tmp.unlink(missing_ok=True)
            with self._lock:
                del self._making[key]
            making.end(error)
        if error is None:
            self.prune()

    def mp4(self, key: str, h264: Path, fps: float) -> Path:
        """The cached mp4 of `h264` under `key`, remuxed now if needed (waits for the whole
        file). Raises ConversionError (EmptyRecording) when there is nothing to play."""
        got = self.begin(key, h264, fps)
        if isinstance(got, Path):
            return got
        got.wait(None)
        if got.error is not None:
            raise got.error
        return got.out

    def close(self, timeout: float = 5.0) -> None:
        """Stop the remuxes under way (their readers see an error) and join their threads."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def prune(self, now: float | None = None) -> int:
        """Remove files unused for `seconds`, and the oldest beyond `files`; how many went."""
        now = time.time() if now is None else now
        try:
            entries = sorted(((e.stat().st_mtime, e.path) for e in os.scandir(self.directory)
                              if e.is_file()), reverse=True)
        except OSError:
            return 0
        with self._lock:
            writing = {str(m.tmp) for m in self._making.values()}
        entries = [(mtime, path) for mtime, path in entries if path not in writing]
        removed = 0
        for n, (mtime, path) in enumerate(entries):
            if n >= self.files or now - mtime > self.seconds:
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        return removed


def remux_fragmented(h264: Path, out: Path, fps: float, sidecar: Path | None,
                     stop: threading.Event | None = None) -> int:
    """shared.remux.remux, but into a fragmented mp4 that is readable while it grows (remux
    writes its moov at the end and then moves it first); stops early when `stop` is set.
    Returns the frame count."""
    return remux(h264, out, fps, sidecar, movflags=FRAGMENTED, stop=stop)


def _times(piece: Piece) -> list[float]:
    sidecar = sidecar_for(piece.h264)
    return read_sidecar(sidecar) if sidecar.exists() else []


def cut(pieces: Sequence[Piece], t0: float, t1: float, out: Path) -> int:
    """One mp4 of wall-clock [t0, t1) from consecutive recordings (remux only): it starts at
    the keyframe at or before t0, so the first picture decodes, and stops before t1. Returns
    the frames written; EmptyRecording when the range holds none."""
    if t1 <= t0:
        raise EmptyRecording("an empty time range")
    written = 0
    try:
        with av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as output:
            ost: VideoStream | None = None
            origin: float | None = None  # wall time of the file's first frame
            last = -1
            for piece in pieces:
                times = _times(piece)
                step = 1.0 / piece.fps
                try:
                    inp = av.open(str(piece.h264), format="h264")
                except (av.error.FFmpegError, OSError) as exc:
                    log.warning("%s: not played (%s)", piece.h264, exc)
                    continue
                with inp:
                    if not inp.streams.video:
                        continue
                    ist = inp.streams.video[0]
                    if ost is None:
                        ost = output.add_stream_from_template(ist)
                        ost.time_base = TIME_BASE
                    # Packets from the keyframe before t0: held until we know they are needed.
                    pending: list[tuple[float, av.Packet[VideoStream]]] = []
                    index = 0
                    try:
                        for packet in inp.demux(ist):
                            if packet.size == 0:
                                continue
                            offset = times[index] if index < len(times) else (
                                (times[-1] if times else 0.0) + (index - len(times) + 1) * step)
                            index += 1
                            wall = piece.start + offset
                            if wall >= t1:
                                break
                            if origin is None:
                                if packet.is_keyframe:
                                    pending = []
                                if wall < t0:
                                    if packet.is_keyframe or pending:
                                        pending.append((wall, packet))
                                    continue
                                if not pending and not packet.is_keyframe:
                                    continue  # nothing decodable yet
                                pending.append((wall, packet))
                                origin = pending[0][0]
                            else:
                                pending = [(wall, packet)]
                            for when, held in pending:
                                tick = max(round(Fraction(when - origin) / TIME_BASE), last + 1)
                                last = tick
                                held.stream = ost
                                held.time_base = TIME_BASE
                                held.pts = held.dts = tick
                                held.duration = round(Fraction(step) / TIME_BASE)
                                output.mux(held)
                                written += 1
                            pending = []
                    except (av.error.InvalidDataError, av.error.EOFError) as exc:
                        log.warning("%s: damaged after %d frames (%s)", piece.h264, index, exc)
    except av.error.FFmpegError as exc:
        raise ConversionError(f"mp4 muxer failed ({exc})") from None
    if written == 0:
        out.unlink(missing_ok=True)
        raise EmptyRecording("no frame in that time range")
    return written
