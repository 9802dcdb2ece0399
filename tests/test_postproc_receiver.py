"""The receiver, through the real daemon: malformed and hostile datagrams, other uids, a taken name."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postproc_servers import (
    PYTHON,
    ROOT,
    PostprocProcess,
    h264_bytes,
    send_event,
    wait_for,
    wait_socket,
)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    h264, mp4, outside = tmp_path / "h264", tmp_path / "mp4", tmp_path / "outside"
    for d in (h264, mp4, outside):
        d.mkdir()
    return h264, mp4, outside


@pytest.fixture
def daemon(tmp_path: Path, dirs: tuple[Path, Path, Path]) -> Iterator[tuple[PostprocProcess, str]]:
    h264, mp4, _ = dirs
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    # Traps present at start: catch-up must not follow a link out or take a directory.
    (h264 / "link-out.h264").symlink_to(dirs[2] / "victim.h264")
    (h264 / "dir.h264").mkdir()
    (dirs[2] / "victim.h264").write_bytes(h264_bytes(6))
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264)],
                           tmp_path / "postproc.log")
    try:
        wait_socket(name)
        yield proc, name
    finally:
        assert proc.terminate() == 0


def _malformed(h264: Path, outside: Path) -> list[bytes]:
    rnd = random.Random(4)
    victim = str(outside / "victim.h264")
    valid_text = json.dumps({"h264": str(h264 / "20240101-0000.h264")})
    hostile_events: list[object] = [
        {"h264": victim},  # outside --h264-dir
        {"h264": str(h264 / "link-out.h264")},  # a symlink out
        {"h264": str(h264 / ".." / "outside" / "victim.h264")},  # ../
        {"h264": "victim.h264"},  # relative
        {"h264": str(h264 / "dir.h264")},  # a directory
        {"h264": str(h264 / "missing.h264")},
        {"h264": str(h264 / "notes.txt")},
        {"h264": str(h264) + "/x\u0000.h264"},
        {"h264": 5}, {"h264": ["/a.h264"]}, {"h264": None}, {"detection": "yes"},
        {"detection": 1}, {"time": 5}, {"disk": "/", "free": "lots", "dir": "/"},
        {"h264": str(h264 / "20240101-0000.h264"), "time": "noon"},
        [], "text", 42, None, {},
    ]
    out: list[bytes] = [json.dumps(e).encode() for e in hostile_events]
    out.append(b"\x00" * (200 * 1024))  # 200 KB
    out.append(valid_text.encode("utf-16"))  # not UTF-8
    out.append(b"\xff\xfe" + valid_text.encode())
    out.append(b"[" * 50000 + b"]" * 50000)  # nested too deep, and over 64 KiB
    out.append(b"[" * 20000 + b"]" * 20000)  # nested too deep, under 64 KiB
    while len(out) < 1000:
        kind = len(out) % 3
        if kind == 0:
            out.append(rnd.randbytes(rnd.randrange(1, 600)))
        elif kind == 1:
            out.append(valid_text.encode()[: rnd.randrange(1, len(valid_text))])  # cut JSON
        else:
            e = rnd.choice(hostile_events)
            out.append(json.dumps(e).encode())
    return out


def test_thousand_malformed_datagrams_then_a_valid_one(
        dirs: tuple[Path, Path, Path], daemon: tuple[PostprocProcess, str]) -> None:
    h264, mp4, outside = dirs
    proc, name = daemon
    (h264 / "notes.txt").write_text("not a recording")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for data in _malformed(h264, outside):
            # Blocking: waits while the receiver's queue is full, so nothing is lost here.
            s.sendto(data, "\0" + name)
        valid = h264 / "20240101-0000.h264"
        valid.write_bytes(h264_bytes(12))
        s.sendto(json.dumps({"h264": str(valid)}).encode(), "\0" + name)
    wait_for(lambda: (mp4 / "20240101-0000.mp4").exists(), 20)
    proc.wait_log("converted")
    assert proc.proc.poll() is None, "still running"
    assert [p.name for p in mp4.iterdir()] == ["20240101-0000.mp4"]
    text = proc.log_text()
    assert "event dropped" in text and "outside the --h264-dir" in text
    assert "more like this not logged" in text or text.count("event dropped") < 200, \
        "drops are rate-limited"
    assert "Traceback" not in text


def test_datagram_from_another_uid_is_refused(dirs: tuple[Path, Path, Path],
                                              daemon: tuple[PostprocProcess, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to fork a child that drops to uid 65534 (CI runs as root)")
    h264, mp4, _ = dirs
    proc, name = daemon
    clip = h264 / "20240101-120000.h264"
    clip.write_bytes(h264_bytes(12))
    data = json.dumps({"h264": str(clip)}).encode()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, send, leave without running pytest's cleanup
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(data, "\0" + name)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child sent its datagram"
    proc.wait_log("sender uid 65534 not allowed")
    assert not list(mp4.iterdir())
    # The same datagram from our own uid is taken: the refusal was about the uid.
    send_event(name, data)
    wait_for(lambda: (mp4 / "20240101-120000.mp4").exists(), 20)


def test_taken_socket_name_exits_with_a_clear_line(tmp_path: Path) -> None:
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as holder:
        holder.bind("\0" + name)
        done = subprocess.run([PYTHON, str(ROOT / "postproc.py"), name, "--convert",
                               str(tmp_path), "12"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "taken" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_snapshot_with_boxes_is_checked_like_the_snapshot(dirs: tuple[Path, Path, Path]) -> None:
    from raspberry_pancake.postproc.receiver import PathPolicy, accept

    h264, _, outside = dirs
    inside = h264 / "20260101-101502-boxes.jpg"
    inside.write_bytes(b"\xff\xd8\xff\xd9")
    (outside / "x.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    policy = PathPolicy([h264])
    uid = os.getuid()

    def boxes(path: str) -> Path | None:
        data = json.dumps({"detection": True, "jpeg_boxes": path}).encode()
        return accept(data, uid, frozenset([uid]), policy).jpeg_boxes

    assert boxes(str(inside)) == inside.resolve()
    # Outside --h264-dir, a directory, not a JPEG: the picture is ignored, the edge still counts.
    assert boxes(str(outside / "x.jpg")) is None
    assert boxes(str(h264)) is None
    assert boxes(str(h264 / "20260101-101502.h264")) is None
