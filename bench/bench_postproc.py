"""postproc: conversion time against cp, alert latency from pancake's edge, peak RSS at work."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import table, write_section  # noqa: E402
from raspberry_pancake.postproc.convert import ConvertSettings, Job, convert, fsync_path  # noqa: E402
from tests.postproc_servers import (  # noqa: E402
    FakeBotApi,
    PostprocProcess,
    SshServer,
    bot_api,
    free_port,
    send_event,
    wait_for,
    wait_socket,
)

OUT = ROOT / "bench" / "out"
WIDTH, HEIGHT, FPS = 1280, 720, 30
BITRATE = 4_000_000  # a typical 720p30 camera stream
DETECT_INTERVAL = 0.25
EDGES = 20
# A long detection clip: its mp4 is sent whole as a Telegram video.
CLIP_MINUTES = 1.0


def segment(minutes: float) -> Path:
    """A raw 720p30 libx264 segment (cached in bench/out) and its .pts sidecar."""
    frames = int(minutes * 60 * FPS)
    path = OUT / f"20240623-1700-{WIDTH}x{HEIGHT}-{frames}.h264"
    if path.exists() and path.with_suffix(".pts").exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"encoding {frames} frames of {WIDTH}x{HEIGHT} (once; cached in {OUT})", flush=True)
    tmp = path.with_suffix(".partial")
    with av.open(str(tmp), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = BITRATE
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS),
                          "bf": "0"}
        with av.open(f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}", format="lavfi") as src:
            for n, frame in enumerate(src.decode(video=0)):
                if n >= frames:
                    break
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    # Capture times with the jitter of a real camera, one frame in 200 dropped.
    lines, t, step = [], 0.0, 1000.0 / FPS
    for n in range(frames):
        lines.append(f"{t:.3f}\n")
        t += step * (2 if n % 200 == 199 else 1) + (0.7 if n % 2 else -0.7)
    path.with_suffix(".pts").write_text("# timecode format v2\n" + "".join(lines))
    tmp.rename(path)
    return path


def bench_ffmpeg_copy(src: Path, runs: int) -> float | None:
    """Median seconds of the ffmpeg CLI doing the same remux in C (`-c copy`), fsynced: the
    floor set by FFmpeg's raw H.264 parser, for context. None without ffmpeg."""
    if shutil.which("ffmpeg") is None:
        return None
    times = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        out = Path(tmp) / "ffmpeg.mp4"
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "h264", "-i", str(src),
                            "-c", "copy", "-movflags", "+faststart", str(out)], check=True)
            fsync_path(out)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_convert(src: Path, runs: int) -> tuple[float, float, float]:
    """Median seconds of convert() and of `cp` on the same file (page cache warm for both), each
    until its output is on disk: convert fsyncs before its rename, so the copy is fsynced too."""
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        work = Path(tmp)
        subprocess.run(["cp", str(src), str(work / "warm")], check=True)
        cp_times, conv_times = [], []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(["cp", str(src), str(work / "copy.h264")], check=True)
            fsync_path(work / "copy.h264")
            cp_times.append(time.perf_counter() - started)
            (work / "copy.h264").unlink()
            started = time.perf_counter()
            convert(ConvertSettings(work, float(FPS)), Job(src, pts=src.with_suffix(".pts")))
            conv_times.append(time.perf_counter() - started)
        conv, cp = statistics.median(conv_times), statistics.median(cp_times)
    return conv, cp, conv / cp


CUSTOMIZE = '''import time

_was = False
_EDGES = {edges!r}


def detect() -> bool:
    """True for 1 s of every 2.5 s; records the time of each call that first returns True."""
    global _was
    now = time.time()
    on = (now % 2.5) < 1.0
    if on and not _was:
        with open(_EDGES, "a") as f:
            f.write(f"{{now}}\\n")
    _was = on
    return on
'''


