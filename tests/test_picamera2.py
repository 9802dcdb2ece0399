"""The picamera2 backend, run against tests/fake_picamera2: a stand-in following picamera2's API
(there is no Pi and no camera here; see the stand-in's docstring for what it imitates)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

from raspberry_pancake.recorder.config import RecorderConfig, parse
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.frames import Frame, Packet
from raspberry_pancake.recorder.pipeline import Pipeline
from raspberry_pancake.recorder.recording.splits import next_boundary
from raspberry_pancake.recorder.sources.annotate import layout, render, stamp_size
from raspberry_pancake.recorder.sources.base import Outputs, SourceError, SourceSpec
from raspberry_pancake.recorder.sources.choose import resolve
from raspberry_pancake.recorder.sources.picam import (
    STOP_TIMEOUT,
    Picamera2Camera,
    StreamPlan,
    csi_camera_index,
    yuv420_planes,
)
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
    picamera2.reset()


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
    that are bright and outline pixels that are dark, in the top-left band (in the form and
    size annotate chooses for a picture that narrow)."""
    fit = layout(luma.shape[1], luma.shape[0], text_height)
    assert fit is not None
    form, scale = fit
    stamp = time.strftime(form, time.localtime(int(wall)))
    text, edge = render(stamp, stamp_size(0, scale)[1])
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
    # The first segment: a run that straddles a quarter hour has a second one.
    event = next(e for e in events.events if "h264" in e)
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
    # The first segment: a run that straddles a quarter hour has a second one.
    event = next(e for e in events.events if "h264" in e)
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
    # split 3600: besides the hour's own boundary (a run that straddles :00), only the outage
    # can have started a segment. A message's time is its segment's start.
    on_the_hour = [e for e in segments[1:] if e["time"] % 3600 < 1.0]
    assert len(segments) - len(on_the_hour) == 2, segments
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


# --- the faults the faithful stand-in shows (issue 17) ----------------------------------------


