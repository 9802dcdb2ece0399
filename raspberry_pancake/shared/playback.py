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


@dataclass(frozen=True, slots=True)
class Piece:
    """One recording of a range: its file, its wall-clock start, and its fps fallback."""

    h264: Path
    start: float
    fps: float


class RemuxCache:
    """mp4s remuxed from .h264 files on request, kept in a private directory for a few minutes.

    Remuxing copies packets (no decode), a 15-minute segment in a few seconds; the file is
    written under a temporary name and renamed, so a reader only ever sees a whole one.
    Threads asking for the same recording at once wait for one remux.
    """

    def __init__(self, directory: Path, seconds: float = CACHE_SECONDS,
                 files: int = CACHE_FILES) -> None:
        self.directory = directory
        self.seconds = seconds
        self.files = files
        self._lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}

    def _prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def mp4(self, key: str, h264: Path, fps: float) -> Path:
        """The cached mp4 of `h264` under `key` (a catalog id), remuxed now if needed.
        Raises ConversionError (EmptyRecording) when there is nothing to play."""
        self._prepare()
        out = self.directory / f"{key}.mp4"
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            try:
                if out.stat().st_mtime >= h264.stat().st_mtime:
                    os.utime(out)  # used: kept a while longer
                    return out
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConversionError(f"cannot stat: {exc.strerror or exc}") from None
            fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".mp4", dir=self.directory)
            os.close(fd)
            try:
                sidecar = sidecar_for(h264)
                remux(h264, Path(tmp), fps, sidecar if sidecar.exists() else None)
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self.prune()
        return out

    def prune(self, now: float | None = None) -> int:
        """Remove files unused for `seconds`, and the oldest beyond `files`; how many went."""
        now = time.time() if now is None else now
        try:
            entries = sorted(((e.stat().st_mtime, e.path) for e in os.scandir(self.directory)
                              if e.is_file()), reverse=True)
        except OSError:
            return 0
        removed = 0
        for n, (mtime, path) in enumerate(entries):
            if n >= self.files or now - mtime > self.seconds:
                try:
                    os.unlink(path)
                    removed += 1
                except OSError:
                    pass
        return removed


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
