"""The real pancake.py on testsrc: segments, clips, events, signals, detect() misbehaving."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import time
from pathlib import Path

import av
import pytest
from conftest import Listener, Pancake, run_pancake, schedule_customize
from recordings import decode

FPS = 12
SPLIT = 3
INTERVAL = 0.2
# Bounds a user would notice, loose enough for a loaded 2-core CI machine: a stop that takes
# longer holds up systemd; an edge later than this is "seconds later". Speed lives in bench/.
STOP_WITHIN = 6.0
EDGE_LATE = 0.8
BASE = ["--source", "testsrc", "--fps", str(FPS), "--resolution", "320", "240"]


def wait_files(directory: Path, pattern: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob(pattern))) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def test_segments_clips_and_events(tmp_path: Path, listener: Listener,
                                   pancakes: list[Pancake]) -> None:
    seg_dir, clip_dir = tmp_path / "h264", tmp_path / "clips"
    seg_dir.mkdir()
    clip_dir.mkdir()
    t0 = time.time() + 1.0  # the daemon takes about a second to start
    # One long detection (two clips, far apart) and one short blip (one merged clip).
    windows = [(3.0, 9.0), (14.0, 15.0)]
    custom = schedule_customize(tmp_path / "customize.py", windows, t0)
    p = run_pancake(pancakes, [
        *BASE, "--record-continuous", str(seg_dir), "--record-split", str(SPLIT),
        "--record-detection", "edge", str(clip_dir), "--detect", "no-image",
        "--detect-interval", str(INTERVAL), "--customize", str(custom), "--emit", listener.name,
    ], tmp_path)
    deadline = t0 + 21.0
    while time.time() < deadline and p.proc.poll() is None:
        time.sleep(0.2)
    rc, took = p.stop(signal.SIGTERM)
    assert rc == 0, p.log()
    assert took < STOP_WITHIN
    assert "Traceback" not in p.log()
    time.sleep(0.3)
    events = listener.events()

    # Every file on disk was announced exactly once, with the protocol's fields.
    files = [e for e in events if "h264" in e]
    on_disk = sorted(str(f) for f in [*seg_dir.glob("*.h264"), *clip_dir.glob("*.h264")])
    assert sorted(e["h264"] for e in files) == on_disk
    for e in files:
        assert set(e) <= {"h264", "pts", "time", "detection"}
        assert e["pts"] == e["h264"][:-5] + ".pts"

    # Continuous: names, each segment decodes alone from an IDR, back to back, true frame count.
    segs = [decode(Path(e["h264"]), e["time"]) for e in files if "detection" not in e]
    assert len(segs) >= 5
    for s in segs:
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?\.h264", s.path.name), s.path.name
        assert s.first_is_key, s.path.name
        assert s.frames == len(s.pts_ms), s.path.name
        stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(s.start))
        assert s.path.name.startswith(stem)
    for s in segs[1:]:  # every split falls on a multiple of SPLIT seconds
        assert (s.start % SPLIT) < 1.5 / FPS, (s.path.name, s.start)
    for a, b in itertools.pairwise(segs):
        gap = b.start - a.end
        assert 0 < gap < 2.0 / FPS, (a.path.name, b.path.name, gap)  # no frame lost or repeated
    total = sum(s.frames for s in segs)
    span = segs[-1].end - segs[0].start + 1 / FPS
    assert abs(total - FPS * span) <= 0.02 * FPS * span, (total, span)

    # Edges: sent at the edge, not seconds later.
    edges = [(t, m) for t, m in listener.messages if "detection" in m and "h264" not in m]
    assert [m["detection"] for _, m in edges] == [True, False, True, False]
    for _, m in edges:  # each with a snapshot of the moment, for the alert's photo
        assert set(m) == {"detection", "time", "jpeg"}, (m, p.log()[-3000:])
        with av.open(m["jpeg"]) as snap:
            picture = next(snap.decode(video=0))
            assert (picture.width, picture.height) == (320, 240)
    for (arrived, m), planned in zip(edges, [3.0, 9.0, 14.0, 15.0], strict=True):
        assert 0 <= m["time"] - (t0 + planned) < INTERVAL + EDGE_LATE, m
        assert arrived - (t0 + planned) <= INTERVAL + EDGE_LATE, (arrived - t0, planned)

    # Clips: around each edge with >= 2 s either side; the close pair (14, 15) is one clip.
    clips = [decode(Path(e["h264"]), e["time"]) for e in files if e.get("detection")]
    assert all(c.first_is_key and c.frames == len(c.pts_ms) for c in clips)
    assert len(clips) == 3, [c.path.name for c in clips]
    edge_times = [m["time"] for _, m in edges]
    for c, covered in zip(clips, [[edge_times[0]], [edge_times[1]], edge_times[2:]], strict=True):
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?\.h264", c.path.name)
        assert c.start <= covered[0] - 2.0 + 0.05, (c.path.name, covered)
        assert c.end >= covered[-1] + 2.0 - 1.0 / FPS, (c.path.name, covered)
        if len(covered) == 1:
            assert 4.0 - 1.0 / FPS <= c.duration <= 6.0 + 1.0 / FPS


def test_sigint_once_closes_the_segment(tmp_path: Path, listener: Listener,
                                        pancakes: list[Pancake]) -> None:
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(tmp_path), "--emit",
                               listener.name], tmp_path)
    wait_files(tmp_path, "*.h264", 1, 10)
    time.sleep(1.5)
    rc, took = p.stop(signal.SIGINT)
    assert rc == 0 and took < STOP_WITHIN, p.log()
    time.sleep(0.2)
    (path,) = tmp_path.glob("*.h264")
    assert re.fullmatch(r"\d{8}-\d{4}\.h264", path.name)  # a whole-minute split: no seconds
    assert listener.events()[-1]["h264"] == str(path)
    rec = decode(path, 0)
    assert rec.first_is_key and rec.frames == len(rec.pts_ms) >= FPS


def test_image_detect_gets_rgb_at_detect_size(tmp_path: Path, listener: Listener,
                                              pancakes: list[Pancake]) -> None:
    t0 = time.time() + 1.0
    custom = schedule_customize(tmp_path / "c.py", [(2.0, 4.0)], t0, image=True, size=(64, 48))
    p = run_pancake(pancakes, [*BASE, "--detect", "image", "--detect-resize", "64", "48",
                               "--customize", str(custom), "--emit", listener.name], tmp_path)
    while time.time() < t0 + 5.0:
        time.sleep(0.1)
    rc, _ = p.stop()
    assert rc == 0
    assert [m["detection"] for m in listener.events()] == [True, False], p.log()
    assert "raised" not in p.log()


def test_raising_then_hanging_detect_never_stops_recording(tmp_path: Path,
                                                           pancakes: list[Pancake]) -> None:
    t0 = time.time() + 1.0
    # Raises for the first two seconds, then detects, then hangs for good at 5 s.
    body = ("    t = time.time() - T0\n"
            "    if t < 2: raise RuntimeError('sensor not ready')\n"
            "    if t > 5: time.sleep(3600)\n")
    custom = schedule_customize(tmp_path / "c.py", [(3.0, 4.0)], t0, body=body)
    listener = Listener()
    try:
        p = run_pancake(pancakes, [*BASE, "--record-continuous", str(tmp_path),
                                   "--record-split", "2", "--detect", "no-image",
                                   "--detect-interval", "0.1", "--customize", str(custom),
                                   "--emit", listener.name], tmp_path)
        while time.time() < t0 + 10.0:
            time.sleep(0.1)
        rc, took = p.stop()
    finally:
        listener.close()
    assert rc == 0 and took < STOP_WITHIN, p.log()
    log = p.log()
    assert "RuntimeError: sensor not ready" in log
    assert log.count("sensor not ready") < 5  # rate-limited, not one line per call
    assert [m["detection"] for m in listener.events() if "h264" not in m] == [True, False]
    # Recording went on while detect() hung: segments cover the whole run.
    segs = sorted(tmp_path.glob("*.h264"))
    assert len(segs) >= 4
    last = decode(segs[-1], 0)
    assert last.first_is_key


def test_emit_to_nobody_and_file_source_that_ends(tmp_path: Path,
                                                  pancakes: list[Pancake]) -> None:
    # A 1.5 s file: each time it ends the source is reopened and recording goes on in a new
    # segment that decodes alone. Nobody listens on the socket: nothing breaks.
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        with av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi") as src:
            for i, frame in enumerate(src.decode(video=0)):
                if i == int(FPS * 1.5):
                    break
                frame.pts = None
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    p = run_pancake(pancakes, ["--source", str(video), "--fps", str(FPS), "--resolution", "160",
                               "120", "--record-continuous", str(rec_dir), "--emit",
                               "nobody-listens-here"], tmp_path)
    time.sleep(6.0)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    segs = sorted(rec_dir.glob("*.h264"))
    assert len(segs) >= 2, p.log()
    for s in segs:
        rec = decode(s, 0)
        assert rec.first_is_key and rec.frames == len(rec.pts_ms)
        with av.open(str(s), format="h264") as c:
            first = next(c.decode(video=0))
            assert (first.width, first.height) == (160, 120)
    assert p.log().count("not taking events") == 1  # said once per outage


@pytest.mark.parametrize(("args", "message"), [
    (["--record-detection", "edge", "."], "requires --detect"),
    (["--detect-resize", "64", "48"], "requires --detect"),
    (["--detect", "no-image", "--detect-resize", "64", "48"], "requires --detect image"),
    (["--record-detection", "sometimes", ".", "--detect", "no-image"], "not one of edge, all"),
    (["--record-continuous", "/nonexistent/h264"], "does not exist"),
    (["--record-continuous", "/etc/hostname"], "is not a directory"),
    (["--record-resize", "640", "480"], "requires --record-continuous"),
    (["--detect", "no-image", "--customize", "/nonexistent/customize.py"], "does not exist"),
    (["--detect", "no-image", "--customize", "NODETECT"], "does not define detect()"),
    (["--detect", "image", "--customize", "NOARGS"], "needs detect(bytes)"),
    (["--detect", "no-image", "--customize", "ONEARG"], "needs detect()"),
    (["--detect-interval", "0.2", "--detect", "no-image", "--customize", "ONEARG"], "needs detect()"),
    (["--fps", "zero"], "is not a number"),
    (["--resolution", "321", "240"], "even number"),
    (["--rotation", "45"], "invalid choice"),
    (["--port", "70000"], "not a port number"),
    (["--port", "BUSY"], "BUSYPORT"),
    (["--source", "/dev/video99"], "source device:/dev/video99: cannot open"),
    (["--source", "/nonexistent/movie.mp4"], "source file:/nonexistent/movie.mp4: cannot open"),
    # A camera URL's password never reaches the output.
    (["--source", "http://admin:hunter2@127.0.0.1:9/live.ts"],
     "source url:http://***@127.0.0.1:9/live.ts: cannot open"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str,
                                          pancakes: list[Pancake]) -> None:
    files = {"NODETECT": "x = 1\n", "NOARGS": "def detect():\n    return False\n",
             "ONEARG": "def detect(rgb):\n    return False\n"}
    for key, text in files.items():
        if key in args:
            path = tmp_path / f"{key.lower()}.py"
            path.write_text(text)
            args = [str(path) if a == key else a for a in args]
    if "BUSY" in args:  # a port another program holds
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = [port if a == "BUSY" else a for a in args]
        message = f"port {port}"
    if "--source" not in args:
        args = ["--source", "testsrc", *args]
    p = run_pancake(pancakes, args, tmp_path)
    rc = p.proc.wait(20)
    out = p.log()
    assert rc == 2, out
    assert message in out, out
    assert "Traceback" not in out
    assert "hunter2" not in out
    # One error line; a password written on the command line also gets its one warning.
    lines = out.strip().splitlines()
    assert len([li for li in lines if "pancake.py: error:" in li]) == 1, out
    assert all("pancake.py: error:" in li or " WARNING " in li for li in lines), out
    assert len(lines) == 1 + ("hunter2" in " ".join(args)), out


def test_segment_events_survive_restart_without_overwrite(tmp_path: Path,
                                                          pancakes: list[Pancake]) -> None:
    # Two runs in the same minute with a whole-minute split: the second never overwrites.
    for _ in range(2):
        p = run_pancake(pancakes, [*BASE, "--record-continuous", str(tmp_path)], tmp_path)
        wait_files(tmp_path, "*.h264", len(pancakes), 10)
        time.sleep(1.0)
        assert p.stop()[0] == 0
    names = sorted(f.name for f in tmp_path.glob("*.h264"))
    assert len(names) == 2
    # YYYYMMDD-HHMM[-N].h264: the minute, then the suffix a reused name gets.
    parts = [re.fullmatch(r"(\d{8}-\d{4})(?:-(\d+))?\.h264", n) for n in names]
    assert all(parts), names
    stems = {m.group(1) for m in parts if m}
    if len(stems) == 1:  # same minute: the second got the -1 suffix
        assert {m.group(2) for m in parts if m} == {None, "1"}, names
    assert all(decode(tmp_path / n, 0).first_is_key for n in names)

