"""Detection recording: clips cut from a ring buffer of encoded packets around detection edges."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raspberry_pancake.recorder.frames import Packet
from raspberry_pancake.recorder.recording.segments import QUEUE_PACKETS, H264File, WriterHooks
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.shared.inbox import Inbox
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

# Seconds of video kept before and after an edge (the original's clips were 4-6 s around it).
PRE_ROLL = 2.0
POST_ROLL = 2.0
# The ring keeps this much beyond the pre-roll: a GOP (≤ 1 s) plus the detector's latency.
RING_SLACK = 3.0
# The most the ring holds, whatever the camera's keyframe interval: far above 5 s of any sane
# bitrate, far below a Pi Zero's memory.
RING_MAX_BYTES = 32 * 1024 * 1024


class RingBuffer:
    """The last seconds of encoded video, kept as whole GOPs so any cut starts at a keyframe.

    Also bounded in bytes: a camera that sends keyframes rarely (or never again) would
    otherwise grow one GOP without end; past `max_bytes` the oldest GOPs go, and a single GOP
    that outgrows it is dropped whole (logged): clips then start at the next keyframe.
    """

    def __init__(self, keep: float, max_bytes: int = RING_MAX_BYTES) -> None:
        self._keep = keep
        self._max_bytes = max_bytes
        self._gops: deque[list[Packet]] = deque()
        self._bytes = 0
        self.dropped_gops = 0

    def append(self, packet: Packet) -> None:
        if packet.keyframe:
            self._gops.append([packet])
        elif self._gops:
            self._gops[-1].append(packet)
        else:
            return  # nothing decodes before the first keyframe
        self._bytes += len(packet.data)
        newest = packet.mono
        while len(self._gops) >= 2 and self._gops[1][0].mono <= newest - self._keep:
            self._drop_oldest()
        while self._bytes > self._max_bytes and self._gops:
            if len(self._gops) == 1:
                self.dropped_gops += 1
                _limit.log(log, logging.WARNING, "ring", "no keyframe for %.0f s (over %d MiB): "
                           "the pre-roll restarts at the next keyframe",
                           newest - self._gops[0][0].mono, self._max_bytes // (1024 * 1024))
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._bytes -= sum(len(p.data) for p in gop)

    def since(self, t: float) -> list[Packet]:
        """Packets from the last keyframe at or before `t` (or the oldest one kept) onwards."""
        start = 0
        for i, gop in enumerate(self._gops):
            if gop[0].mono <= t:
                start = i
            else:
                break
        return [p for gop in list(self._gops)[start:] for p in gop]

    @property
    def span(self) -> float:
        if not self._gops:
            return 0.0
        return self._gops[-1][-1].mono - self._gops[0][0].mono

    def __len__(self) -> int:
        return sum(len(g) for g in self._gops)


@dataclass(frozen=True, slots=True)
class Edge:
    """Detection changed at capture time (mono, wall)."""

    rising: bool
    mono: float
    wall: float


# Told, on the clip writer's thread, which clip covers an edge (its .h264), once the file
# exists; None when the edge gets no clip (a falling edge in `all` mode with none open, a clip
# that never reached a keyframe, the writer stopping).
ClipNamed = Callable[[Path | None], None]


@dataclass(frozen=True, slots=True)
class ClipConfig:
    directory: Path
    mode: str  # "edge": a clip around every edge; "all": as long as detection is true
    merge_wait: float  # how long past a clip's end to wait for an edge that would merge
    siblings: tuple[Path, ...] = ()  # other record dirs: a name is unique across all of them


class ClipWriter(Stage):
    """Cuts clips from the packet stream the continuous recording also reads: one encoder.

    A clip starts at the keyframe at or before edge - PRE_ROLL and ends at the first packet
    at or after its end (edge + POST_ROLL; in `all` mode the falling edge + POST_ROLL). Packets
    after the end are held back until `merge_wait` has passed: an edge that comes in time, and
    whose pre-roll reaches back into the clip, extends it instead of starting another.
    """

    def __init__(self, cfg: ClipConfig, hooks: WriterHooks) -> None:
        super().__init__("clips")
        self._cfg = cfg
        self._hooks = hooks
        self._ring = RingBuffer(PRE_ROLL + RING_SLACK)
        self._inbox: Inbox[Packet | tuple[Edge, ClipNamed | None]] = Inbox(
            QUEUE_PACKETS, "clip writer", log)
        self._active = False  # a clip is being cut (its file opens at the first keyframe)
        self._file: H264File | None = None
        self._end: float | None = None  # None while open: detection still true (`all` mode)
        self._tail: list[Packet] = []  # after the end, waiting to see whether an edge merges
        self._last_written = float("-inf")
        self._unnamed: list[ClipNamed] = []  # edges of the active clip, before its file exists

    # -- from other threads ------------------------------------------------------------------
    def put(self, packet: Packet) -> None:
        """From the encoder thread; never blocks it."""
        self._inbox.offer(packet)

    def edge(self, edge: Edge, named: ClipNamed | None = None) -> None:
        """From the detector thread, at the edge; `named` learns the clip that covers it."""
        if not self._inbox.offer((edge, named)) and named is not None:
            named(None)

    def request_stop(self) -> None:
        self._inbox.close()

    def salvage(self, stopping: bool) -> None:
        """Finish the clip in hand; the ring buffer is kept, so the next edge still has its
        pre-roll."""
        self._close(final=True)
        if stopping:
            for _ in self._inbox:
                pass

    # -- the writer thread -----------------------------------------------------------------
    def run(self) -> None:
        for item in self._inbox:
            try:
                if isinstance(item, tuple):
                    self._on_edge(*item)
                else:
                    self._on_packet(item)
            except OSError as exc:
                _limit.log(log, logging.ERROR, "write", "clip write failed: %s", exc)
                self._close(final=True)
        self._close(final=True)

    def _on_edge(self, edge: Edge, named: ClipNamed | None = None) -> None:
        start = edge.mono - PRE_ROLL
        if self._active:
            if self._end is None:
                if not edge.rising:  # `all` mode: detection over, keep the post-roll
                    self._end = edge.mono + POST_ROLL
                self._name(named)
                return
            if start <= self._end:  # its pre-roll reaches into this clip: one clip covers both
                self._name(named)
                self._extend(edge)
                return
            self._close(final=True)
        if self._cfg.mode == "all" and not edge.rising:
            if named is not None:
                named(None)  # a falling edge with no clip open (detection was on at our start)
            return
        self._open(self._ring.since(start), named)
        self._end = None if self._cfg.mode == "all" else edge.mono + POST_ROLL

    def _name(self, named: ClipNamed | None) -> None:
        """Tell `named` the active clip's file now, or once it exists."""
        if named is None:
            return
        if self._file is not None:
            named(self._file.path)
        else:
            self._unnamed.append(named)

    def _extend(self, edge: Edge) -> None:
        if self._cfg.mode == "all" and edge.rising:
            self._end = None
        else:
            assert self._end is not None
            self._end = max(self._end, edge.mono + POST_ROLL)
        tail, self._tail = self._tail, []
        for packet in tail:
            self._write(packet)

    def _on_packet(self, packet: Packet) -> None:
        self._ring.append(packet)
        if not self._active:
            return
        if self._end is None:
            if packet.boundary and self._file is not None:  # `all` mode: split on the clock
                self._close(final=False)
                self._open([])
            self._write(packet)
        elif self._last_written < self._end and not self._tail:
            self._write(packet)
        else:
            self._tail.append(packet)
            if packet.mono >= self._end + self._cfg.merge_wait:
                self._close(final=True)

    def _open(self, packets: list[Packet], named: ClipNamed | None = None) -> None:
        self._active = True
        self._file = None
        self._last_written = float("-inf")
        self._tail = []
        self._name(named)
        for packet in packets:
            self._write(packet)

    def _write(self, packet: Packet) -> None:
        if self._file is None:
            if not packet.keyframe:
                return
            self._file = H264File(self._cfg.directory, packet.wall, True, self._cfg.siblings,
                                  "clip", self._hooks.catalog)
            self._hooks.opened(str(self._file.path))
            if self._hooks.catalog is not None:
                self._hooks.catalog.opened(self._file.path, "clip", packet.wall)
            waiting, self._unnamed = self._unnamed, []
            for named in waiting:
                named(self._file.path)
        self._file.write(packet)
        self._last_written = packet.mono

    def _close(self, final: bool) -> None:
        f, self._file = self._file, None
        self._active = False
        self._tail = []
        waiting, self._unnamed = self._unnamed, []
        for named in waiting:  # the clip never reached a keyframe: no file covers them
            named(None)
        if f is not None:
            f.finish(self._hooks, detection=final)
