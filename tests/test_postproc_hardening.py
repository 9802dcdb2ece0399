"""postproc against hostile datagrams (fuzzed), racing retention, and stages that die."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raspberry_pancake.postproc.convert import Converter, ConvertSettings, Job
from raspberry_pancake.postproc.receiver import (
    Accepted,
    PathPolicy,
    Receiver,
    Rejected,
    accept,
    open_socket,
)
from raspberry_pancake.postproc.supervise import StageThread, Supervisor, describe
from raspberry_pancake.postproc.upload.worker import UploadWorker
from raspberry_pancake.shared.events import TIME_MAX, TIME_MIN, EventError, decode
from tests.postproc_servers import (
    FakeBotApi,
    PostprocProcess,
    bot_api,
    catalogued,
    h264_bytes,
    make_recording,
    mp4_packets,
    open_catalog,
    send_event,
    start_postproc,
    wait_for,
    wait_socket,
    write_sidecar,
)

# Reproducible in CI: the same examples every run, nothing remembered between runs.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
DIGITS = "1" * 5000
UID = 1000


def crafted(h264_dir: Path) -> list[bytes]:
    """The issue's 28 datagrams; 15 of them killed the receiver before the fix."""
    clip = str(h264_dir / "20240101-0000.h264")
    texts = [
        # Killers: numbers json.loads refuses, or that validate let through to datetime.
        f'{{"detection": true, "time": {DIGITS}}}',
        f'{{"detection": {DIGITS}}}',
        '{"detection": true, "time": NaN}',
        '{"detection": true, "time": Infinity}',
        '{"detection": true, "time": -Infinity}',
        '{"detection": true, "time": 1e400}',
        '{"detection": true, "time": 1e300}',
        '{"detection": true, "time": -1e300}',
        '{"detection": true, "time": 1e20}',
        f'{{"detection": true, "time": {DIGITS}.5}}',
        f'{{"disk": "low", "free": {"9" * 400}, "dir": "/"}}',
        '{"h264": "/\\ud800.h264"}',
        f'{{"h264": "{h264_dir}/\\ud800.h264"}}',
        '{"detection": true, "jpeg": "/tmp/\\ud800.jpg"}',
        f'{{"h264": "{clip}", "jpeg": "{h264_dir}/\\udfff.jpg"}}',
        # Dropped already before the fix.
        '{"detection": true, "time": "noon"}',
        '{"detection": "yes"}',
        '{"detection": 1}',
        '{"h264": 5}',
        '{"h264": "relative.h264"}',
        '{"h264": "/a\\u0000.h264"}',
        '{"disk": "low", "free": "lots", "dir": "/"}',
        '{"disk": "low", "free": -1, "dir": "/"}',
        '{"disk": "low", "free": true, "dir": "/"}',
        '{"time": 1719158711}',
        '[]',
        '"text"',
        '{"h264": null}',
    ]
    return [t.encode() for t in texts]


def test_crafted_datagrams_are_event_errors(tmp_path: Path) -> None:
    datagrams = crafted(tmp_path)
    assert len(datagrams) == 28
    policy = PathPolicy([tmp_path])
    for data in datagrams:
        with pytest.raises((EventError, Rejected)):
            accept(data, UID, frozenset({UID}), policy)
    # Where it says why: the reason is the drop's log line.
    for data, reason in [(datagrams[0], "number too long"),
                         (datagrams[2], "time: not a finite number"),
                         (datagrams[8], "time: out of range"),
                         (datagrams[10], "free: out of range"),
                         (datagrams[11], "h264: not valid Unicode")]:
        with pytest.raises(EventError, match=reason):
            decode(data)


def test_times_at_the_edges_of_the_range() -> None:
    for t in (TIME_MIN, TIME_MAX, 1719158711.25):
        assert decode(json.dumps({"detection": True, "time": t}).encode())["time"] == t
    for t in (TIME_MIN - 1, TIME_MAX + 0.5, 0, -5):
        with pytest.raises(EventError, match="time: out of range"):
            decode(json.dumps({"detection": True, "time": t}).encode())


def test_text_fields_with_control_characters_or_too_long_are_dropped() -> None:
    forged = "/h264/x.h264\n2026-12-01 12:00:00,000 INFO converter postproc: all fine"
    for event, reason in [({"h264": forged}, "h264: control character"),
                          ({"detection": True, "jpeg": "/a\x1b[2J.jpg"}, "jpeg: control"),
                          ({"disk": "low", "free": 1, "dir": "/" + "d" * 5000},
                           "dir: longer than 4096 characters")]:
        with pytest.raises(EventError, match=reason):
            decode(json.dumps(event).encode())


