"""The packet ring buffer and the clip cutter, fed synthetic packets at a known frame rate."""

from __future__ import annotations

import threading
import time
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
from raspberry_pancake.recorder.recording.segments import QUEUE_PACKETS, WriterHooks
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


def test_ring_stays_bounded_when_keyframes_stop_coming() -> None:
    # A camera that sent one keyframe and then only P-frames: one GOP that never ends.
    mib = 1024 * 1024
    ring = RingBuffer(keep=PRE_ROLL + 3.0)
    ring.append(Packet(b"k" * mib, True, 0.0, WALL0))
    for i in range(1, 48):
        ring.append(Packet(b"p" * mib, False, i / FPS, WALL0 + i / FPS))
    held = sum(len(p.data) for p in ring.since(float("inf")))
    assert held <= 40 * mib, f"{held / mib:.0f} MiB held"
    # The next keyframe starts a ring that clips can cut from again.
    ring.append(Packet(b"k", True, 5.0, WALL0 + 5.0))
    ring.append(Packet(b"p", False, 5.1, WALL0 + 5.1))
    assert [p.data for p in ring.since(5.0)][-2:] == [b"k", b"p"]


class FailingOnce(Recorded):
    """Hooks whose first announcement raises, as a bug in a listener's path would."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

        def emit(event: Event) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("injected fault")
            self.events.append(event)

        self.hooks = WriterHooks(self.open.add, self.open.discard, emit)


def wait_dead(writer: ClipWriter) -> None:
    deadline = time.monotonic() + 10
    while not writer.dead() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.dead()


def test_a_clip_writer_that_dies_is_seen_dead_and_resumes_when_respawned(
        tmp_path: Path) -> None:
    rec = FailingOnce()
    writer = ClipWriter(ClipConfig(tmp_path, "edge", merge_wait=PRE_ROLL + 0.5), rec.hooks)
    writer.start()
    for i in range(300):
        writer.put(packet(i))
        if i == 100:
            writer.edge(Edge(True, i / FPS, WALL0 + i / FPS))
    wait_dead(writer)  # the first clip's announcement raised
    assert isinstance(writer.failure, RuntimeError)
    assert not rec.open  # the clip in hand was closed all the same
    assert writer.respawn()
    for i in range(300, 600):
        writer.put(packet(i))
        if i == 400:
            writer.edge(Edge(False, i / FPS, WALL0 + i / FPS))
    writer.stop()
    writer.join(5)
    assert not writer.is_alive() and not writer.dead()
    assert len(rec.events) == 1 and rec.events[0]["detection"] is True
    clip = Path(rec.events[0]["h264"]).read_bytes().decode().split()
    assert int(clip[0]) <= 380 and int(clip[-1]) >= 420
    assert len(list(tmp_path.glob("*.h264"))) == 2  # the first clip is on disk too


def test_stop_returns_when_the_writer_died_with_a_full_queue(tmp_path: Path) -> None:
    rec = FailingOnce()
    writer = ClipWriter(ClipConfig(tmp_path, "edge", merge_wait=0.5), rec.hooks)
    writer.start()
    for i in range(100):
        writer.put(packet(i))
        if i == 30:
            writer.edge(Edge(True, i / FPS, WALL0 + i / FPS))
    wait_dead(writer)
    for i in range(100, 100 + QUEUE_PACKETS + 10):  # nobody reads: the queue fills, then drops
        writer.put(packet(i))
    stopper = threading.Thread(target=writer.stop, name="test-stop")
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() waits for ever on a dead writer's full queue"
