"""pancake's recording stages never die quietly, and the .pts sidecar survives a kill -9."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from conftest import Listener, Pancake, run_pancake
from recordings import decode

from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.remux import read_sidecar

FPS = 12
BASE = ["--source", "testsrc", "--fps", str(FPS), "--resolution", "160", "120"]
# The exit code of a pancake whose stage died twice (EX_SOFTWARE).
EXIT_STAGE_DIED = 70


class NotifySocket:
    """systemd's side of NOTIFY_SOCKET: a real abstract datagram socket, read by a thread."""

    def __init__(self) -> None:
        self.address = f"@notify-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": "1000000"}

    def close(self) -> None:
        time.sleep(0.3)  # the last datagrams of a process that just exited
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


def wait_until(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


# ------------------------------------------------------------------ a record dir not in UTF-8


def test_a_record_directory_that_is_not_utf8(tmp_path: Path, listener: Listener,
                                            pancakes: list[Pancake]) -> None:
    # Linux names are bytes; Python carries \xff as the lone surrogate \udcff, which UTF-8
    # cannot encode: the segment writer's first message used to kill it, and recording stopped.
    odd = tmp_path / os.fsdecode(b"cam\xff")
    odd.mkdir()
    # With --emit none of its files could ever be announced (postproc takes UTF-8 names
    # only): refused at start, one line naming it readably.
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(odd), "--emit", listener.name],
                    tmp_path)
    assert p.proc.wait(20) == 2, p.log()
    lines = p.log().strip().splitlines()
    assert len(lines) == 1 and "cam\\xff" in lines[0] and "not a UTF-8 name" in lines[0], lines
    # Without --emit it records, and its log lines show the name escaped (not a logging error).
    log_file = tmp_path / "pancake.log"
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(odd), "--record-split", "2",
                               "--log", str(log_file)], tmp_path)
    assert wait_until(lambda: len(list(odd.glob("*.h264"))) >= 3, timeout=40), p.log()
    rc, _ = p.stop()
    log = log_file.read_text()
    assert rc == 0, log
    assert "stage died" not in log and "Traceback" not in log and "Logging error" not in log
    assert "Logging error" not in p.log(), p.log()
    assert "cam\\udcff" in log, log  # the byte \xff, as Python names it, escaped
    for video in odd.glob("*.h264"):
        rec = decode(video, 0)
        assert rec.first_is_key and rec.frames == len(rec.pts_ms) >= 1


def test_the_emitter_never_raises_on_a_name_utf8_cannot_carry(
        listener: Listener, caplog: pytest.LogCaptureFixture) -> None:
    odd = os.fsdecode(b"/rec/cam\xff")
    emitter = Emitter(listener.name)
    try:
        with caplog.at_level(logging.ERROR, logger="raspberry_pancake.recorder.emitter"):
            assert not emitter.emit(Event(h264=f"{odd}/a.h264", pts=f"{odd}/a.pts", time=1e9))
            assert not emitter.emit(Event(h264=f"{odd}/b.h264", time=1e9))
            # An edge goes out without its photo: the alert matters more.
            assert emitter.emit(Event(detection=True, time=1e9, jpeg=f"{odd}/c.jpg"))
            assert emitter.emit(Event(h264="/rec/ok/d.h264", time=1e9))
        assert wait_until(lambda: len(listener.events()) == 2, timeout=10)
    finally:
        emitter.close()
    assert listener.events() == [{"detection": True, "time": 1e9},
                                 {"h264": "/rec/ok/d.h264", "time": 1e9}]
    assert emitter.dropped == 2 and emitter.sent == 2
    lines = [r.getMessage() for r in caplog.records]
    assert sum("not valid UTF-8" in m for m in lines) == 2, lines  # one per kind, rate-limited
    assert all("\udcff" not in m for m in lines) and any("cam\\xff" in m for m in lines)


# ------------------------------------------------------------------ the sidecar and kill -9


def frames_to_last_keyframe(path: Path) -> tuple[int, int]:
    """(frames decoded up to and including the last keyframe, all frames decoded)."""
    count = upto = 0
    with av.open(str(path), format="h264") as container:
        try:
            for frame in container.decode(video=0):
                count += 1
                if frame.key_frame:
                    upto = count
        except av.FFmpegError:
            pass  # the last frame may be cut short by the kill
    return upto, count


