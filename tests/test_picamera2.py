"""The picamera2 backend, run against tests/fake_picamera2: a stand-in following picamera2's API
(there is no Pi and no camera here; see the stand-in's docstring for what it imitates)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

from raspberry_pancake.recorder.config import RecorderConfig, parse
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.frames import Frame
from raspberry_pancake.recorder.pipeline import Pipeline
from raspberry_pancake.recorder.recording.splits import next_boundary
from raspberry_pancake.recorder.sources.annotate import render
from raspberry_pancake.recorder.sources.base import SourceError
from raspberry_pancake.recorder.sources.picam import Picamera2Camera, StreamPlan, yuv420_planes
from raspberry_pancake.shared.events import Event

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_picamera2"
FPS = 10
SPLIT = 3.0
MARGIN = 4  # raspberry_pancake.recorder.sources.annotate's margin around the clock


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(FAKE))
    import picamera2

    assert "fake_picamera2" in str(picamera2.__file__)
    yield picamera2
    picamera2.plug(0)


class Events(Emitter):
    """An emitter that keeps what the recorder sends."""

    def __init__(self) -> None:
        super().__init__(None)
        self.events: list[Event] = []

    def emit(self, event: Event) -> bool:
        self.events.append(event)
        return True


def config(tmp_path: Path, *extra: str) -> RecorderConfig:
    return parse(["--source", "picamera2", "--resolution", "352", "288", "--fps", str(FPS),
                  "--record-continuous", str(tmp_path), *extra])


def clock_match(luma: np.ndarray, wall: float, text_height: int = 24) -> float:
    """How well the burned-in clock for `wall` matches the picture: the share of text pixels
    that are bright and outline pixels that are dark, in the top-left band."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(wall)))
    text, edge = render(stamp, text_height)
    h = min(text.shape[0], luma.shape[0] - MARGIN)
    w = min(text.shape[1], luma.shape[1] - MARGIN)  # clipped at the right edge, like the stamp
    text, edge = text[:h, :w], edge[:h, :w]
    box = luma[MARGIN:MARGIN + h, MARGIN:MARGIN + w].astype(int)
    return float(((box[text] > 180).sum() + (box[edge] < 70).sum()) / (text.sum() + edge.sum()))


def best_clock_match(luma: np.ndarray, wall: float) -> float:
    return max(clock_match(luma, wall + d) for d in (-1, 0, 1))


def luma_of(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray()[:frame.height]


def decode_all(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path), format="h264") as container:
        return list(container.decode(video=0))


def run_recorder(cfg: RecorderConfig, seconds: float,
                 during: list[Frame] | None = None) -> tuple[Events, Picamera2Camera, Pipeline]:
    camera = Picamera2Camera(0, cfg)
    camera.open()
    events = Events()
    recorder = Pipeline(cfg, camera, events)
    recorder.start()
    try:
        end = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < end:
            frame = recorder.hub.wait_newer(seq, timeout=1.0)
            if frame is not None:
                seq = frame.seq
                if during is not None and len(during) < 100:
                    during.append(frame)
    finally:
        recorder.stop()
    return events, camera, recorder


