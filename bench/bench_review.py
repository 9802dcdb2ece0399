"""The review pages on a year of catalog: API answer times, the first screen, remux on demand."""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_catalog import DAY, YEAR0, fill, p95  # noqa: E402
from bench.report import table, write_section  # noqa: E402
from raspberry_pancake.shared.catalog import Catalog  # noqa: E402
from raspberry_pancake.shared.remux import SIDECAR_HEADER  # noqa: E402

OUT = ROOT / "bench" / "out"
CHROMIUM = "/usr/bin/chromium"
QUERIES = 50
SEGMENT_SECONDS = 900
FPS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pancake exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("pancake did not listen")


def get_ms(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    ms = (time.perf_counter() - t0) * 1000
    conn.close()
    assert r.status == 200, (path, r.status)
    return ms


def first_byte(port: int, path: str) -> tuple[float, float, int]:
    """(seconds to the first byte of the body, seconds to the last, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    first = r.read(1)
    t1 = time.perf_counter()
    rest = r.read()
    t2 = time.perf_counter()
    conn.close()
    assert r.status == 200 and first, (path, r.status)
    return t1 - t0, t2 - t0, 1 + len(rest)


def segment(path: Path) -> None:
    """A 15-minute 1280x720 segment as pancake writes it (a keyframe a second), with its
    sidecar."""
    frames = SEGMENT_SECONDS * FPS
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS), "bf": "0"}
        with av.open(f"testsrc2=size=1280x720:rate={FPS}", format="lavfi") as src:
            for n, frame in enumerate(src.decode(video=0)):
                if n >= frames:
                    break
                frame.pict_type = PictureType.NONE
                frame.pts, frame.time_base = n, Fraction(1, FPS)
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    path.with_suffix(".pts").write_text(
        SIDECAR_HEADER + "\n" + "".join(f"{n * 1000 / FPS:.3f}\n" for n in range(frames)))


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def first_screen(port: int) -> float:
    """Seconds from asking for /events to its first card drawn, in Debian's chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{port}/events")  # warm: fonts, the static files' cache
        page.wait_for_selector(".card")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/events")
            page.wait_for_selector(".card", state="visible")
            times.append(time.perf_counter() - t0)
        browser.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_review.py", description=__doc__)
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        here = Path(tmp)
        db, rec = here / "pancake.db", here / "h264"
        rec.mkdir()
        catalog = Catalog.open(db, owner=True)
        fill(catalog)
        seg = rec / "20261201-1200.h264"
        t0 = time.perf_counter()
        segment(seg)
        made = time.perf_counter() - t0
        start = time.time() - 2 * 86400
        rid = catalog.recording_opened("cam", "continuous", seg, start)
        catalog.recording_closed(rid, start + SEGMENT_SECONDS, SEGMENT_SECONDS * FPS,
                                 seg.stat().st_size)
        catalog.close()
        port = free_port()
        env = {**os.environ, "XDG_STATE_HOME": str(here / "state")}
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc", "--port", str(port),
             "--bind", "127.0.0.1", "--catalog", str(db), "--record-continuous", str(rec)],
            cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc)
            time.sleep(2)
            day = time.strftime("%Y-%m-%d", time.localtime(YEAR0 + 180 * DAY))
            get_ms(port, "/api/events")  # the connection and the catalog opened once
            events = [get_ms(port, "/api/events") for _ in range(QUERIES)]
            filtered = [get_ms(port, "/api/events?label=alice") for _ in range(QUERIES)]
            days = [get_ms(port, f"/api/recordings?day={day}") for _ in range(QUERIES)]
            screen = first_screen(port)
            rss0 = rss_kb(proc.pid)
            ttfb, total, size = first_byte(port, f"/media/r{rid}.mp4")
            hwm1 = hwm_kb(proc.pid)
            cached, cached_total, _ = first_byte(port, f"/media/r{rid}.mp4")
        finally:
            proc.terminate()
            proc.wait(15)
    body = (f"pancake.py serving the review API from the year-long catalog of the catalog "
            f"bench (35,000 segments, 50,000 events), no login, on loopback; times are the "
            f"client's (HTTP included), {QUERIES} requests each. The first screen is Debian's "
            f"chromium from asking for `/events` to the first card drawn, median of 5 after "
            f"one warm-up. The remux is a {SEGMENT_SECONDS // 60}-minute 1280x720 {FPS} fps "
            f"segment ({size / 1e6:.0f} MB mp4, made in {made:.0f} s) that postproc never "
            f"converted, asked for as `/media/rID.mp4`: pancake streams the fragmented mp4 its "
            f"remux thread is writing into the cache, from the first fragment; the peak RSS "
            f"added is pancake's VmHWM after the request minus its RSS before (an upper bound: "
            f"the peak may be older).\n\n")
    body += table([
        ("`/api/events`, the first page of 50, p95", f"{p95(events):.1f} ms", "≤ 50 ms"),
        ("`/api/events?label=alice` (a name filter), p95", f"{p95(filtered):.1f} ms", "≤ 50 ms"),
        ("`/api/recordings` of one day, p95", f"{p95(days):.1f} ms", "≤ 50 ms"),
        ("events page, first screen in chromium", f"{screen:.2f} s", "≤ 1 s"),
        ("remux of a 15-minute 720p segment: time to first byte", f"{ttfb:.3f} s "
         f"(whole file {total:.2f} s)", "≤ 0.3 s"),
        ("the same again (cached): time to first byte", f"{cached:.3f} s "
         f"(whole file {cached_total:.2f} s)", "—"),
        ("peak RSS added while remuxing and serving it (at most)",
         f"{max(0, hwm1 - rss0) / 1024:.1f} MB", "≤ 20 MB"),
    ])
    print(body)
    if not args.no_write:
        write_section("review", "Review pages: API, first screen, remux on demand", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
