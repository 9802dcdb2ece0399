"""Four cameras in one pancake: CPU ÷ four times one alone, peak RSS, and the grid's JPEG cost.

1. CPU per recorded frame of one process recording 4 testsrc cameras at 640x480 15 fps
   (--config) ÷ that of one such camera alone (the same --config path, one table), same run.
2. Peak RSS of the 4-camera process.
3. The 4-camera page with one viewer: the grid (4 tiles, each paced to max(2, 10 / 4) fps)
   vs one camera enlarged (10 fps): JPEG encodes per second and the process's CPU meanwhile.
Run: .venv/bin/python bench/bench_cameras.py [seconds] [--print-only]   (default 40)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import table, write_section

ROOT = Path(__file__).resolve().parent.parent
W, H, FPS, CAMERAS, MAX_STREAM_FPS = 640, 480, 15, 4, 10
ACK = "read_frame"


@dataclass
class Usage:
    cpu: float  # user + system seconds
    rss_mb: float  # peak resident set size
    frames: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(base: Path, cameras: int) -> Path:
    rec = base / "rec"
    rec.mkdir(exist_ok=True)
    text = f'catalog = "{base / "pancake.db"}"\nmax_stream_fps = {MAX_STREAM_FPS}\n'
    for i in range(cameras):
        text += (f'[camera.c{i}]\nsource = "testsrc"\nresolution = [{W}, {H}]\nfps = {FPS}\n'
                 f'record_continuous = "{rec}"\n')
    path = base / "cameras.toml"
    path.write_text(text)
    return path


def start(base: Path, cameras: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "pancake.py"), "--config", str(config(base, cameras)),
           "--port", str(port), "--bind", "127.0.0.1"]
    env = {**os.environ, "XDG_STATE_HOME": str(base / "state")}
    with open(base / "pancake.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=base, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pancake did not listen")


def finish(proc: subprocess.Popen[bytes], base: Path) -> Usage:
    # os.kill, not proc.send_signal: that polls first, and a poll that reaps the process
    # would leave wait4 nothing to report the resource usage of.
    os.kill(proc.pid, signal.SIGTERM)
    _, status, ru = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (base / "pancake.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"pancake exited {os.waitstatus_to_exitcode(status)}:\n{tail}")
    frames = sum(len(p.read_text().splitlines()) - 1 for p in (base / "rec").rglob("*.pts"))
    return Usage(ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, frames)


def record(base: Path, cameras: int, seconds: float) -> Usage:
    proc, _ = start(base, cameras)
    time.sleep(seconds)
    return finish(proc, base)


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encodes(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
        return int(json.load(r)["jpeg_encodes"])


async def view(port: int, queries: list[str], seconds: float) -> None:
    """One viewer: a websocket per query, each acking every frame as it arrives."""
    from tornado.websocket import websocket_connect

    async def one(query: str) -> None:
        conn = await websocket_connect(f"ws://127.0.0.1:{port}/websocket?{query}")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = await asyncio.wait_for(conn.read_message(), max(0.05, end - time.monotonic()))
            except TimeoutError:
                break
            if msg is None:
                break
            if isinstance(msg, bytes):
                await conn.write_message(ACK)
        conn.close()

    await asyncio.gather(*(one(q) for q in queries))


def watch(pid: int, port: int, queries: list[str], seconds: float) -> tuple[float, float]:
    """(JPEG encodes per second, CPU share of one core) while one viewer watches."""
    e0, c0, t0 = encodes(port), cpu_of(pid), time.monotonic()
    asyncio.run(view(port, queries, seconds))
    elapsed = time.monotonic() - t0
    return (encodes(port) - e0) / elapsed, (cpu_of(pid) - c0) / elapsed


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 40.0
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        four = Path(tmp) / "four"
        page = Path(tmp) / "page"
        for d in (one, four, page):
            d.mkdir()
        alone = record(one, 1, seconds)
        many = record(four, CAMERAS, seconds)
        proc, port = start(page, CAMERAS)
        try:
            time.sleep(3)  # every camera delivering
            grid = watch(proc.pid, port, [f"camera=c{i}&view=grid" for i in range(CAMERAS)],
                         seconds / 2)
            big = watch(proc.pid, port, ["camera=c0"], seconds / 2)
        finally:
            finish(proc, page)
    ratio = (many.cpu / many.frames) / (alone.cpu / alone.frames)
    rows = [
        ("one camera: CPU s / frames", f"{alone.cpu:.1f} s / {alone.frames}", "reference"),
        (f"{CAMERAS} cameras, one process: CPU s / frames", f"{many.cpu:.1f} s / {many.frames}", ""),
        (f"1. {CAMERAS} cameras ÷ ({CAMERAS} x one alone), CPU per frame", f"{ratio:.2f}", "≤ 1.05"),
        (f"2. peak RSS, {CAMERAS} cameras", f"{many.rss_mb:.0f} MB", "≤ 200 MB"),
        (f"3. grid of {CAMERAS}, one viewer: JPEG encodes/s, CPU", f"{grid[0]:.1f}/s, "
         f"{grid[1] * 100:.0f} %", ""),
        ("3. one camera enlarged: JPEG encodes/s, CPU", f"{big[0]:.1f}/s, {big[1] * 100:.0f} %",
         ""),
    ]
    body = (f"{seconds:g} s per run of {W}x{H} at {FPS} fps testsrc2, recorded continuously "
            f"(libx264, one encoder per camera); the page with --max-stream-fps "
            f"{MAX_STREAM_FPS}: a grid tile gets max(2, {MAX_STREAM_FPS} / {CAMERAS}) fps, an "
            f"enlarged camera the full rate, and the tiles not shown nothing.\n\n" + table(rows))
    print(body)
    if "--print-only" not in sys.argv:
        write_section("cameras", "Several cameras (pancake.py --config)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
