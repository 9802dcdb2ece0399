"""A camera that sends H.264 is recorded as it sends it: its own bytes, split at its keyframes;
asking for a resize or a flip re-encodes, and so does a file source."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from av.video.frame import PictureType
from conftest import Listener, Pancake, free_port, run_pancake, schedule_customize
from recordings import Recording, decode
from streams import NAL_IDR, NAL_SLICE, NAL_SPS, StreamServer, nal_units
from web_helpers import get_json

FPS = 12
SPLIT = 3
# The camera's distinctive setting: level 1.3 (level_idc 13) in its SPS; pancake's libx264
# would pick its own level, so this SPS in a recording can only have come from the camera.
CAMERA_LEVEL = 13
PASSTHROUGH_LINE = "recording it as is (passthrough, no re-encode)"


@pytest.fixture
def camera() -> Iterator[StreamServer]:
    # Parameter sets only at the start of the stream, like cameras that announce them once:
    # every later segment must get them from pancake to decode alone.
    server = StreamServer(free_port(), FPS, x264_params="level=1.3", headers_once=True)
    yield server
    server.stop()


def url(server: StreamServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/live.ts"


def slices(path: Path) -> list[bytes]:
    return [u for u in nal_units(path.read_bytes()) if u[0] & 0x1F in (NAL_SLICE, NAL_IDR)]


def first_sps(path: Path) -> bytes | None:
    """The SPS at the start of a file, if it comes before the first slice."""
    for u in nal_units(path.read_bytes()):
        if u[0] & 0x1F == NAL_SPS:
            return u
        if u[0] & 0x1F in (NAL_SLICE, NAL_IDR):
            return None
    return None


def first_size(path: Path) -> tuple[int, int]:
    with av.open(str(path), format="h264") as c:
        frame = next(c.decode(video=0))
        return frame.width, frame.height


def assert_run_of(recorded: list[bytes], sent: list[bytes]) -> None:
    """`recorded` is a contiguous run of what the camera sent: none lost, none repeated."""
    assert recorded, "nothing recorded"
    start = sent.index(recorded[0])
    assert sent[start:start + len(recorded)] == recorded


def test_h264_camera_is_recorded_as_sent(tmp_path: Path, camera: StreamServer,
                                         listener: Listener, pancakes: list[Pancake]) -> None:
    seg_dir, clip_dir = tmp_path / "h264", tmp_path / "clips"
    seg_dir.mkdir()
    clip_dir.mkdir()
    t0 = time.time() + 2.0  # the camera is up well before the edge's 2 s of pre-roll
    # detect(rgb) raises unless it gets 160x120 RGB: the live frames are scaled, the recording not.
    custom = schedule_customize(tmp_path / "c.py", [(3.0, 3.6)], t0, image=True, size=(160, 120))
    p = run_pancake(pancakes, [
        "--source", url(camera), "--fps", str(FPS), "--resolution", "160", "120",
        "--record-continuous", str(seg_dir), "--record-split", str(SPLIT),
        "--record-detection", "edge", str(clip_dir), "--detect", "image",
        "--detect-interval", "0.2", "--customize", str(custom), "--emit", listener.name,
    ], tmp_path)
    p.wait_for(PASSTHROUGH_LINE)
    p.wait_for("segment", timeout=10)  # the first split: the live view is up by now
    status = get_json(p.port, "/status")
    while time.time() < t0 + 8.5 and p.proc.poll() is None:
        time.sleep(0.2)
    rc, _ = p.stop()
    log = p.log()
    assert rc == 0, log
    assert "Traceback" not in log and "raised" not in log, log
    assert log.count(PASSTHROUGH_LINE) == 1
    assert status["resolution"] == [160, 120] and status["capture_fps"] > 0, status
    assert len(camera.connections) == 1, log
    sent = camera.connections[0]
    assert sent.sps is not None and sent.sps[3] == CAMERA_LEVEL
    time.sleep(0.3)
    events = listener.events()

    segs = [decode(Path(e["h264"]), e["time"]) for e in events
            if "h264" in e and "detection" not in e]
    assert len(segs) >= 3, log
    for s in segs:
        assert s.first_is_key and s.frames == len(s.pts_ms), s.path.name
        assert first_size(s.path) == (320, 240)  # the camera's size: never scaled
        assert first_sps(s.path) == sent.sps, s.path.name  # its own SPS, put first
    # Times are when pancake read each packet: allow for scheduling on a busy machine.
    for s in segs[1:]:  # at the camera's first keyframe (one a second) at/after a boundary
        assert 0 <= s.start % SPLIT < 1.0 + 0.5, (s.path.name, s.start)
    for a, b in itertools.pairwise(segs):
        assert 0 < b.start - a.end < 0.5, (a.path.name, b.path.name, b.start - a.end)
    # Back to back and byte for byte: the slices of all segments are the camera's, in order.
    assert_run_of([x for s in segs for x in slices(s.path)], sent.slices)

    clips = [Path(e["h264"]) for e in events if "h264" in e and e.get("detection")]
    assert len(clips) == 1, (events, log)
    clip: Recording = decode(clips[0], 0)
    assert clip.first_is_key and clip.frames == len(clip.pts_ms), clip
    edge_times = [e["time"] for e in events if "detection" in e and "h264" not in e]
    assert clip.duration >= 4.0 - 1.0 / FPS, (clip.duration, edge_times, events, log)
    assert first_sps(clip.path) == sent.sps
    assert_run_of(slices(clip.path), sent.slices)
    (edge,) = [e for e in events if e.get("detection") is True and "h264" not in e]
    with av.open(edge["jpeg"]) as snap:
        picture = next(snap.decode(video=0))
        assert (picture.width, picture.height) == (160, 120)


@pytest.mark.parametrize("change", [["--record-resize", "160", "120"], ["--vflip"]])
def test_resize_or_flip_reencodes(tmp_path: Path, camera: StreamServer, change: list[str],
                                  pancakes: list[Pancake]) -> None:
    p = run_pancake(pancakes, ["--source", url(camera), "--fps", str(FPS), "--resolution",
                               "320", "240", "--record-continuous", str(tmp_path), *change],
                    tmp_path)
    p.wait_for("pancake: ")
    time.sleep(2.5)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert PASSTHROUGH_LINE not in p.log()
    (seg,) = tmp_path.glob("*.h264")
    rec = decode(seg, 0)
    assert rec.first_is_key and rec.frames == len(rec.pts_ms) >= FPS
    assert first_size(seg) == ((160, 120) if "--record-resize" in change else (320, 240))
    sps = first_sps(seg)
    sent = camera.connections[0]
    assert sps is not None and sps != sent.sps
    assert not set(slices(seg)) & set(sent.slices)  # not one slice of the camera's kept


def test_file_source_is_reencoded(tmp_path: Path, pancakes: list[Pancake]) -> None:
    # A file is played in real time from its own clock, so its packets carry no capture time:
    # it stays re-encoded even when it holds H.264 at the size asked.
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        with av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi") as src:
            for frame in itertools.islice(src.decode(video=0), 2 * FPS):
                frame.pts = None
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    p = run_pancake(pancakes, ["--source", str(video), "--fps", str(FPS), "--resolution", "320",
                               "240", "--record-continuous", str(rec_dir)], tmp_path)
    p.wait_for("pancake: ")
    time.sleep(2.5)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert PASSTHROUGH_LINE not in p.log()
    with av.open(str(video)) as c:  # the file's SPS, from its avcC: length-prefixed
        extradata = c.streams.video[0].codec_context.extradata
    assert extradata is not None
    segs = sorted(rec_dir.glob("*.h264"))  # a new one each time the file starts over
    assert segs
    for seg in segs:
        assert decode(seg, 0).first_is_key
        sps = first_sps(seg)
        assert sps is not None and sps not in extradata



def test_avcc_keyframes_become_annexb_with_parameter_sets(tmp_path: Path) -> None:
    # An mp4's packets are avcC: length-prefixed, SPS/PPS only in the extradata (as from an
    # flv/RTMP camera). Through Passthrough each GOP becomes Annex-B that decodes alone.
    from raspberry_pancake.recorder.frames import Packet
    from raspberry_pancake.recorder.sources.passthrough import Passthrough

    video = tmp_path / "v.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"x264-params": f"keyint={FPS}"}
        with av.open(f"testsrc2=size=160x120:rate={FPS}", format="lavfi") as src:
            for frame in itertools.islice(src.decode(video=0), 4 * FPS):
                frame.pts, frame.pict_type = None, PictureType.NONE
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    got: list[Packet] = []
    passthrough = Passthrough(3600.0, got.append)
    with av.open(str(video)) as c:
        extradata = c.streams.video[0].codec_context.extradata
        assert extradata is not None and extradata[0] == 1  # avcC indeed
        passthrough.open(c.streams.video[0])
        for i, packet in enumerate(c.demux(video=0)):
            passthrough.feed(packet, float(i), 1e9 + i)
    keys = [i for i, p in enumerate(got) if p.keyframe]
    assert len(got) == 4 * FPS and keys == [0, FPS, 2 * FPS, 3 * FPS]
    assert [p.boundary for p in got].count(True) == 1 and got[0].boundary
    for start, end in itertools.pairwise([*keys, len(got)]):
        gop = tmp_path / f"gop{start}.h264"
        gop.write_bytes(b"".join(p.data for p in got[start:end]))
        assert first_sps(gop) is not None
        with av.open(str(gop), format="h264") as c:
            assert sum(1 for _ in c.decode(video=0)) == end - start