def test_continuous_recording_splits_on_the_clock_and_carries_it(
        tmp_path: Path, fake_picamera2: ModuleType) -> None:
    # Recording larger than the frames: main 640x480 is encoded, lores 352x288 (stride padded
    # to 384 by the stand-in, as on a Pi) feeds the hub.
    cfg = config(tmp_path, "--record-split", str(SPLIT), "--record-resize", "640", "480")
    frames: list[Frame] = []
    events, camera, _ = run_recorder(cfg, 7.5, frames)
    assert camera.name == "picamera2:0 imx708"

    # Frames reach the hub at the frame size, every one, with the clock burned in upright.
    assert frames and all((f.image.width, f.image.height) == (352, 288) for f in frames)
    assert all(f.image.format.name == "yuv420p" for f in frames)
    assert camera.frames >= 0.8 * FPS * 7.5
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    for frame in frames[::10]:
        assert clock_match(luma_of(frame.image), frame.wall) > 0.99
    # Capture times come from the sensor timestamps: monotonic, about 1/fps apart.
    gaps = np.diff([f.mono for f in frames]) / np.diff([f.seq for f in frames])
    assert (gaps > 0).all() and abs(float(np.median(gaps)) - 1 / FPS) < 0.02

    segments = [e for e in events.events if "h264" in e]
    assert len(segments) >= 3, segments
    files = sorted(tmp_path.glob("*.h264"))
    assert [Path(e["h264"]) for e in segments] == files
    for i, event in enumerate(segments):
        path = Path(event["h264"])
        pts_lines = Path(event["pts"]).read_text().splitlines()[1:]
        decoded = decode_all(path)
        # Every segment decodes alone from its first frame: SPS/PPS + IDR first.
        assert decoded and decoded[0].key_frame
        assert len(decoded) == len(pts_lines)
        assert (decoded[0].width, decoded[0].height) == (640, 480)
        # The recording carries the clock of its first frame (lossy: most pixels agree).
        assert best_clock_match(luma_of(decoded[0]), event["time"]) > 0.9
        if i == 0:
            continue
        # Boundaries fall at split times: the first keyframe at or after a multiple of SPLIT,
        # and keyframes come every second.
        start = event["time"]
        boundary = next_boundary(start - 1.5, SPLIT)  # the multiple at or just before start
        if boundary > start:
            boundary -= SPLIT
        # Keyframes are a second apart; a little more allows for a loaded test machine.
        assert 0 <= start - boundary < 1.5, (start, boundary)
        if i < len(segments) - 1:
            duration = float(pts_lines[-1]) / 1000
            assert SPLIT - 1.5 < duration < SPLIT + 1.5


def test_frames_from_main_when_sizes_match_and_half_turn_flips(
        tmp_path: Path, fake_picamera2: ModuleType) -> None:
    cfg = config(tmp_path, "--rotation", "180")
    plan = StreamPlan.of(cfg)
    assert (plan.lores, plan.encode, plan.frames, plan.hflip, plan.vflip) == (
        None, "main", "main", True, True)
    frames: list[Frame] = []
    events, _, _ = run_recorder(cfg, 2.5, frames)
    assert frames and all((f.image.width, f.image.height) == (352, 288) for f in frames)
    # One stream for both: the clock stamped into the encoder's buffer is the one viewers see.
    assert clock_match(luma_of(frames[-1].image), frames[-1].wall) > 0.99
    (event,) = [e for e in events.events if "h264" in e]
    decoded = decode_all(Path(event["h264"]))
    assert decoded[0].key_frame and (decoded[0].width, decoded[0].height) == (352, 288)
    assert best_clock_match(luma_of(decoded[-1]), event["time"] + len(decoded) / FPS) > 0.9


def test_quarter_turns_turn_frames_not_recordings(tmp_path: Path, fake_picamera2: ModuleType) -> None:
    cfg = config(tmp_path, "--rotation", "90")
    plan = StreamPlan.of(cfg)
    # The sensor reads 352x288 for both streams; frames are turned to 288x352 in software.
    assert (plan.main.width, plan.main.height, plan.frames, plan.turn) == (352, 288, "lores", 90)
    frames: list[Frame] = []
    events, _, _ = run_recorder(cfg, 2.0, frames)
    assert frames and all((f.image.width, f.image.height) == (288, 352) for f in frames)
    assert clock_match(luma_of(frames[-1].image), frames[-1].wall) > 0.99  # stamped after turning
    (event,) = [e for e in events.events if "h264" in e]
    assert (decode_all(Path(event["h264"]))[0].width) == 352


