"""The packet ring buffer and the clip cutter, fed synthetic packets at a known frame rate."""

from __future__ import annotations

from pathlib import Path

from raspberry_pancake.recorder.frames import Packet
from raspberry_pancake.recorder.recording.clips import (
    POST_ROLL,
    PRE_ROLL,
    ClipConfig,
    ClipWriter,
    Edge,
    RingBuffer,
)
from raspberry_pancake.recorder.recording.segments import WriterHooks
from raspberry_pancake.shared.events import Event

FPS = 10
GOP = 10  # a keyframe every second
WALL0 = 1_600_000_000.0


def packet(i: int, boundary_every: int = 0) -> Packet:
    boundary = bool(boundary_every) and i % boundary_every == 0 and i > 0
    return Packet(f"{i:06d}\n".encode(), i % GOP == 0 or boundary, i / FPS, WALL0 + i / FPS,
                  boundary)


def test_ring_keeps_whole_gops_and_enough_seconds() -> None:
    ring = RingBuffer(keep=3.0)
    for i in range(100):
        ring.append(packet(i))
    assert 3.0 <= ring.span < 3.0 + 1.0  # at most one GOP more than asked
    cut = ring.since(8.55)
    assert cut[0].keyframe and cut[0].mono == 8.0  # the last keyframe at or before t
    assert [p.mono for p in cut] == [i / FPS for i in range(80, 100)]
    # Older than what is kept: start at the oldest keyframe there is.
    assert ring.since(0.0)[0].mono == min(p.mono for p in ring.since(-1))


def test_ring_drops_packets_before_the_first_keyframe() -> None:
    ring = RingBuffer(keep=3.0)
    for i in range(5, 15):
        ring.append(packet(i))
    assert ring.since(0)[0].mono == 1.0


class Recorded:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.open: set[str] = set()
        self.hooks = WriterHooks(self.open.add, self.open.discard, self.events.append)


def run_writer(tmp_path: Path, mode: str, edges: dict[int, bool], n: int,
               boundary_every: int = 0) -> tuple[Recorded, list[list[float]]]:
    """Feed n packets, and an edge just after packet i for every i in `edges`."""
    rec = Recorded()
    writer = ClipWriter(ClipConfig(tmp_path, mode, merge_wait=PRE_ROLL + 0.5), rec.hooks)
    writer.start()
    for i in range(n):
        writer.put(packet(i, boundary_every))
        if i in edges:
            writer.edge(Edge(edges[i], i / FPS, WALL0 + i / FPS))
    writer.stop()
    writer.join(5)
    assert not writer.is_alive()
    clips = []
    for event in rec.events:
        lines = Path(event["h264"]).read_bytes().decode().split()
        clips.append([int(x) / FPS for x in lines])
    assert not rec.open
    return rec, clips


def test_edge_clip_has_pre_and_post_roll(tmp_path: Path) -> None:
    rec, clips = run_writer(tmp_path, "edge", {100: True, 300: False}, 500)
    assert len(clips) == 2
    for clip, edge_t in zip(clips, (10.0, 30.0), strict=True):
        assert clip[0] <= edge_t - PRE_ROLL and clip[-1] >= edge_t + POST_ROLL
        assert 4.0 <= clip[-1] - clip[0] <= 6.0
        assert clip == sorted(set(clip))  # no gap, no duplicate
        assert clip == [round(clip[0] + k / FPS, 6) for k in range(len(clip))]
    assert all(e.get("detection") is True for e in rec.events)


def test_close_edges_merge_into_one_clip(tmp_path: Path) -> None:
    _, clips = run_writer(tmp_path, "edge", {100: True, 130: False}, 300)
    assert len(clips) == 1
    assert clips[0][0] <= 8.0 and clips[0][-1] >= 15.0


def test_edges_far_apart_make_separate_clips(tmp_path: Path) -> None:
    _, clips = run_writer(tmp_path, "edge", {100: True, 160: False}, 300)
    assert len(clips) == 2


def test_all_mode_covers_the_detection_and_splits(tmp_path: Path) -> None:
    rec, clips = run_writer(tmp_path, "all", {100: True, 400: False}, 600, boundary_every=150)
    frames = sorted(t for clip in clips for t in clip)
    assert frames[0] <= 8.0 and frames[-1] >= 42.0
    assert frames == sorted(set(frames))  # the split files are back to back
    assert len(clips) == 3  # boundaries at 15 s and 30 s
    assert [("detection" in e) for e in rec.events] == [False, False, True]


def test_stop_closes_an_open_clip(tmp_path: Path) -> None:
    rec, clips = run_writer(tmp_path, "all", {100: True}, 200)
    assert len(clips) == 1 and rec.events[0]["detection"] is True
