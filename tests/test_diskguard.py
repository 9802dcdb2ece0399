"""The free-space guard: on a real 8 MiB tmpfs where the test may mount one, and with injected
disk usage for the episode rules (which need a clock and exact numbers)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tmpfs

from raspberry_pancake.recorder.diskguard import DiskGuard, DiskGuardConfig
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.shared.events import Event, abstract_address, decode
from raspberry_pancake.shared.retention import Amount, parse_min_free

MiB = 1024 * 1024
OLD = time.time() - 3600


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "8m", "the injected-usage tests below cover the rules") as mnt:
        yield mnt


def recording(directory: Path, stem: str, size: int = MiB) -> None:
    for ext, n in ((".h264", size), (".pts", 100), (".jpg", 100)):
        path = directory / (stem + ext)
        path.write_bytes(b"\1" * n)
        os.utime(path, (OLD, OLD))


def stems(directory: Path) -> list[str]:
    return sorted({p.name.split(".")[0] for p in directory.iterdir()})


STEMS = [f"20240101-{h:02d}00" for h in range(7)]


class Events:
    """Collects what the guard emits, from its thread."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> bool:
        with self._lock:
            self.items.append(event)
        return True


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_guard_thread_frees_a_full_filesystem(small_fs: Path) -> None:
    rec, mp4 = small_fs / "h264", small_fs / "mp4"
    rec.mkdir()
    mp4.mkdir()
    for stem in STEMS[:6]:
        recording(rec, stem)
    # 20240101-0300 and -0500 are converted (their mp4 is tiny here, but it exists).
    for stem in (STEMS[3], STEMS[5]):
        (mp4 / f"{stem}.mp4").write_bytes(b"mp4")
    # The writer fills what is left until the disk is full, as a camera would.
    writing = rec / "20240101-0700.h264"
    with open(writing, "wb") as out:
        with pytest.raises(OSError) as full:
            while True:
                out.write(b"\1" * 65536)
                out.flush()
        assert full.value.errno == errno.ENOSPC
        assert shutil.disk_usage(rec).free < 64 * 1024

        events = Events()
        stop = threading.Event()
        opened = {str(writing)}
        guard = DiskGuard(
            DiskGuardConfig(record_dirs=(rec,), min_free=parse_min_free("2M"), interval=0.05,
                            mp4_dirs=(mp4,)),
            stop, events, is_open=lambda p: p in opened)
        guard.start()
        try:
            assert wait_for(lambda: guard.deleted == 2)
        finally:
            guard.stop()
            guard.join(5)
        assert not guard.is_alive()
        assert shutil.disk_usage(rec).free >= 2 * MiB
        # Converted ones first, although -0000 is older; the one being written never.
        assert stems(rec) == [STEMS[0], STEMS[1], STEMS[2], STEMS[4], "20240101-0700"]
        # postproc's directory is only read.
        assert sorted(p.name for p in mp4.iterdir()) == [f"{STEMS[3]}.mp4", f"{STEMS[5]}.mp4"]

        # Recording resumes now that there is room, and fills the disk again.
        out.write(b"\1" * MiB)
        out.flush()
        with pytest.raises(OSError):
            while True:
                out.write(b"\1" * 65536)
                out.flush()
        # Same episode: no second message. Nothing converted is left: the oldest go.
        stop.clear()  # the thread is gone; this pass runs here, where the test can watch it
        guard.check()
        assert shutil.disk_usage(rec).free >= 2 * MiB
        assert stems(rec) == [STEMS[2], STEMS[4], "20240101-0700"]
    assert len(events.items) == 1
    (event,) = events.items
    assert event["disk"] == "low" and event["dir"] == str(rec)
    assert 0 <= event["free"] < 64 * 1024
    assert writing.exists()