def test_sidecar_keeps_up_with_the_video_after_kill_9(tmp_path: Path,
                                                      pancakes: list[Pancake]) -> None:
    rec = tmp_path / "h264"
    rec.mkdir()
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec)], tmp_path)
    p.wait_for("first frame captured", timeout=30)
    time.sleep(6)
    p.stop(signal.SIGKILL)
    (video,) = rec.glob("*.h264")
    upto, total = frames_to_last_keyframe(video)
    assert upto >= 3 * FPS, (upto, total, p.log())  # several seconds of video reached the OS
    times = read_sidecar(video.with_suffix(".pts"))
    assert len(times) >= upto, (len(times), upto, total)
    assert times == sorted(times)


# ------------------------------------------------------------------ a stage that dies

# customize.py code that breaks one stage inside the real daemon, at its 24th and 96th call
# (2 s and 8 s in at 12 fps): a bug in the recorder, or detect() calling sys.exit().
BREAKERS = {
    "segments": (
        "import raspberry_pancake.recorder.recording.segments as m\n"
        "_real = m.H264File.write\n"
        "def _broken(self, packet):\n"
        "    if _count():\n"
        "        raise RuntimeError('injected fault')\n"
        "    _real(self, packet)\n"
        "m.H264File.write = _broken\n"
        "def detect():\n"
        "    return False\n"),
    "encoder": (
        "import raspberry_pancake.recorder.recording.encode as m\n"
        "_real = m.H264Encoder.encode\n"
        "def _broken(self, frame):\n"
        "    if _count():\n"
        "        raise TypeError('injected fault')\n"
        "    return _real(self, frame)\n"
        "m.H264Encoder.encode = _broken\n"
        "def detect():\n"
        "    return False\n"),
    "detector": (
        "import sys\n"
        "def detect():\n"
        "    if _count():\n"
        "        sys.exit('injected fault')\n"
        "    return False\n"),
}
COUNTER = (
    "_calls = [0]\n"
    "def _count():\n"
    "    _calls[0] += 1\n"
    "    return _calls[0] in (24, 96)\n")


@pytest.mark.parametrize("stage", sorted(BREAKERS))
def test_a_dead_stage_is_restarted_once_then_the_process_exits(
        stage: str, tmp_path: Path, listener: Listener, notify: NotifySocket,
        pancakes: list[Pancake]) -> None:
    rec = tmp_path / "h264"
    rec.mkdir()
    customize = tmp_path / "breaker.py"
    customize.write_text(COUNTER + BREAKERS[stage])
    p = run_pancake(pancakes, [*BASE, "--record-continuous", str(rec), "--detect", "no-image",
                               "--customize", str(customize), "--emit", listener.name],
                    tmp_path, env=notify.env())
    p.wait_for(f"{stage} stage restarted after", timeout=40)
    try:
        rc = p.proc.wait(40)  # the second death ends it, with the segment in hand finished
    except Exception:
        raise AssertionError(f"pancake still runs after the second death:\n{p.log()}") from None
    log = p.log()
    assert rc == EXIT_STAGE_DIED, log
    assert log.count(f"{stage} stage died:") == 2, log
    assert log.count("stage restarted after") == 1, log
    assert log.count(f"{stage} stage died again") == 1, log
    assert "injected fault" in log

    notify.close()
    messages = notify.messages
    assert "READY=1" in messages[0].splitlines(), messages
    restarted = next(i for i, m in enumerate(messages) if "stage restarted" in m)
    fatal = next(i for i, m in enumerate(messages) if "died again" in m)
    assert restarted < fatal
    # Alive again after the restart; silent from the second death on, so systemd would act.
    assert any("WATCHDOG=1" in m for m in messages[restarted:fatal]), messages
    assert not any("WATCHDOG=1" in m for m in messages[fatal:]), messages
    assert "STOPPING=1" in messages[-1]

    # Recording went on after the restart, and every file was finished and announced.
    files = sorted(rec.glob("*.h264"))
    announced = sorted(e["h264"] for e in listener.events() if "h264" in e)
    assert announced == [str(f) for f in files], (announced, files, log)
    recordings = [decode(f, 0) for f in files]
    assert all(r.first_is_key and r.frames >= 1 for r in recordings), log
    if stage != "detector":  # the recording stage broke: a new file after each restart
        assert len(files) >= 2, log
    assert sum(r.frames for r in recordings) >= 4 * FPS, log