def test_a_camera_that_stops_is_reopened_into_a_new_segment(
        tmp_path: Path, fake_picamera2: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raspberry_pancake.recorder.sources.picam")
    cfg = config(tmp_path, "--record-split", "3600")
    camera = Picamera2Camera(0, cfg)
    camera.open()
    events = Events()
    recorder = Pipeline(cfg, camera, events)
    recorder.start()
    try:
        assert recorder.hub.wait_newer(0, timeout=5) is not None
        time.sleep(1.0)
        fake_picamera2.unplug(0)
        deadline = time.monotonic() + 10
        while camera.outages == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert camera.outages == 1
        time.sleep(2.0)  # several reopen attempts fail while it is unplugged
        stalled_at = camera.frames
        fake_picamera2.plug(0)
        deadline = time.monotonic() + 10
        while camera.frames < stalled_at + 2 * FPS and time.monotonic() < deadline:
            time.sleep(0.1)
        assert camera.frames >= stalled_at + 2 * FPS
    finally:
        recorder.stop()
    warnings = [r for r in caplog.records if "reopening" in r.getMessage()]
    assert len(warnings) == 1  # logged once per outage, not once per attempt
    assert any("is back after" in r.getMessage() for r in caplog.records)
    segments = [e for e in events.events if "h264" in e]
    # split 3600: only the outage can have started the second segment.
    assert len(segments) == 2, segments
    for event in segments:
        decoded = decode_all(Path(event["h264"]))
        assert decoded and decoded[0].key_frame
    assert camera.outages == 1


def test_pi5_records_with_our_encoder_and_an_idr_at_each_split(
        tmp_path: Path, fake_picamera2: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # What picamera2.encoders does on a Pi 5, where /dev/video11 is no VideoCore encoder.
    encoders = sys.modules["picamera2.encoders"]
    monkeypatch.setattr(encoders, "H264Encoder", encoders.LibavH264Encoder)
    cfg = config(tmp_path, "--record-split", "2")
    frames: list[Frame] = []
    events, _, recorder = run_recorder(cfg, 5.0, frames)
    assert recorder.encoder is not None and not recorder.encoder.is_alive()
    segments = [e for e in events.events if "h264" in e]
    assert len(segments) >= 2, segments
    for i, event in enumerate(segments):
        decoded = decode_all(Path(event["h264"]))
        assert decoded and decoded[0].key_frame
        assert len(decoded) == len(Path(event["pts"]).read_text().splitlines()) - 1
        assert best_clock_match(luma_of(decoded[0]), event["time"]) > 0.9
        if i:  # forced IDR: the segment starts on the first frame at or after the split time
            start = event["time"]
            boundary = next_boundary(start - 2.0 + 1e-3, 2.0)
            assert 0 <= start - boundary < 2.5 / FPS, (start, boundary)


def test_open_reports_a_missing_camera_as_a_source_error(
        tmp_path: Path, fake_picamera2: ModuleType) -> None:
    with pytest.raises(SourceError, match=r"^source picamera2:3: no such camera \(1 attached\)"):
        Picamera2Camera(3, config(tmp_path)).open()
    cfg = parse(["--source", "picamera2", "--resolution", "640", "240",
                 "--record-continuous", str(tmp_path), "--record-resize", "320", "480"])
    with pytest.raises(SourceError, match="one must fit inside the other"):
        Picamera2Camera(0, cfg).open()
    # A camera already taken (by another process, on a Pi) cannot be opened twice.
    first = Picamera2Camera(0, config(tmp_path))
    first.open()
    try:
        with pytest.raises(SourceError, match=r"^source picamera2:0 imx708: cannot open"):
            Picamera2Camera(0, config(tmp_path)).open()
    finally:
        first.stop()


def test_yuv420_planes_follow_the_stride() -> None:
    width, height, stride = 6, 4, 8
    buf = np.arange(stride * height * 3 // 2, dtype=np.uint8).reshape(height * 3 // 2, stride)
    y, u, v = yuv420_planes(buf, width, height)
    assert y.shape == (4, 6) and u.shape == (2, 3) and v.shape == (2, 3)
    assert y[1, 0] == stride and u[0, 0] == stride * height and u[1, 0] == stride * height + 4
    assert v[0, 0] == stride * height + stride // 2 * height // 2
    y[0, 0] = 255
    assert buf[0, 0] == 255  # views, not copies: the stamp lands in the camera's buffer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pancake(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), str(REPO)]))
    return subprocess.Popen([sys.executable, str(REPO / "pancake.py"), "--bind", "127.0.0.1",
                             *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_pancake_process_records_from_picamera2(tmp_path: Path) -> None:
    proc = pancake(["--source", "picamera2", "--port", str(free_port()), "--fps", str(FPS),
                    "--resolution", "352", "288", "--record-continuous", str(tmp_path),
                    "--record-split", "3"])
    try:
        time.sleep(5.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "picamera2:0 imx708" in out + err
    files = sorted(tmp_path.glob("*.h264"))
    assert len(files) >= 2
    for path in files:
        decoded = decode_all(path)
        assert decoded and decoded[0].key_frame


def test_pancake_process_without_that_camera_exits_2(tmp_path: Path) -> None:
    proc = pancake(["--source", "picamera2:1", "--port", str(free_port())])
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "pancake.py: error: source picamera2:1: no such camera (1 attached)"]