def test_files_open_in_any_process_survive_by_default(small_fs: Path) -> None:
    rec = small_fs / "h264"
    rec.mkdir()
    for stem in STEMS:
        recording(rec, stem)
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); "
         "time.sleep(60)", str(rec / f"{STEMS[0]}.pts")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "open\n"
        guard = DiskGuard(DiskGuardConfig((rec,), Amount(bytes=3 * MiB)), threading.Event(),
                          Events())
        deleted = guard.check()
    finally:
        child.kill()
        child.wait()
    assert shutil.disk_usage(rec).free >= 3 * MiB
    assert stems(rec) == [STEMS[0], *STEMS[4:]]
    assert sorted(p.name for p in deleted) == sorted(
        f"{s}{e}" for s in STEMS[1:4] for e in (".h264", ".pts", ".jpg"))
    assert all(p.parent == rec for p in deleted)


def test_only_recordings_and_only_its_own_directories(small_fs: Path) -> None:
    rec, other = small_fs / "h264", small_fs / "other"
    rec.mkdir()
    other.mkdir()
    (rec / "notes.txt").write_bytes(b"\1" * MiB)
    os.utime(rec / "notes.txt", (0, 0))
    (rec / "20240101-0000.h264.tmp").write_bytes(b"\1" * MiB)
    os.utime(rec / "20240101-0000.h264.tmp", (0, 0))
    for stem in STEMS[:3]:
        recording(other, stem)
    recording(rec, STEMS[3])
    (rec / "link.h264").symlink_to(other / f"{STEMS[0]}.h264")
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(percent=90)), threading.Event(), Events())
    guard.check()
    assert sorted(p.name for p in rec.iterdir()) == ["20240101-0000.h264.tmp", "link.h264",
                                                     "notes.txt"]
    assert stems(other) == STEMS[:3]


def test_guard_event_reaches_a_real_receiver_and_validates(small_fs: Path) -> None:
    rec = small_fs / "h264"
    rec.mkdir()
    for stem in STEMS:
        recording(rec, stem)
    name = f"pancake-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(abstract_address(name))
    receiver.settimeout(5)
    emitter = Emitter(name)
    try:
        guard = DiskGuard(DiskGuardConfig((rec,), parse_min_free("40%")), threading.Event(),
                          emitter.emit)
        guard.check()
        event = decode(receiver.recv(65536))
    finally:
        emitter.close()
        receiver.close()
    assert event == {"disk": "low", "free": event["free"], "dir": str(rec)}
    assert event["free"] < 0.4 * 8 * MiB
    assert shutil.disk_usage(rec).free >= 0.4 * 8 * MiB


# ---------------------------------------------------------------- injected disk usage


@dataclass
class Usage:
    total: int
    free: int


class FakeDisk:
    """Reports a chosen free space, and gives back each deleted .h264's size, like a disk."""

    def __init__(self, rec: Path, free: int) -> None:
        self.rec = rec
        self.base = free
        self.asked: list[str] = []

    def __call__(self, path: str) -> Usage:
        self.asked.append(path)
        gone = sum(1 for s in STEMS if not (self.rec / f"{s}.h264").exists())
        return Usage(total=100 * MiB, free=self.base + gone * MiB)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rec(tmp_path: Path) -> Path:
    d = tmp_path / "h264"
    d.mkdir()
    for stem in STEMS:
        recording(d, stem, size=10)
    return d


def test_episodes_with_injected_usage(rec: Path) -> None:
    disk = FakeDisk(rec, free=2 * MiB)
    clock = Clock()
    events = Events()
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(percent=5), rearm_after=600),
                      threading.Event(), events, is_open=lambda _p: False, disk_usage=disk,
                      clock=clock)
    guard.check()  # 2 MiB free of 100: under 5 MiB → three recordings go
    assert stems(rec) == STEMS[3:]
    assert events.items == [{"disk": "low", "free": 2 * MiB, "dir": str(rec)}]
    disk.base = 1 * MiB  # the camera filled it up again within the rearm period
    clock.now += 300
    guard.check()
    assert stems(rec) == STEMS[4:]
    assert len(events.items) == 1  # same episode: the guard has been rotating all along
    clock.now += 599
    guard.check()
    assert len(events.items) == 1
    clock.now += 1  # 600 s without having to delete: the episode is over
    guard.check()
    disk.base = 0
    guard.check()
    assert len(events.items) == 2
    assert events.items[1]["free"] == 4 * MiB  # four are gone by now
    assert stems(rec) == STEMS[5:]