def test_receiver_restarted_after_a_bug_keeps_its_socket() -> None:
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    sock = open_socket(name)
    got: list[bool] = []

    def handle(acc: Accepted) -> None:
        got.append(acc.event["detection"])
        if len(got) == 1:
            raise AttributeError("a bug in the handler")

    stop = threading.Event()
    receiver = Receiver(sock, frozenset({os.getuid()}), PathPolicy([]), handle, stop)
    supervisor = Supervisor(stop)
    supervisor.watch(receiver.thread)
    receiver.start()
    try:
        send_event(name, {"detection": True})
        wait_for(lambda: not receiver.thread.is_alive(), 10)
        assert supervisor.check() and receiver.thread.runs == 2
        send_event(name, {"detection": False})
        wait_for(lambda: got == [True, False], 10)
    finally:
        stop.set()
    assert receiver.join(5)
    assert sock.fileno() == -1, "closed once stopped"


# ---------------------------------------------------------------- fuzzing decode and accept

KEYS = ["h264", "detection", "time", "jpeg", "pts", "disk", "free", "dir", "camera", "x"]
# Characters of every category, lone surrogates included (JSON spells them \udXXX).
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=20)


def _json_values(base: Path) -> st.SearchStrategy[str]:
    """JSON text for one value: the kinds the issue found, and anything else."""
    paths = st.builds(lambda name, ext: json.dumps(f"{base}/{name}{ext}"),
                      ANY_TEXT, st.sampled_from([".h264", ".jpg", ".pts", ""]))
    return st.one_of(
        st.sampled_from(["true", "false", "null", "NaN", "Infinity", "-Infinity", "1e400",
                         "-1e400", "1e300", "1e20", "0", "-0.0", "[]", "{}"]),
        st.integers().map(str),
        st.integers(min_value=4200, max_value=6000).map(lambda n: "7" * n),
        st.integers(min_value=300, max_value=5000).map(lambda n: "3" * n + ".25"),
        st.floats(allow_nan=True, allow_infinity=True).map(repr).map(
            lambda r: {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(r, r)),
        st.floats(min_value=TIME_MIN, max_value=TIME_MAX).map(repr),
        ANY_TEXT.map(json.dumps),
        paths,
    )


def datagrams(base: Path) -> st.SearchStrategy[bytes]:
    objects = st.dictionaries(st.sampled_from(KEYS), _json_values(base), max_size=5).map(
        lambda d: ("{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}").encode())
    return st.one_of(objects, objects.map(lambda b: b[:-1]), st.binary(max_size=200))


def test_fuzz_decode_gives_an_event_or_an_event_error(tmp_path: Path) -> None:
    @FUZZ
    @given(datagrams(tmp_path))
    def check(data: bytes) -> None:
        try:
            event = decode(data)
        except EventError:
            return
        if "time" in event:
            assert TIME_MIN <= event["time"] <= TIME_MAX
            dt.datetime.fromtimestamp(event["time"])
        if "free" in event:
            assert event["free"] / 1e6 >= 0
        for key in ("h264", "jpeg", "pts", "dir", "disk"):
            if key in event:
                event[key].encode("utf-8")  # type: ignore[literal-required]

    check()


def test_fuzz_accept_gives_accepted_or_a_reason(tmp_path: Path) -> None:
    (tmp_path / "20240101-0000.h264").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    policy = PathPolicy([tmp_path])

    @FUZZ
    @given(datagrams(tmp_path))
    def check(data: bytes) -> None:
        try:
            acc = accept(data, UID, frozenset({UID}), policy)
        except (EventError, Rejected):
            return
        assert isinstance(acc, Accepted)
        assert acc.h264 is None or acc.h264.is_file()

    check()


# ---------------------------------------------------------------- the real daemon, fuzzed

@pytest.fixture
def api() -> Iterator[FakeBotApi]:
    with bot_api() as server:
        yield server


def _start(tmp_path: Path, api: FakeBotApi) -> tuple[PostprocProcess, str, Path, Path]:
    h264, mp4 = tmp_path / "h264", tmp_path / "mp4"
    h264.mkdir()
    mp4.mkdir()
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                            "--notify-telegram", "env:PP_TOKEN", "42",
                            "--telegram-api-url", api.base_url],
                           tmp_path / "postproc.log", env={"PP_TOKEN": "55:FUZZ-token"})
    wait_socket(name)
    return proc, name, h264, mp4