def bench_latency(work: Path) -> tuple[float, float, int]:
    """detect() returns True → the Bot API server receives the text: p95 and max, seconds."""
    edges_file = work / "edges.txt"
    customize = work / "customize_bench.py"
    customize.write_text(CUSTOMIZE.format(edges=str(edges_file)))
    h264, mp4 = work / "h264", work / "mp4"
    h264.mkdir()
    mp4.mkdir()
    name = f"pp-bench-{uuid.uuid4().hex[:8]}"
    with bot_api() as api:
        post = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
                                "--notify-telegram", "env:PP_TOKEN", "1",
                                "--telegram-api-url", api.base_url],
                               work / "postproc.log", env={"PP_TOKEN": "1:bench"})
        wait_socket(name)
        log = (work / "pancake.log").open("wb")
        pancake = subprocess.Popen(
            [sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
             "--port", str(free_port()), "--fps", "12", "--detect", "no-image",
             "--detect-interval", str(DETECT_INTERVAL), "--customize", str(customize),
             "--emit", name], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            def received() -> list[float]:
                return [c.at for c in api.edge_alerts()
                        if (c.fields.get("text") or c.fields["caption"]).startswith(
                            "Detection at")]
            wait_for(lambda: len(received()) >= EDGES + 1, 40 + EDGES * 5)
        finally:
            pancake.send_signal(signal.SIGTERM)
            pancake.wait(15)
            log.close()
            post.terminate()
        turned = [float(x) for x in edges_file.read_text().split()]
        got = received()
    # The first edge may predate postproc's readiness in pancake's start-up; skip it.
    delays = [r - t for t, r in zip(turned[1:EDGES + 1], got[1:EDGES + 1], strict=False)]
    delays.sort()
    p95 = delays[max(0, round(0.95 * len(delays)) - 1)]
    return p95, delays[-1], len(delays)


# Loads another notify.py in place of the package's (with --old-notify), before postproc starts.
OLD_NOTIFY = '''import importlib.util, sys
spec = importlib.util.spec_from_file_location("raspberry_pancake.postproc.notify", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
'''


def notify_env(old_notify: Path | None, work: Path) -> dict[str, str]:
    """The environment for a postproc run that uses `old_notify` (None: the package's own)."""
    env = {"PP_TOKEN": "1:bench"}
    if old_notify is not None:
        site = work / "old-notify-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(OLD_NOTIFY.format(path=str(old_notify)))
        env["PYTHONPATH"] = f"{site}:{ROOT}"
    return env


def bench_rss(src: Path, work: Path, telegram: bool,
              old_notify: Path | None = None) -> tuple[float, float, float]:
    """Peak RSS (VmHWM) of postproc converting the segment and uploading it over SFTP; with
    `telegram`, alerts configured too (notify's Bot API client loaded and connected)."""
    work.mkdir()
    h264, mp4 = work / "rss-h264", work / "rss-mp4"
    h264.mkdir()
    mp4.mkdir()
    # Catch-up takes regular files only (never a symlink): a copy.
    shutil.copyfile(src, h264 / src.name)
    shutil.copyfile(src.with_suffix(".pts"), (h264 / src.name).with_suffix(".pts"))
    # Catch-up takes an .h264 the catalog does not know only once it has settled (60 s
    # untouched): the copies are dated an hour back, as a finished recording would be.
    settled = time.time() - 3600
    for copy in (h264 / src.name, (h264 / src.name).with_suffix(".pts")):
        os.utime(copy, (settled, settled))
    sshd = SshServer(work / "sshd")
    name = f"pp-bench-{uuid.uuid4().hex[:8]}"
    api = FakeBotApi() if telegram else None
    alerts = ["--notify-telegram", "env:PP_TOKEN", "1", "--telegram-api-url",
              api.base_url] if api else []
    post = PostprocProcess([name, "--convert", str(mp4), str(FPS), "--h264-dir", str(h264),
                            "--upload-after-convert", "1",
                            "--upload-scp", "root@127.0.0.1", str(sshd.port),
                            str(sshd.remote / "cam"), "--known-hosts", str(sshd.known_hosts),
                            "--ssh-key", str(sshd.client_key), *alerts], work / "rss.log",
                           env=notify_env(old_notify, work))
    status = Path(f"/proc/{post.proc.pid}/status")
    try:
        wait_socket(name)
        started = time.monotonic()
        post.wait_log("uploaded", timeout=600)
        took = time.monotonic() - started
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        hwm = int(fields["VmHWM"].split()[0]) / 1024
    finally:
        post.terminate()
        sshd.stop()
        if api is not None:
            api.stop()
    size = src.stat().st_size / 1e6
    return hwm, took, size


def bench_clip_rss(clip_src: Path, work: Path,
                   old_notify: Path | None = None) -> tuple[float, float]:
    """Peak RSS of postproc converting a detection clip and sending it as a Telegram video;
    returns (MB, the mp4's size in MB)."""
    work.mkdir()
    h264, mp4 = work / "clip-h264", work / "clip-mp4"
    h264.mkdir()
    mp4.mkdir()
    name = f"pp-bench-{uuid.uuid4().hex[:8]}"
    with bot_api() as api:
        post = PostprocProcess([name, "--convert", str(mp4), str(FPS), "--h264-dir", str(h264),
                                "--notify-telegram", "env:PP_TOKEN", "1",
                                "--telegram-api-url", api.base_url], work / "clip.log",
                               env=notify_env(old_notify, work))
        status = Path(f"/proc/{post.proc.pid}/status")
        try:
            wait_socket(name)
            clip = h264 / "20240623-180511.h264"
            shutil.copyfile(clip_src, clip)
            shutil.copyfile(clip_src.with_suffix(".pts"), clip.with_suffix(".pts"))
            send_event(name, {"h264": str(clip), "detection": True,
                              "pts": str(clip.with_suffix(".pts"))})
            wait_for(lambda: api.calls_to("sendVideo"), 120)
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            hwm = int(fields["VmHWM"].split()[0]) / 1024
        finally:
            post.terminate()
    return hwm, (mp4 / "20240623-180511.mp4").stat().st_size / 1e6


def compare_memory(src: Path, runs: int, old_notify: Path | None) -> None:
    """The Telegram memory rows `runs` times, this notify.py and `old_notify` in turn (so both
    see the same load), and the row without Telegram for reference; the medians printed."""
    rows: dict[str, list[float]] = {}
    variants = [("this notify.py", None)] + ([(f"{old_notify.name}", old_notify)]
                                             if old_notify is not None else [])
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for run in range(runs):
            hwm, _, _ = bench_rss(src, Path(tmp) / f"{run}-bare", telegram=False)
            rows.setdefault("converting + SFTP, no Telegram", []).append(hwm)
            print(f"run {run + 1} without Telegram: {hwm:.1f} MB", flush=True)
            for index, (label, old) in enumerate(variants):
                work = Path(tmp) / f"{run}-{index}"
                work.mkdir()
                hwm, _, _ = bench_rss(src, work / "sftp+telegram", telegram=True,
                                      old_notify=old)
                hwm_clip, _ = bench_clip_rss(segment(CLIP_MINUTES), work / "clip", old)
                rows.setdefault(f"{label}: converting + SFTP, Telegram configured", []).append(
                    hwm)
                rows.setdefault(f"{label}: a {CLIP_MINUTES:g}-minute clip sent as a video",
                                []).append(hwm_clip)
                print(f"run {run + 1} {label}: {hwm:.1f} MB, clip {hwm_clip:.1f} MB",
                      flush=True)
    for name, values in rows.items():
        print(f"peak RSS, {name}: median {statistics.median(values):.1f} MB "
              f"({', '.join(f'{v:.1f}' for v in values)})", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=15.0, help="segment length (default 15)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--old-notify", type=Path, metavar="FILE",
                   help="another notify.py (e.g. the python-telegram-bot one) to compare the "
                        "Telegram memory rows with, run by run, interleaved: printed only")
    p.add_argument("--memory-only", action="store_true",
                   help="only the memory rows, printed (BENCHMARKS.md is left as it is)")
    a = p.parse_args()
    src = segment(a.minutes)
    if a.memory_only or a.old_notify is not None:
        compare_memory(src, a.runs, a.old_notify.resolve() if a.old_notify else None)
        if a.memory_only:
            return 0
    conv, cp, ratio = bench_convert(src, a.runs)
    ffcopy = bench_ffmpeg_copy(src, a.runs)
    print(f"convert {conv:.2f} s, cp {cp:.2f} s, ratio {ratio:.2f}, ffmpeg -c copy {ffcopy}",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        p95, worst, n = bench_latency(Path(tmp))
    print(f"alert latency p95 {p95:.3f} s, max {worst:.3f} s over {n} edges", flush=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        hwm, took, size = bench_rss(src, Path(tmp) / "sftp", telegram=False)
        hwm_tg, _, _ = bench_rss(src, Path(tmp) / "sftp+telegram", telegram=True)
        hwm_clip, clip_mb = bench_clip_rss(segment(CLIP_MINUTES), Path(tmp) / "clip")
    print(f"peak RSS {hwm:.1f} MB converting and uploading {size:.0f} MB in {took:.1f} s; "
          f"{hwm_tg:.1f} MB with Telegram configured too; {hwm_clip:.1f} MB sending a "
          f"{clip_mb:.0f} MB clip as a video", flush=True)
    mb = src.stat().st_size / 1e6
    body = (f"A {a.minutes:g}-minute {WIDTH}x{HEIGHT} {FPS} fps libx264 segment "
            f"({mb:.0f} MB, .pts sidecar), page cache warm; median of {a.runs}.\n"
            f"Alert latency: pancake on testsrc with `--detect-interval {DETECT_INTERVAL}`, "
            f"detect() stamping the call that first returns True; the local Bot API server "
            f"stamping the request (a sendPhoto: pancake attaches the edge's snapshot).\n\n")
    body += table([
        ("convert (PyAV remux, moov first)", f"{conv:.2f} s", ""),
        ("`cp` of the same file", f"{cp:.2f} s", ""),
        ("convert ÷ cp", f"{ratio:.2f}", "≤ 3"),
        ("`ffmpeg -c copy` of the same file (the C floor: FFmpeg's H.264 parser)",
         f"{ffcopy:.2f} s" if ffcopy is not None else "ffmpeg not installed", ""),
        (f"alert latency p95 ({n} edges)", f"{p95:.3f} s (max {worst:.3f} s)",
         f"≤ {DETECT_INTERVAL + 0.5:g} s (detect-interval + 0.5 s)"),
        ("peak RSS, converting + SFTP upload", f"{hwm:.1f} MB ({took:.0f} s for both)",
         "≤ 80 MB"),
        ("the same with Telegram alerts configured", f"{hwm_tg:.1f} MB", "≤ 80 MB"),
        (f"converting a {CLIP_MINUTES:g}-minute clip and sending it as a Telegram video",
         f"{hwm_clip:.1f} MB ({clip_mb:.0f} MB clip)", "≤ 80 MB"),
    ])
    write_section("postproc", "postproc: conversion, alert latency, memory", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
