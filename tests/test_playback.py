"""Playback for the review page: the catalog's event and day queries, cached remux, range cuts."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from av.video.frame import PictureType

from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.playback import Piece, RemuxCache, Remuxing, cut
from raspberry_pancake.shared.remux import ConversionError, EmptyRecording
from tests.postproc_servers import frame_digests, make_recording, mp4_packets, write_sidecar

FPS = 12


def steady(frames: int, fps: int = FPS) -> list[float]:
    return [n * 1000.0 / fps for n in range(frames)]


def segment(path: Path, frames: int, first: int = 0) -> Path:
    """A recording with a keyframe every second and P-frames between, as pancake's encoder
    makes (lavfi marks its frames I, which libx264 would obey: the mark is cleared)."""
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(FPS), "bf": "0"}
        with av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi") as src:
            for n, frame in enumerate(src.decode(video=0)):
                if n < first:
                    continue
                if n >= first + frames:
                    break
                frame.pict_type = PictureType.NONE
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    write_sidecar(path.with_suffix(".pts"), steady(frames))
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog.open(tmp_path / "pancake.db", owner=True) as c:
        yield c


def test_event_views_filter_page_and_show_what_became_of_each_clip(
        catalog: Catalog, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    ids = []
    for n, (camera, labels, names) in enumerate([
            ("front", ["motion"], []), ("front", ["face"], ["anna"]),
            ("back", ["motion", "face"], ["unknown"]), ("front", ["motion"], [])]):
        t = 1000.0 + 100 * n
        clip = catalog.recording_opened(camera, "clip", rec / f"c{n}.h264", t - 3)
        catalog.recording_closed(clip, t + 10, 120)
        ev = catalog.event_rose(camera, t, labels, names)
        catalog.event_clip(ev, clip)
        ids.append((ev, clip))
    # The second clip was converted and uploaded twice and alerted; the first kept.
    ev1, clip1 = ids[1]
    catalog.converted(clip1, tmp_path / "mp4" / "c1.mp4", 120, 10.0)
    for dest in ("sftp://a", "ftp://b"):
        catalog.uploaded(clip1, dest)
    catalog.alert_sent(ev1, "telegram")
    catalog.alert_sent(ev1, "telegram")
    catalog.set_kept(ids[0][1], True)

    views = catalog.event_views()
    assert [v.event.id for v in views] == [e for e, _ in reversed(ids)]  # newest first
    by_id = {v.event.id: v for v in views}
    assert (by_id[ev1].mp4, by_id[ev1].uploaded, by_id[ev1].alerted) == (
        tmp_path / "mp4" / "c1.mp4", 2, ("telegram",))
    assert by_id[ids[0][0]].kept and not by_id[ev1].kept
    assert by_id[ids[3][0]].mp4 is None and by_id[ids[3][0]].clip_path == rec / "c3.h264"

    assert [v.event.id for v in catalog.event_views(camera="back")] == [ids[2][0]]
    assert [v.event.id for v in catalog.event_views(word="anna")] == [ev1]
    assert [v.event.id for v in catalog.event_views(word="face")] == [ids[2][0], ev1]
    assert [v.event.id for v in catalog.event_views(word="motion", camera="front")] == [
        ids[3][0], ids[0][0]]
    assert [v.event.id for v in catalog.event_views(t0=1100.0, t1=1300.0)] == [
        ids[2][0], ev1]
    # Pages: the last row of one page is the cursor of the next.
    first = catalog.event_views(limit=2)
    last = first[-1].event
    rest = catalog.event_views(before=(last.rise, last.id), limit=2)
    assert [v.event.id for v in first + rest] == [e for e, _ in reversed(ids)]
    # A deleted mp4 is no longer offered.
    catalog.mark_deleted(tmp_path / "mp4" / "c1.mp4")
    assert catalog.event_views(word="anna")[0].mp4 is None


def test_a_days_recordings_overlap_the_day_and_skip_deleted_ones(
        catalog: Catalog, tmp_path: Path) -> None:
    day0, day1 = 86400.0, 2 * 86400.0
    spans = [(day0 - 600, day0 + 300), (day0 + 300, day0 + 1200), (day1 - 100, day1 + 800),
             (day1 + 900, day1 + 1800)]
    rids = []
    for n, (a, b) in enumerate(spans):
        rid = catalog.recording_opened("cam", "continuous", tmp_path / f"s{n}.h264", a)
        catalog.recording_closed(rid, b, 10)
        rids.append(rid)
    catalog.mark_deleted(tmp_path / "s1.h264")
    got = catalog.recordings_between("cam", day0, day1)
    assert [r.id for r in got] == [rids[0], rids[2]]  # across midnight on both ends
    assert catalog.recordings_between("cam", day0, day1, kind="clip") == []
    assert catalog.recordings_between("door", day0, day1) == []


def test_the_cache_remuxes_once_and_serves_every_frame_unchanged(tmp_path: Path) -> None:
    h264 = make_recording(tmp_path / "20260101-1000.h264", 36, steady(36))
    cache = RemuxCache(tmp_path / "cache")
    first = cache.mp4("r7", h264, FPS)
    made = first.stat().st_mtime_ns
    assert frame_digests(first) == frame_digests(h264)
    packets = mp4_packets(first)
    assert len(packets) == 36 and packets[0][1]
    assert packets[-1][0] == pytest.approx(35 / FPS, abs=0.001)
    time.sleep(0.02)
    again = cache.mp4("r7", h264, FPS)
    assert again == first and again.stat().st_mtime_ns >= made
    assert frame_digests(again) == frame_digests(h264)
    assert oct(os.stat(tmp_path / "cache").st_mode & 0o777) == "0o700"
    # A recording that grew since (still being written) is remuxed again.
    later = time.time() + 5
    os.utime(h264, (later, later))
    assert len(mp4_packets(cache.mp4("r7", h264, FPS))) == 36
    # Old files go; a bounded number stays.
    for n in range(3):
        cache.mp4(f"r{n}", h264, FPS)
    small = RemuxCache(tmp_path / "cache", files=2)
    small.prune()
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert small.prune(now=time.time() + 3600) == 2
    (tmp_path / "empty.h264").touch()
    with pytest.raises(EmptyRecording):
        cache.mp4("empty", tmp_path / "empty.h264", FPS)
    assert not (tmp_path / "cache" / "empty.mp4").exists()


def test_a_range_cut_from_two_segments_starts_at_a_keyframe_and_is_continuous(
        tmp_path: Path) -> None:
    # Two consecutive 3 s segments at 12 fps, a keyframe every second.
    a = segment(tmp_path / "a.h264", 36)
    b = segment(tmp_path / "b.h264", 36, first=36)
    assert [k for _, k, _ in mp4_packets(RemuxCache(tmp_path / "c").mp4("a", a, FPS))] == [
        n % FPS == 0 for n in range(36)]
    pieces = [Piece(a, 1000.0, FPS), Piece(b, 1003.0, FPS)]
    out = tmp_path / "cut.mp4"
    # 1001.5 .. 1004.5: from the keyframe at 1001.0 (a's 12th frame) to before b's 18th.
    n = cut(pieces, 1001.5, 1004.5, out)
    packets = mp4_packets(out)
    assert n == len(packets) == 24 + 18
    assert packets[0][1] and packets[0][0] == 0.0
    times = [t for t, _, _ in packets]
    assert times == sorted(times)
    gaps = {round(t2 - t1, 3) for t1, t2 in itertools.pairwise(times)}
    assert gaps == {round(1 / FPS, 3)}  # no hole and no overlap at the segment boundary
    # Not re-encoded: the pictures are the segments' own.
    assert frame_digests(out) == (frame_digests(a)[12:] + frame_digests(b)[:18])
    with pytest.raises(EmptyRecording):
        cut(pieces, 2000.0, 2010.0, tmp_path / "none.mp4")
    assert not (tmp_path / "none.mp4").exists()


def test_a_remux_under_way_is_joined_read_while_it_grows_and_stopped_on_close(
        tmp_path: Path) -> None:
    one = segment(tmp_path / "one.h264", 10 * FPS).read_bytes()
    long = tmp_path / "long.h264"
    long.write_bytes(one * 200)  # 33 minutes: its remux takes a while
    cache = RemuxCache(tmp_path / "cache", files=1)
    first = cache.begin("r1", long, FPS)
    assert isinstance(first, Remuxing) and cache.begin("r1", long, FPS) is first  # joined
    first.started(30.0)
    with first.reader() as f:
        assert f.read(8)[4:] == b"ftyp"
    # A prune meanwhile (one file kept, another one there) leaves the file being written alone.
    (tmp_path / "cache" / "r0.mp4").write_bytes(b"old")
    assert not first.done  # (else the prune below would not be tested)
    cache.prune(now=time.time() + 3600)
    assert first.wait(60.0) and first.error is None and first.out.exists()
    assert len(mp4_packets(first.out)) == 200 * 10 * FPS
    assert cache.begin("r1", long, FPS) == first.out  # then the cached file
    # Shutting down stops a remux midway: its readers see why, no temporary file stays.
    os.utime(long, (time.time() + 5, time.time() + 5))
    again = cache.begin("r1", long, FPS)
    assert isinstance(again, Remuxing)
    cache.close()
    assert again.done and isinstance(again.error, ConversionError)
    with pytest.raises(ConversionError):
        again.reader()
    assert not again.tmp.exists()
    with pytest.raises(ConversionError):
        cache.begin("r2", long, FPS)
    # Nothing to play is said before any byte: an empty file, garbage.
    (tmp_path / "empty.h264").touch()
    (tmp_path / "junk.h264").write_bytes(b"not video" * 100)
    fresh = RemuxCache(tmp_path / "cache2")
    for name in ("empty", "junk"):
        got = fresh.begin(name, tmp_path / f"{name}.h264", FPS)
        assert isinstance(got, Remuxing)
        with pytest.raises(EmptyRecording):
            got.started(30.0)
    assert [p.name for p in (tmp_path / "cache2").iterdir()] == []
    fresh.close()
