"""MQTT: pancake's edge → ON at a subscriber, and postproc's peak RSS with MQTT and rclone."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_postproc import CUSTOMIZE, DETECT_INTERVAL, FPS, segment  # noqa: E402
from bench.report import table, write_section  # noqa: E402
from tests.postproc_servers import (  # noqa: E402
    Mosquitto,
    MqttWatcher,
    PostprocProcess,
    free_port,
    send_event,
    wait_for,
    wait_socket,
)

EDGES = 20
USER, PASSWORD = "pancake", "bench-mqtt-pass"
WATCHER, WATCHER_PASSWORD = "watcher", "bench-watch-pass"


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[max(0, round(0.95 * len(values)) - 1)]


def _postproc(work: Path, broker: Mosquitto, topic: str, extra: list[str]) -> tuple[
        PostprocProcess, str, Path, Path]:
    h264, mp4 = work / "h264", work / "mp4"
    h264.mkdir(parents=True)
    mp4.mkdir()
    secret = work / "mqtt-password"
    secret.write_text(PASSWORD)
    name = f"pp-bench-{uuid.uuid4().hex[:8]}"
    post = PostprocProcess([name, "--convert", str(mp4), str(FPS), "--h264-dir", str(h264),
                            "--mqtt", f"mqtt://{USER}@127.0.0.1:{broker.port}",
                            "--mqtt-password", f"@{secret}", "--mqtt-topic", topic, *extra],
                           work / "postproc.log")
    wait_socket(name)
    return post, name, h264, mp4


def bench_edge_latency(work: Path, broker: Mosquitto) -> tuple[float, float, int]:
    """detect() returns True in pancake → `ON` reaches a subscriber: p95 and max, seconds."""
    work.mkdir()
    edges_file = work / "edges.txt"
    customize = work / "customize_bench.py"
    customize.write_text(CUSTOMIZE.format(edges=str(edges_file)))
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    watch = MqttWatcher(broker.port, WATCHER, WATCHER_PASSWORD, [f"{topic}/cam/detection"])
    post, name, _h264, _mp4 = _postproc(work, broker, topic, [])
    log = (work / "pancake.log").open("wb")
    pancake = subprocess.Popen(
        [sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
         "--port", str(free_port()), "--bind", "127.0.0.1", "--fps", "12", "--detect",
         "no-image", "--detect-interval", str(DETECT_INTERVAL), "--customize", str(customize),
         "--emit", name], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "XDG_STATE_HOME": str(work / "state")})

    def ons() -> list[float]:
        return [m.wall for m in watch.on(f"{topic}/cam/detection")
                if m.payload == b"ON" and not m.retain]
    try:
        wait_for(lambda: len(ons()) >= EDGES + 1, 40 + EDGES * 5)
    finally:
        pancake.send_signal(signal.SIGTERM)
        pancake.wait(15)
        log.close()
        post.terminate()
        watch.close()
    turned = [float(x) for x in edges_file.read_text().split()]
    got = ons()
    # Each ON is matched with the last time detect() turned True before it: the first edge
    # may predate postproc's readiness.
    delays = []
    for received in got[1:EDGES + 1]:
        before = [t for t in turned if t <= received]
        if before:
            delays.append(received - before[-1])
    return _p95(delays), max(delays), len(delays)


def bench_datagram_latency(work: Path, broker: Mosquitto) -> tuple[float, float]:
    """postproc alone: an edge datagram sent → its ON or OFF at the subscriber (p95, max)."""
    work.mkdir()
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    watch = MqttWatcher(broker.port, WATCHER, WATCHER_PASSWORD, [f"{topic}/cam/detection"])
    post, name, _h264, _mp4 = _postproc(work, broker, topic, [])
    delays = []
    try:
        wait_for(lambda: post.log_text().count("MQTT: connected") == 1, 15)
        for i in range(EDGES * 2):
            before = len(watch.on(f"{topic}/cam/detection"))

            def arrived(n: int = before) -> bool:
                return len(watch.on(f"{topic}/cam/detection")) > n
            sent = time.time()
            send_event(name, {"detection": i % 2 == 0, "time": sent})
            wait_for(arrived, 10, interval=0.001)
            delays.append(watch.on(f"{topic}/cam/detection")[-1].wall - sent)
            time.sleep(0.05)
    finally:
        post.terminate()
        watch.close()
    return _p95(delays), max(delays)


def bench_rss(src: Path, work: Path, broker: Mosquitto) -> tuple[float, float, float]:
    """Peak RSS (VmHWM) of postproc converting the segment and uploading it through rclone
    (`:local:`), with MQTT connected and publishing."""
    work.mkdir()
    remote = work / "remote"
    remote.mkdir()
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    # Catch-up takes regular files only (never a symlink): a copy, made before the start.
    h264 = work / "h264"
    h264.mkdir()
    shutil.copyfile(src, h264 / src.name)
    shutil.copyfile(src.with_suffix(".pts"), (h264 / src.name).with_suffix(".pts"))
    # A file the catalog does not know is converted once unchanged for a minute: an old one.
    old = time.time() - 3600
    for f in h264.iterdir():
        os.utime(f, (old, old))
    mp4 = work / "mp4"
    mp4.mkdir()
    secret = work / "mqtt-password"
    secret.write_text(PASSWORD)
    name = f"pp-bench-{uuid.uuid4().hex[:8]}"
    post = PostprocProcess([name, "--convert", str(mp4), str(FPS), "--h264-dir", str(h264),
                            "--mqtt", f"mqtt://{USER}@127.0.0.1:{broker.port}",
                            "--mqtt-password", f"@{secret}", "--mqtt-topic", topic,
                            "--upload-after-convert", "1", "--upload-rclone",
                            f":local:{remote}"], work / "postproc.log")
    status = Path(f"/proc/{post.proc.pid}/status")
    try:
        wait_socket(name)
        started = time.monotonic()
        for i in range(EDGES):
            send_event(name, {"detection": i % 2 == 0, "time": time.time()})
        post.wait_log("uploaded", timeout=900)
        took = time.monotonic() - started
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        hwm = int(fields["VmHWM"].split()[0]) / 1024
    finally:
        post.terminate()
    return hwm, took, src.stat().st_size / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=15.0, help="segment length (default 15)")
    a = p.parse_args()
    src = segment(a.minutes)
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto", {USER: PASSWORD, WATCHER: WATCHER_PASSWORD})
        try:
            p95, worst, n = bench_edge_latency(Path(tmp) / "edges", broker)
            dp95, dworst = bench_datagram_latency(Path(tmp) / "datagrams", broker)
            hwm, took, size = bench_rss(src, Path(tmp) / "rss", broker)
        finally:
            broker.stop()
    print(f"edge → ON: p95 {p95 * 1000:.0f} ms, max {worst * 1000:.0f} ms over {n} edges; "
          f"datagram → ON: p95 {dp95 * 1000:.1f} ms, max {dworst * 1000:.1f} ms; "
          f"peak RSS {hwm:.1f} MB converting + rclone upload of {size:.0f} MB in {took:.0f} s")
    body = table([
        (f"pancake edge → `ON` at a subscriber, p95 of {n}", f"{p95:.3f} s (max {worst:.3f} s)",
         "≤ 0.1 s"),
        (f"postproc alone: edge datagram → `ON`/`OFF`, p95 of {EDGES * 2}",
         f"{dp95 * 1000:.1f} ms (max {dworst * 1000:.1f} ms)", "—"),
        (f"postproc peak RSS, MQTT + converting and uploading {size:.0f} MB through rclone "
         "`:local:`", f"{hwm:.1f} MB ({took:.0f} s)", "≤ 90 MB"),
    ])
    body += ("\nThe edge is the moment detect() first returns True (it polls every "
             f"{DETECT_INTERVAL} s); the time includes pancake's edge snapshot and the "
             "broker (Mosquitto on loopback). rclone runs as its own process, not counted.\n")
    write_section("mqtt", "MQTT: detection latency, memory", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