def test_rearm_zero_ends_the_episode_as_soon_as_space_is_back(rec: Path) -> None:
    disk = FakeDisk(rec, free=4 * MiB)
    events = Events()
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(bytes=5 * MiB), rearm_after=0),
                      threading.Event(), events, is_open=lambda _p: False, disk_usage=disk)
    guard.check()
    guard.check()  # above the threshold now: episode over
    disk.base = 3 * MiB
    guard.check()
    assert len(events.items) == 2
    assert stems(rec) == STEMS[2:]  # one recording per episode was enough


def test_recent_files_stay_even_if_not_open(rec: Path) -> None:
    for ext in (".h264", ".pts", ".jpg"):
        os.utime(rec / f"{STEMS[0]}{ext}")  # just now: maybe still being finished
    disk = FakeDisk(rec, free=0)
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(bytes=2 * MiB)), threading.Event(),
                      Events(), is_open=lambda _p: False, disk_usage=disk)
    guard.check()
    assert stems(rec) == [STEMS[0], *STEMS[3:]]


def test_thread_is_named_survives_errors_and_stops_promptly(rec: Path,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    calls: list[str] = []

    def broken(path: str) -> Usage:
        calls.append(path)
        raise OSError(errno.EIO, "Input/output error")

    stop = threading.Event()
    missing = rec.parent / "unplugged"
    guard = DiskGuard(DiskGuardConfig((missing, rec), Amount(percent=5), interval=0.02),
                      stop, Events(), disk_usage=broken)
    guard.start()
    assert wait_for(lambda: len(calls) >= 3)  # still checking after failures
    assert guard._thread is not None and guard._thread.name == "diskguard"
    guard.stop()
    guard.join(5)
    assert not guard.is_alive()
    assert stems(rec) == STEMS
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unplugged" in m and "No such file" in m for m in messages) == 1  # rate-limited
    assert sum("Input/output error" in m for m in messages) == 1


def test_long_interval_does_not_delay_stop(rec: Path) -> None:
    stop = threading.Event()
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(percent=0), interval=3600), stop, Events())
    guard.start()
    time.sleep(0.05)
    guard.stop()
    guard.join(5)
    assert not guard.is_alive(), "stop() must wake the thread out of its hour-long wait"


def test_parse_min_free_messages() -> None:
    for bad, says in (("5", None), ("abc", "is not a size"), ("101%", "under 100%"),
                      ("-5%", "is not a size")):
        if says is None:
            assert parse_min_free(bad) == Amount(bytes=5)
            continue
        with pytest.raises(ValueError, match=f"^--min-free: .*{says}"):
            parse_min_free(bad)


def test_a_guard_that_dies_is_seen_dead_and_runs_again_when_respawned(rec: Path) -> None:
    calls: list[Event] = []

    def emit(event: Event) -> bool:
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return True

    disk = FakeDisk(rec, free=0)
    stop = threading.Event()
    guard = DiskGuard(DiskGuardConfig((rec,), Amount(bytes=2 * MiB), interval=0.02,
                                      rearm_after=0), stop, emit, is_open=lambda _p: False,
                      disk_usage=disk)
    guard.start()
    assert wait_for(guard.dead)
    assert isinstance(guard.failure, RuntimeError)
    assert guard.respawn()
    assert wait_for(lambda: guard.deleted >= 2)  # checking and deleting again
    guard.stop()
    guard.join(5)
    assert not guard.is_alive() and not guard.dead()