def test_daemon_survives_a_stream_of_hostile_datagrams(tmp_path: Path, api: FakeBotApi) -> None:
    proc, name, h264, mp4 = _start(tmp_path, api)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for data in crafted(h264):
                s.sendto(data, "\0" + name)

            @settings(max_examples=400, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(datagrams(h264))
            def send(data: bytes) -> None:
                # Blocking: waits while the receiver's queue is full, so nothing is lost here.
                s.sendto(data, "\0" + name)

            send()
            edge = dt.datetime(2024, 6, 23, 18, 5, 11)
            good = json.dumps({"detection": True, "time": edge.timestamp()}).encode()
            wanted = f"Detection at {edge:%Y-%m-%d %H:%M:%S}"

            def alerted() -> bool:
                # Sent again until it arrives: the fuzz's own alerts may fill the queue.
                s.sendto(good, "\0" + name)
                return any(c.fields.get("text") == wanted for c in api.calls_to("sendMessage"))

            wait_for(alerted, 60, interval=1.0)
            clip = h264 / "20240623-180511.h264"
            clip.write_bytes(h264_bytes(12))
            s.sendto(json.dumps({"h264": str(clip)}).encode(), "\0" + name)
            wait_for((mp4 / "20240623-180511.mp4").exists, 30)
        assert proc.proc.poll() is None, "still running"
        text = proc.log_text()
        # One line per kind of reason every 10 s: the two kinds of bad time share one.
        for reason in ("number too long", "event dropped: time: ", "free: out of range",
                       "not valid Unicode"):
            assert reason in text, reason
        # Over 400 datagrams dropped in a few seconds: one line per kind of reason.
        assert text.count("event dropped") < 60, "drops are rate-limited"
        assert "Traceback" not in text
    finally:
        assert proc.terminate() == 0


# ---------------------------------------------------------------- stages that die

def test_supervisor_restarts_a_dead_converter_with_its_queue_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "mp4"
    out.mkdir()
    first, second = (make_recording(tmp_path / f"20240101-00{i}0.h264", frames=6)
                     for i in (1, 2))
    done: list[str] = []

    def on_done(job: Job, recording: int, mp4: Path) -> None:
        done.append(mp4.name)
        if len(done) == 1:
            raise KeyError("a bug after the first conversion")

    stop = threading.Event()
    conv = Converter(ConvertSettings(out, fps=12.0), open_catalog(tmp_path / "catalog.db"),
                     stop, on_done)
    supervisor = Supervisor(stop)
    supervisor.watch(conv.thread)
    conv.submit(Job(first))
    conv.submit(Job(second))
    conv.start()
    try:
        wait_for(lambda: not conv.thread.is_alive(), 20)
        assert done == ["20240101-0010.mp4"], "the loop died after the first"
        assert supervisor.check()
        wait_for(lambda: len(done) == 2, 20)
        assert conv.thread.is_alive() and conv.thread.runs == 2
    finally:
        stop.set()
    assert conv.join(5)
    line = next(r.getMessage() for r in caplog.records if "stopped by" in r.getMessage())
    assert "stage converter stopped by KeyError: 'a bug after the first conversion' (at " \
           "test_postproc_hardening.py:" in line and "restarting it" in line


def test_supervisor_gives_up_on_the_third_death_within_the_window() -> None:
    now = [1000.0]
    stop = threading.Event()
    supervisor = Supervisor(stop, max_deaths=3, window=300.0, clock=lambda: now[0])
    calls: list[int] = []

    def loop() -> None:
        calls.append(1)
        if len(calls) == 2:
            return  # a loop that just ends is a death too: no thread ends silently
        raise OSError(5, "Input/output error")

    stage = StageThread("flaky", loop)
    other = StageThread("steady", lambda: None)  # registered, never started: left alone
    supervisor.watch(stage)
    supervisor.watch(other)
    stage.start()

    def died() -> bool:
        stage.join(5)
        return supervisor.check()

    assert died() and len(calls) == 2  # 1st death (OSError) at t=1000: restarted
    now[0] += 200
    assert died() and len(calls) == 3  # 2nd (returned) at t=1200: restarted
    now[0] += 150  # the first is now more than 300 s old: still 2 within the window
    assert died() and len(calls) == 4
    now[0] += 10
    assert not died(), "three deaths within 300 s: postproc exits"
    assert supervisor.failed == "flaky" and len(calls) == 4, "not restarted again"
    assert not other.started
    stop.set()
    assert supervisor.check(), "nothing is restarted while stopping"


def test_describe_names_the_exception_and_where() -> None:
    try:
        int("x")
    except ValueError as exc:
        text = describe(exc)
    assert text.startswith("ValueError: invalid literal for int() with base 10: 'x' (at ")
    assert "test_postproc_hardening.py:" in text and "\n" not in text
    assert describe(None) == "its loop returned"
    assert describe(KeyError()) == "KeyError"


def test_damaged_sidecar_times_still_convert(tmp_path: Path) -> None:
    """A sidecar damaged into `inf` or an absurd time once killed the converter (an
    OverflowError in the remux's clock): the frames before it keep their times, the rest are
    timed by fps, and nothing stops."""
    proc, name, h264, mp4 = start_postproc(tmp_path)
    bad_times = [float("inf"), 1e400, 1e306, 1e12]
    try:
        for i, bad in enumerate(bad_times):
            clip = make_recording(h264 / f"20240101-00{i}0.h264", frames=6)
            write_sidecar(clip.with_suffix(".pts"), [0.0, 83.3, bad, 250.0])
            send_event(name, {"h264": str(clip), "pts": str(clip.with_suffix(".pts"))})
        wait_for(lambda: len(list(mp4.glob("*.mp4"))) == len(bad_times), 20)
        assert proc.proc.poll() is None, "still running"
    finally:
        assert proc.terminate() == 0
    for i in range(len(bad_times)):
        assert len(mp4_packets(mp4 / f"20240101-00{i}0.mp4")) == 6
    assert "stopped by" not in proc.log_text()


def test_a_stage_that_keeps_dying_makes_postproc_exit_non_zero(tmp_path: Path) -> None:
    proc, name, h264, mp4 = start_postproc(tmp_path)
    try:
        # The mp4 directory replaced by a file (a disk unmounted, a mistaken `mv`): no file
        # can be converted, and a running postproc that only logs it helps nobody.
        mp4.rmdir()
        mp4.write_text("not a directory")
        for i in range(3):
            clip = make_recording(h264 / f"20240101-00{i}0.h264", frames=6)
            send_event(name, {"h264": str(clip)})
            if i < 2:
                proc.wait_log(f"restarting it ({i + 1} of 2 allowed")
        code = proc.proc.wait(30)
    finally:
        proc.close()
    text = proc.log_text()
    assert code == 1
    assert text.count("stage converter stopped by OutputGone: ") == 3
    assert "restarting it (2 of 2 allowed within 300 s)" in text
    assert "3 times within 300 s, so postproc exits" in text
    assert "after stage converter kept failing: exit 1" in text
    assert "Traceback" not in text


class CopyDestination:
    """A destination that copies into a local directory. Its first attempt fails the way a
    library's bug does, with an exception the Destination protocol does not declare (as
    ftplib's UnicodeDecodeError on a Latin-1 reply did before ftp.py caught ValueError)."""

    label = "copy://test"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.attempts = 0
        self.closed = 0

    def upload(self, local: Path, stop: threading.Event,
               progress: Callable[[int, int], None] | None = None, camera: str = "cam") -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise UnicodeDecodeError("utf-8", b"\xfc", 0, 1, "invalid start byte")
        shutil.copyfile(local, self.root / local.name)

    def close(self) -> None:
        self.closed += 1

    def abort(self) -> None:
        pass


def test_upload_worker_retries_an_exception_its_destination_does_not_declare(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mp4 = tmp_path / "20240101-0000.mp4"
    mp4.write_bytes(b"m" * 1000)
    remote = tmp_path / "remote"
    remote.mkdir()
    dest = CopyDestination(remote)
    stop = threading.Event()
    catalog = open_catalog(tmp_path / "catalog.db")
    worker = UploadWorker(dest, queue_size=4, stop=stop, catalog=catalog, mp4_dir=tmp_path,
                          backoff_first=0.05, max_attempts=3)
    worker.start()
    try:
        worker.offer(catalogued(catalog, mp4))
        wait_for(lambda: worker.uploaded == 1 or worker.join(0), 20)
        assert not worker.join(0), "the worker thread goes on"
        assert (remote / mp4.name).read_bytes() == mp4.read_bytes()
        assert dest.attempts == 2 and dest.closed >= 1, "its connection was dropped"
    finally:
        stop.set()
    assert worker.join(5)
    assert "failed (attempt 1): unexpected UnicodeDecodeError" in caplog.text
