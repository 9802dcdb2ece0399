"""Raw H.264 to mp4, packets copied and timed by the sidecar: for the converter and playback."""

from __future__ import annotations

import logging
import math
import threading
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.video.stream import VideoStream

log = logging.getLogger(__name__)

# mp4 timestamps in the usual 90 kHz video clock: the sidecar's microseconds round to 11 µs.
TIME_BASE = Fraction(1, 90000)
SIDECAR_HEADER = "# timecode format v2"
# No recording is 11 days long: a time past this is damage (it would also overflow the mp4's
# 90 kHz clock arithmetic), and the frames from there on are timed by fps.
MAX_SIDECAR_MS = 1e9


class ConversionError(Exception):
    """The file could not be converted; the message says why in a few words."""


class EmptyRecording(ConversionError):
    """Nothing to convert: an empty file, or no H.264 in it."""

def sidecar_for(h264: Path) -> Path:
    return h264.with_suffix(".pts")


def read_sidecar(path: Path) -> list[float]:
    """Frame times in seconds from a `# timecode format v2` file; stops at the first bad line
    (a sidecar cut short by a power cut still times the frames before it)."""
    times: list[float] = []
    try:
        with path.open("r", encoding="ascii", errors="replace") as f:
            first = f.readline().strip()
            if first != SIDECAR_HEADER:
                log.warning("%s: not a timecode v2 sidecar, timing by fps", path)
                return []
            for line in f:
                text = line.strip()
                if not text:
                    continue
                try:
                    ms = float(text)
                except ValueError:
                    break
                if not math.isfinite(ms) or not 0 <= ms <= MAX_SIDECAR_MS \
                        or (times and ms / 1000.0 < times[-1]):
                    break  # NaN, infinite, negative, absurd or backwards: trust nothing after it
                times.append(ms / 1000.0)
    except OSError as exc:
        log.warning("%s: cannot read sidecar (%s), timing by fps", path, exc.strerror or exc)
        return []
    return times


class _Clock:
    """Packet n's time: the sidecar's while it lasts, then 1/fps steps from its last entry."""

    def __init__(self, times: list[float], fps: float) -> None:
        self._times = times
        self._step = 1.0 / fps
        self._last_tick = -1

    def tick(self, index: int) -> int:
        if index < len(self._times):
            seconds = self._times[index]
        elif self._times:
            seconds = self._times[-1] + (index - len(self._times) + 1) * self._step
        else:
            seconds = index * self._step
        value = round(seconds / TIME_BASE)
        # The mp4 muxer needs strictly increasing timestamps; two frames in one tick are nudged.
        value = max(value, self._last_tick + 1)
        self._last_tick = value
        return value


def remux(h264: Path, out: Path, fps: float, sidecar: Path | None, *,
          movflags: str = "+faststart", stop: threading.Event | None = None) -> int:
    """Write `out` (mp4, moov first) from the raw H.264 in `h264`; return the frame count.

    Timestamps come from the sidecar when given, else from fps. No decoding: packets are copied
    as they are. A damaged or truncated file yields the packets before the damage. `movflags`
    chooses the mp4's layout (the page's playback asks for a fragmented one, readable while
    it grows); `stop`, when set, ends the remux early with ConversionError.
    """
    try:
        size = h264.stat().st_size
    except OSError as exc:
        raise ConversionError(f"cannot stat: {exc.strerror or exc}") from None
    if size == 0:
        raise EmptyRecording("empty file")
    clock = _Clock(read_sidecar(sidecar) if sidecar else [], fps)
    try:
        inp = av.open(str(h264), format="h264")
    except (av.error.FFmpegError, OSError) as exc:
        raise EmptyRecording(f"no H.264 in it ({exc})") from None
    written = 0
    try:
        if not inp.streams.video:
            raise EmptyRecording("no video stream")
        ist = inp.streams.video[0]
        with av.open(str(out), "w", format="mp4", options={"movflags": movflags}) as output:
            ost = output.add_stream_from_template(ist)
            ost.time_base = TIME_BASE
            held: av.Packet[VideoStream] | None = None
            started = False
            index = 0
            last_duration = 0
            try:
                for packet in inp.demux(ist):
                    if stop is not None and stop.is_set():
                        raise ConversionError("stopped")
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    tick = clock.tick(index)
                    index += 1
                    # A file damaged at its start: skip to the first keyframe, which decodes.
                    if not started and not packet.is_keyframe:
                        continue
                    started = True
                    packet.stream = ost
                    packet.time_base = TIME_BASE
                    packet.pts = packet.dts = tick
                    if held is not None:
                        last_duration = held.duration = tick - (held.pts or 0)
                        output.mux(held)
                        written += 1
                    held = packet
            except (av.error.InvalidDataError, av.error.EOFError, av.error.FFmpegError) as exc:
                log.warning("%s: damaged after %d frames (%s): keeping those", h264, index, exc)
            if held is None:
                raise EmptyRecording("no decodable frame")
            # The last frame lasts as long as the one before it (or 1/fps when it is alone).
            held.duration = last_duration or round(1.0 / fps / TIME_BASE)
            output.mux(held)
            written += 1
    except av.error.FFmpegError as exc:
        raise ConversionError(f"mp4 muxer failed ({exc})") from None
    finally:
        inp.close()
    return written