def _purge_standin() -> None:
    for name in list(sys.modules):
        if name in ("picamera2", "libcamera") or name.startswith("picamera2."):
            del sys.modules[name]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ModuleType]]:
    """load(version=, cameras=): a fresh stand-in playing that picamera2 version (its metadata,
    as python3-picamera2 installs it) with those cameras ($FAKE_PICAMERA2_CAMERAS)."""

    def load(version: str | None = None, cameras: str | None = None) -> ModuleType:
        if cameras is not None:
            monkeypatch.setenv("FAKE_PICAMERA2_CAMERAS", cameras)
        monkeypatch.syspath_prepend(str(FAKE))
        if version is not None:
            meta = tmp_path_factory.mktemp("meta")
            dist = meta / f"picamera2-{version}.dist-info"
            dist.mkdir()
            (dist / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: picamera2\nVersion: {version}\n")
            monkeypatch.syspath_prepend(str(meta))  # before the stand-in's own 0.3.33
        _purge_standin()
        import picamera2

        assert "fake_picamera2" in str(picamera2.__file__)
        return picamera2

    yield load
    _purge_standin()


class Collect:
    """Outputs for a camera run without the pipeline; `fail_at`: that frame's sink raises."""

    def __init__(self, fail_at: int = 0) -> None:
        self.frames: list[Frame] = []
        self.packets: list[Packet] = []
        self.calls = 0
        self._fail_at = fail_at

    def frame(self, frame: Frame) -> None:
        self.calls += 1
        if self.calls == self._fail_at:
            raise TypeError("a fault downstream")
        self.frames.append(frame)

    def packet(self, packet: Packet) -> None:
        self.packets.append(packet)

    def outputs(self) -> Outputs:
        return Outputs(self.frame, self.packet)


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_within(camera: Picamera2Camera, seconds: float) -> bool:
    """Picamera2Camera.stop() in a thread: True if it returned within `seconds`."""
    stopper = threading.Thread(target=camera.stop, name="test-stop", daemon=True)
    stopper.start()
    stopper.join(seconds)
    return not stopper.is_alive()


# stop() may spend STOP_TIMEOUT on each of picamera2's three calls, plus the joins.
STOP_BOUND = 3 * STOP_TIMEOUT + 10


def test_an_exception_escaping_the_callback_drops_one_frame_not_the_camera(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    standin()
    camera = Picamera2Camera(0, config(tmp_path, "--record-split", "3600"))
    camera.open()
    sink = Collect(fail_at=5)
    camera.start(sink.outputs())
    try:
        # picamera2's event loop thread would die of it and no frame would come after.
        assert wait_for(lambda: len(sink.frames) >= 5 + 2 * FPS, 15), len(sink.frames)
        assert camera.outages == 0
    finally:
        assert stop_within(camera, STOP_BOUND)
    assert not camera.stop_failed
    assert any("frame dropped: TypeError" in r.getMessage() for r in caplog.records)
    assert sink.packets and sink.packets[0].keyframe


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # picamera2's loop dies
def test_stop_returns_when_picamera2s_event_loop_has_died(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    picamera2 = standin()
    camera = Picamera2Camera(0, config(tmp_path, "--record-split", "3600"))
    camera.open()
    sink = Collect()
    camera.start(sink.outputs())
    assert wait_for(lambda: len(sink.frames) >= FPS, 10)
    picamera2.break_event_loop(0)
    time.sleep(0.5)
    # picamera2's stop() now waits for ever on the dead loop; ours gives up, and close() (which
    # joins the dead thread and stops the camera directly) lets the camera go.
    assert stop_within(camera, STOP_BOUND)
    assert camera.stop_failed  # main exits with EXIT_CAMERA_STUCK
    assert any("stop() did not return" in r.getMessage() for r in caplog.records)
    again = Picamera2Camera(0, config(tmp_path))
    again.open()  # released: not "busy"
    again.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # picamera2's loop dies
def test_a_dead_event_loop_is_an_outage_the_camera_comes_back_from(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raspberry_pancake.recorder.sources.picam")
    picamera2 = standin()
    camera = Picamera2Camera(0, config(tmp_path, "--record-split", "3600"))
    camera.open()
    sink = Collect()
    camera.start(sink.outputs())
    try:
        assert wait_for(lambda: len(sink.frames) >= FPS, 10)
        picamera2.break_event_loop(0)
        assert wait_for(lambda: camera.outages == 1, 10)
        resumed = len(sink.frames)
        assert wait_for(lambda: len(sink.frames) >= resumed + 2 * FPS, STOP_BOUND + 10)
    finally:
        assert stop_within(camera, STOP_BOUND)
    assert camera.outages == 1
    assert any("is back after" in r.getMessage() for r in caplog.records)


def test_auto_skips_usb_cameras_that_picamera2_lists(standin: Callable[..., ModuleType]) -> None:
    picamera2 = standin(cameras="usb:C920")
    (info,) = picamera2.Picamera2.global_camera_info()
    assert "/usb" in info["Id"]  # picamera2 lists it
    assert csi_camera_index() is None
    assert resolve("auto").kind != "picamera2"  # V4L2 reads its YUYV and MJPEG
    picamera2 = standin(cameras="usb:C920,imx708")
    assert [c["Model"] for c in picamera2.Picamera2.global_camera_info()] == ["imx708", "C920"]
    assert csi_camera_index() == "0"
    assert resolve("auto") == SourceSpec("picamera2", "0")


def test_a_usb_camera_through_picamera2_is_refused_in_one_line(
        tmp_path: Path, standin: Callable[..., ModuleType]) -> None:
    # libcamera's UVC pipeline gives YUYV; picamera2 reports it without an error, and its
    # start_encoder then fails on the missing FrameDurationLimits (KeyError).
    standin(cameras="usb:C920")
    camera = Picamera2Camera(0, config(tmp_path))
    with pytest.raises(SourceError, match=r"^source picamera2:0 C920: the camera gives YUYV "
                                          r"frames, not YUV420: it is a USB camera"):
        camera.open()
    Picamera2Camera(0, config(tmp_path)).stop()


def open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_reopening_a_missing_camera_leaks_no_file_descriptor(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="raspberry_pancake.recorder.sources.picam")
    picamera2 = standin()
    cfg = parse(["--source", "picamera2", "--resolution", "352", "288", "--fps", str(FPS)])
    camera = Picamera2Camera(0, cfg)
    camera.open()
    sink = Collect()
    camera.start(sink.outputs())

    def attempts() -> int:  # each failed reopen is one debug line
        return sum(r.levelno == logging.DEBUG and r.getMessage().startswith("source picamera2:0")
                   for r in caplog.records)

    try:
        assert wait_for(lambda: len(sink.frames) >= FPS, 10)
        picamera2.unplug(0, listed=False)  # libcamera lists it no more
        assert wait_for(lambda: attempts() >= 1, 15)
        before, tried = open_fds(), attempts()
        # Backoff 0.5, 1, 2, 4 s: at least three more attempts in 12 s.
        assert wait_for(lambda: attempts() >= tried + 3, 20)
        after = open_fds()
    finally:
        assert stop_within(camera, STOP_BOUND)
    assert after <= before, (before, after)


def test_a_listed_camera_that_gives_no_frame_is_still_down(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    # A CSI camera whose cable is pulled stays listed and opens: each reopen "works".
    caplog.set_level(logging.DEBUG, logger="raspberry_pancake.recorder.sources.picam")
    picamera2 = standin()
    camera = Picamera2Camera(0, config(tmp_path, "--record-split", "3600"))
    camera.open()
    sink = Collect()
    camera.start(sink.outputs())
    try:
        assert wait_for(lambda: len(sink.frames) >= FPS, 10)
        picamera2.unplug(0)
        assert picamera2.Picamera2.global_camera_info()  # still listed
        assert wait_for(lambda: sum("no frame in" in r.getMessage()
                                    for r in caplog.records) >= 2, 40)
    finally:
        assert stop_within(camera, STOP_BOUND)
    assert camera.outages == 1
    assert not any("is back" in r.getMessage() for r in caplog.records)
    assert sum("reopening" in r.getMessage() for r in caplog.records) == 1


def test_larger_than_1080p_is_refused_where_the_encoder_is_the_videocore(
        tmp_path: Path, standin: Callable[..., ModuleType]) -> None:
    standin()
    big = config(tmp_path, "--record-resize", "2304", "1296")
    with pytest.raises(SourceError, match=r"^source picamera2:0 imx708: the hardware H.264 "
                                          r"encoder of this Pi records at most 1920x1080, not 2304x1296"):
        Picamera2Camera(0, big).open()
    portrait = Picamera2Camera(0, config(tmp_path, "--record-resize", "1080", "1920"))
    portrait.open()  # 1080 across: within the encoder's limit
    portrait.stop()


def test_pancake_process_refuses_a_recording_larger_than_1080p(tmp_path: Path) -> None:
    proc = pancake(["--source", "picamera2", "--port", str(free_port()), "--resolution", "2304",
                    "1296", "--record-continuous", str(tmp_path)])
    try:
        _out, err = proc.communicate(timeout=30)  # not a reopen loop that never ends
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "pancake.py: error: source picamera2:0 imx708: the hardware H.264 encoder of this Pi "
        "records at most 1920x1080, not 2304x1296: lower --resolution or --record-resize"]


def hardware_segments(tmp_path: Path, seconds: float) -> list[Event]:
    cfg = config(tmp_path, "--record-split", "2")
    events, _, _ = run_recorder(cfg, seconds)
    return [e for e in events.events if "h264" in e]


def test_hardware_segments_start_at_the_split_time_with_force_key_frame(
        tmp_path: Path, standin: Callable[..., ModuleType]) -> None:
    picamera2 = standin("0.3.33")
    assert hasattr(sys.modules["picamera2.encoders"].H264Encoder, "force_key_frame")
    assert picamera2 is sys.modules["picamera2"]
    segments = hardware_segments(tmp_path, 7.5)
    assert len(segments) >= 3, segments
    for event in segments[1:]:
        decoded = decode_all(Path(event["h264"]))
        assert decoded and decoded[0].key_frame
        start = event["time"]
        boundary = next_boundary(start - 2.0 + 1e-3, 2.0)
        # Without an IDR asked for, the next keyframe comes up to a second later.
        assert 0 <= start - boundary < 2.5 / FPS, (start, boundary)


def test_older_picamera2_without_force_key_frame_and_with_three_argument_outputs(
        tmp_path: Path, standin: Callable[..., ModuleType]) -> None:
    standin("0.3.22")
    assert not hasattr(sys.modules["picamera2.encoders"].H264Encoder, "force_key_frame")
    segments = hardware_segments(tmp_path, 5.0)
    assert len(segments) >= 2, segments
    for event in segments:
        decoded = decode_all(Path(event["h264"]))
        assert decoded and decoded[0].key_frame
        assert len(decoded) == len(Path(event["pts"]).read_text().splitlines()) - 1


def test_no_raw_stream_is_configured(tmp_path: Path, standin: Callable[..., ModuleType]) -> None:
    standin()
    camera = Picamera2Camera(0, config(tmp_path))
    camera.open()
    try:
        picam = camera._picam
        assert picam.camera_configuration()["raw"] is None
        assert picam.raw_buffers_allocated == 0
    finally:
        camera.stop()


def test_picamera2_0_3_32_is_named_at_start_and_loses_the_recorded_clock(
        tmp_path: Path, standin: Callable[..., ModuleType],
        caplog: pytest.LogCaptureFixture) -> None:
    standin("0.3.32")
    cfg = config(tmp_path, "--record-split", "3600")
    frames: list[Frame] = []
    events, _, _ = run_recorder(cfg, 2.5, frames)
    (warning,) = [r for r in caplog.records if "picamera2 0.3.32" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "0.3.33" in warning.getMessage()
    # What the warning is about: viewers see the clock, the hardware encoder did not get it.
    assert clock_match(luma_of(frames[-1].image), frames[-1].wall) > 0.99
    # The first segment: a run that straddles a quarter hour has a second one.
    event = next(e for e in events.events if "h264" in e)
    assert best_clock_match(luma_of(decode_all(Path(event["h264"]))[0]), event["time"]) < 0.8
