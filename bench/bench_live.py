"""Live view: frame age (loopback, 2 Mbit/s, beside push MJPEG), CPU per viewer, JPEG against H.264."""

from __future__ import annotations

import argparse
import base64
import http.server
import os
import signal
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import table, write_section  # noqa: E402

HOST = "127.0.0.1"
WIDTH, HEIGHT, FPS, MAX_STREAM_FPS = 1280, 720, 25, 10
THROTTLE_BPS = 2_000_000
SMALL_RCVBUF = 16 * 1024
RUN_A, RUN_B, RUN_CPU = 15.0, 20.0, 8.0
# (d) JPEG against H.264 at the conditions: a recording camera (the H.264 exists
# anyway) at 720p and 30 fps; JPEG viewers get --max-stream-fps (10), H.264 ones all 30.
H264_FPS = 30
ROUNDS, RUN_ROUND, RUN_SLOW = 8, 12.0, 60.0
HEADER = struct.Struct("!Qdff")  # web/handlers.py's HEADER: seq, capture wall, age at send, hold
ACK = b"read_frame"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ThrottledSocket:
    """Reads from a loopback socket no faster than `bps` bits a second (None: as fast as it can)."""

    def __init__(self, sock: socket.socket, bps: float | None) -> None:
        self.sock = sock
        self.bps = bps
        self.start = time.monotonic()
        self.read = 0
        self.buf = b""

    def _fill(self) -> bool:
        if self.bps is not None:
            due = self.start + self.read * 8 / self.bps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        chunk = self.sock.recv(4096 if self.bps is not None else 1 << 20)
        if not chunk:
            return False
        self.read += len(chunk)
        self.buf += chunk
        return True

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("closed")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed")
        out, _, self.buf = self.buf.partition(b"\r\n")
        return out


def connect(port: int, rcvbuf: int | None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
    s.connect((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


@dataclass
class Viewer:
    """A websocket viewer of pancake written on raw sockets, so its reading can be throttled."""

    port: int
    bps: float | None = None
    rcvbuf: int | None = None
    ages: list[tuple[float, float]] = field(default_factory=list)  # (time.time(), age s)
    stop: threading.Event = field(default_factory=threading.Event)
    on_frame: object = None
    path: str = "/websocket"  # "/websocket?codec=h264": H.264 access units
    received: int = 0  # bytes of binary messages (header + picture)

    def run(self) -> None:
        sock = connect(self.port, self.rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        r = ThrottledSocket(sock, self.bps)
        status = r.line()
        assert status.startswith(b"HTTP/1.1 101"), status
        while r.line():
            pass
        try:
            while not self.stop.is_set():
                opcode, payload = self._message(r)
                if opcode == 8:
                    return
                if opcode == 9:  # ping: pancake closes a viewer that does not answer in 20 s
                    sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                    continue
                if opcode != 2:
                    continue  # status text
                self.received += len(payload)
                _seq, wall, _age, _hold = HEADER.unpack_from(payload)
                now = time.time()
                self.ages.append((now, now - wall))
                if self.on_frame is not None:
                    self.on_frame(payload[HEADER.size:], wall)  # type: ignore[operator]
                sock.sendall(bytes([0x81, 0x80 | len(ACK)]) + b"\0\0\0\0" + ACK)
        except (ConnectionError, OSError):
            return
        finally:
            sock.close()

    @staticmethod
    def _message(r: ThrottledSocket) -> tuple[int, bytes]:
        b0, b1 = r.exactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(r.exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(r.exactly(8), "big")
        return b0 & 0x0F, r.exactly(n)


class PushMjpeg:
    """A push MJPEG server, as picamera2's mjpeg_server example and motion serve: every client
    gets each newest frame written as soon as its previous write returned, ack or no ack."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frame: tuple[bytes, float] | None = None
        self.count = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=FRAME")
                self.end_headers()
                seen = 0
                try:
                    while True:
                        with outer.cond:
                            last = seen
                            outer.cond.wait_for(lambda last=last: outer.count > last)  # type: ignore[misc]
                            assert outer.frame is not None
                            jpeg, wall = outer.frame
                            seen = outer.count
                        self.wfile.write(b"--FRAME\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpeg)}\r\n"
                                           f"X-Capture-Time: {wall!r}\r\n\r\n".encode()
                                         + jpeg + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="push-mjpeg", daemon=True).start()

    def publish(self, jpeg: bytes, wall: float) -> None:
        with self.cond:
            self.frame = (jpeg, wall)
            self.count += 1
            self.cond.notify_all()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def push_client(port: int, bps: float, ages: list[tuple[float, float]], stop: threading.Event) -> None:
    sock = connect(port, SMALL_RCVBUF)
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    r = ThrottledSocket(sock, bps)
    try:
        while r.line():
            pass
        while not stop.is_set():
            line = r.line()
            if line != b"--FRAME":
                continue
            headers = {}
            while (h := r.line()):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            r.exactly(int(headers["content-length"]) + 2)
            now = time.time()
            ages.append((now, now - float(headers["x-capture-time"])))
    except (ConnectionError, OSError):
        return
    finally:
        sock.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of process `pid`, or of its thread `tid` (pid itself: the main thread,
    which runs pancake's event loop and so all of the web side's work)."""
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_viewers(viewers: list[Viewer], seconds: float) -> None:
    threads = [threading.Thread(target=v.run, daemon=True) for v in viewers]
    for t in threads:
        t.start()
    time.sleep(seconds)
    for v in viewers:
        v.stop.set()
    for t in threads:
        t.join(5)


def after_warmup(ages: list[tuple[float, float]], t0: float) -> list[float]:
    return [a for at, a in ages if at >= t0 + 1.0]


H264_PATH = "/websocket?codec=h264"
# What each run of (d) connects: no viewer, one JPEG viewer, one and two H.264 viewers.
KINDS: dict[str, list[str]] = {"none": [], "jpeg": ["/websocket"], "h264": [H264_PATH],
                               "h264x2": [H264_PATH, H264_PATH]}
PEOPLE = ROOT / "tests" / "data" / "people.mp4"


def start_pancake(port: int, log: Path, extra: list[str], source: str = "testsrc"
                  ) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(ROOT / "pancake.py"), "--source", source, "--port", str(port),
            "--bind", "127.0.0.1", "--resolution", str(WIDTH), str(HEIGHT), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"pancake did not start; see {log}") from None
            time.sleep(0.1)


def stop_pancake(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def people_clip(out: Path, fps: int, seconds: float) -> Path:
    """tests/data/people.mp4 (real fixed-camera footage, 320x240 at 10 fps, 16 s) as a
    `fps` clip of `seconds`: motion-interpolated to `fps` once (minterpolate), then looped
    ping-pong (forwards, backwards) so the loop has no jump. Encoded near-losslessly (CRF 12)
    so that this file adds no artefacts of its own; pancake scales it to the camera's size as
    it would any file."""
    import av  # only this part of the benchmark needs it
    import av.filter

    frames: list[av.VideoFrame] = []
    with av.open(str(PEOPLE)) as src:
        stream = src.streams.video[0]
        graph = av.filter.Graph()
        node = graph.add_buffer(template=stream)
        interp = graph.add("minterpolate", f"fps={fps}")
        sink = graph.add("buffersink")
        node.link_to(interp)
        interp.link_to(sink)
        graph.configure()
        for frame in src.decode(stream):
            graph.push(frame)
            while True:
                try:
                    frames.append(graph.pull())  # type: ignore[arg-type]
                except (av.BlockingIOError, av.EOFError):
                    break
    cycle = frames + frames[-2:0:-1]
    with av.open(str(out), "w") as dst:
        vs = dst.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        vs.options = {"crf": "12", "preset": "veryfast"}
        for i in range(int(seconds * fps)):
            image = av.VideoFrame.from_ndarray(cycle[i % len(cycle)].to_ndarray(),
                                               format="yuv420p")
            image.pts = i
            for packet in vs.encode(image):
                dst.mux(packet)
        for packet in vs.encode(None):
            dst.mux(packet)
    return out


@dataclass
class Runs:
    """Per kind of run, per round: pancake's CPU (share of a core), bytes and frames a second
    to the first viewer, and its frame ages after the run's first second."""

    cpu: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    loop: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    rate: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    fps: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    ages: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def mean(self, what: dict[str, list[float]], kind: str) -> float:
        return statistics.mean(what[kind]) if what[kind] else 0.0

    def ratios(self, top: str, bottom: str) -> list[float]:
        """top ÷ bottom within each round: the rounds' drift (other load) cancels."""
        return [a / b for a, b in zip(self.cpu[top], self.cpu[bottom], strict=True) if b > 0]


def interleaved(port: int, pid: int, kinds: list[str], rounds: int, seconds: float) -> Runs:
    """`rounds` rounds of one run of each kind, the order reversed every other round (ABBA),
    so that a slow drift in the machine's other load weighs on every kind alike."""
    runs = Runs()
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            viewers = [Viewer(port, path=path) for path in KINDS[kind]]
            time.sleep(0.5)
            c0, l0 = cpu_seconds(pid), cpu_seconds(pid, pid)
            w0, t0 = time.monotonic(), time.time()
            run_viewers(viewers, seconds) if viewers else time.sleep(seconds)
            wall = time.monotonic() - w0
            runs.cpu[kind].append((cpu_seconds(pid) - c0) / wall)
            runs.loop[kind].append((cpu_seconds(pid, pid) - l0) / wall)
            if viewers:
                runs.rate[kind].append(viewers[0].received / wall)
                ages = after_warmup(viewers[0].ages, t0)
                # After the first second: a new H.264 viewer starts at the last IDR, then
                # waits for the next one (up to a second).
                runs.fps[kind].append(len(ages) / (wall - 1.0))
                runs.ages[kind] += ages
    return runs


def spread(values: list[float]) -> str:
    """Median, and the range of the rounds."""
    return f"{statistics.median(values):.3f} (rounds {min(values):.3f} to {max(values):.3f})"


def jpeg_vs_h264(rounds: int, seconds: float, slow_seconds: float) -> tuple[list[tuple[str, str, str]], str]:
    """(d) the issue's table: one pancake recording 1280x720 at 30 fps (testsrc2), JPEG viewers
    at --max-stream-fps 10, H.264 viewers at the camera's 30; interleaved CPU rounds; then one
    H.264 viewer read at 2 Mbit/s for `slow_seconds`. (e) the same bytes (and CPU) with real
    footage (people.mp4 made a 30 fps clip) as the camera."""
    common = ["--fps", str(H264_FPS), "--max-stream-fps", str(MAX_STREAM_FPS)]
    out = ROOT / "bench" / "out"
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        port = free_port()
        rec = Path(tmp, "rec-testsrc")
        rec.mkdir()
        proc = start_pancake(port, out / "bench_live-h264-pancake.log",
                             [*common, "--record-continuous", str(rec)])
        try:
            time.sleep(2.0)
            test = interleaved(port, proc.pid, ["none", "jpeg", "h264", "h264x2"], rounds, seconds)
            slow = Viewer(port, bps=THROTTLE_BPS, rcvbuf=SMALL_RCVBUF, path=H264_PATH)
            t0 = time.time()
            run_viewers([slow], slow_seconds)
        finally:
            stop_pancake(proc)
        cpu = {k: test.mean(test.cpu, k) * 100 for k in KINDS}
        print(f"(d) CPU none {cpu['none']:.1f} %, JPEG {cpu['jpeg']:.1f} %, H.264 "
              f"{cpu['h264']:.1f} %, 2 H.264 {cpu['h264x2']:.1f} %; 2÷1 "
              f"{spread(test.ratios('h264x2', 'h264'))}", flush=True)

        people_rounds = max(2, rounds // 2)
        # Long enough for every run on it: a file that ends is played again after a pause.
        clip = people_clip(Path(tmp, "people-30fps.mp4"), H264_FPS,
                           people_rounds * 3 * (seconds + 1.0) + 10.0)
        port = free_port()
        rec = Path(tmp, "rec-people")
        rec.mkdir()
        proc = start_pancake(port, out / "bench_live-people-pancake.log",
                             [*common, "--record-continuous", str(rec)], source=str(clip))
        try:
            time.sleep(2.0)
            people = interleaved(port, proc.pid, ["none", "jpeg", "h264"], people_rounds, seconds)
        finally:
            stop_pancake(proc)

    slow_ages = after_warmup(slow.ages, t0)
    early = [a for at, a in slow.ages if t0 + 1 <= at < t0 + 6]
    late = [a for at, a in slow.ages if at >= t0 + slow_seconds - 5]
    loop_ages = test.ages["h264"] + test.ages["h264x2"]
    m, b, f = test.mean, test.rate, test.fps
    c, lp = test.cpu, test.loop
    pb, pc = people.rate, people.cpu
    print(f"(d) bytes/s JPEG {m(b, 'jpeg') / 1024:.0f} KiB, H.264 {m(b, 'h264') / 1024:.0f} KiB; "
          f"people: JPEG {people.mean(pb, 'jpeg') / 1024:.0f} KiB, H.264 "
          f"{people.mean(pb, 'h264') / 1024:.0f} KiB; 2 Mbit/s H.264 p95 "
          f"{pct(slow_ages, 95) * 1000:.0f} ms", flush=True)
    interval_ms = 1000 / H264_FPS
    rows = [
        ("(d) pancake CPU, no viewer (recording)", f"{m(c, 'none') * 100:.1f} %", ""),
        ("(d) pancake CPU, 1 JPEG viewer (10 fps)", f"{m(c, 'jpeg') * 100:.1f} %", ""),
        ("(d) pancake CPU, 1 H.264 viewer (30 fps)", f"{m(c, 'h264') * 100:.1f} %", ""),
        ("(d) pancake CPU, 2 H.264 viewers", f"{m(c, 'h264x2') * 100:.1f} %", ""),
        ("(d) 1. CPU, 1 H.264 viewer ÷ 1 JPEG viewer at 10 fps",
         spread(test.ratios("h264", "jpeg")), "≤ 0.7"),
        ("(d) 2. CPU, 2 H.264 viewers ÷ 1", spread(test.ratios("h264x2", "h264")), "≤ 1.02"),
        ("(d) 2. the same, ratio of the means",
         f"{m(c, 'h264x2') / m(c, 'h264'):.3f}", "≤ 1.02"),
        ("(d) the event loop thread's CPU (all of the web side), no viewer / 1 / 2 H.264",
         f"{m(lp, 'none') * 100:.2f} / {m(lp, 'h264') * 100:.2f} / {m(lp, 'h264x2') * 100:.2f} %",
         ""),
        ("(d) 2. the same from the loop thread alone (less noise): (1 viewer's CPU + the "
         "loop's extra for the 2nd) ÷ 1 viewer's CPU",
         f"{(m(c, 'h264') + m(lp, 'h264x2') - m(lp, 'h264')) / m(c, 'h264'):.3f}", "≤ 1.02"),
        ("(d) what the live view itself costs: (1 H.264 - no viewer) ÷ (1 JPEG - no viewer)",
         f"{(m(c, 'h264') - m(c, 'none')) / (m(c, 'jpeg') - m(c, 'none')):.2f}", ""),
        ("(d) frames a second after the first second, JPEG / H.264 viewer",
         f"{m(f, 'jpeg'):.1f} / {m(f, 'h264'):.1f}",
         f"{MAX_STREAM_FPS} / {H264_FPS}"),
        ("(d) bytes a second to the JPEG viewer (testsrc2)", f"{m(b, 'jpeg') / 1024:.0f} KiB", ""),
        ("(d) bytes a second to the H.264 viewer (testsrc2)", f"{m(b, 'h264') / 1024:.0f} KiB", ""),
        ("(d) 3. bytes a second, H.264 at 30 fps ÷ JPEG at 10 fps, testsrc2 (worst case)",
         f"{m(b, 'h264') / m(b, 'jpeg'):.3f}", "≤ 0.5"),
        ("(e) bytes a second to the JPEG viewer (people.mp4)",
         f"{people.mean(pb, 'jpeg') / 1024:.0f} KiB", ""),
        ("(e) bytes a second to the H.264 viewer (people.mp4)",
         f"{people.mean(pb, 'h264') / 1024:.0f} KiB", ""),
        ("(e) 3. bytes a second, H.264 at 30 fps ÷ JPEG at 10 fps, people.mp4 (the CCTV figure)",
         f"{people.mean(pb, 'h264') / people.mean(pb, 'jpeg'):.3f}", "≤ 0.5"),
        ("(e) frames a second, JPEG / H.264 viewer (people.mp4)",
         f"{people.mean(people.fps, 'jpeg'):.1f} / {people.mean(people.fps, 'h264'):.1f}", ""),
        ("(e) pancake CPU, no viewer / 1 JPEG / 1 H.264 (people.mp4)",
         f"{people.mean(pc, 'none') * 100:.1f} / {people.mean(pc, 'jpeg') * 100:.1f} / "
         f"{people.mean(pc, 'h264') * 100:.1f} %", ""),
        ("(e) CPU, 1 H.264 viewer ÷ 1 JPEG viewer (people.mp4)",
         spread(people.ratios("h264", "jpeg")), ""),
        ("(d) H.264 loopback: frame age p50", f"{pct(loop_ages, 50) * 1000:.0f} ms", ""),
        ("(d) 4. H.264 loopback: frame age p95", f"{pct(loop_ages, 95) * 1000:.0f} ms",
         f"≤ {interval_ms + 40:.0f} ms (1 frame interval + 40 ms)"),
        ("(d) H.264 loopback: frame age p99", f"{pct(loop_ages, 99) * 1000:.0f} ms", ""),
        (f"(d) 5. H.264 at 2 Mbit/s for {slow_seconds:g} s: frame age p95",
         f"{pct(slow_ages, 95) * 1000:.0f} ms", "≤ 1200 ms"),
        ("(d) 5. H.264 at 2 Mbit/s: median age, first 5 s / last 5 s",
         f"{statistics.median(early) * 1000:.0f} / {statistics.median(late) * 1000:.0f} ms",
         "not growing"),
        ("(d) H.264 at 2 Mbit/s: frames a second", f"{len(slow_ages) / (slow_seconds - 1):.1f}",
         ""),
    ]
    note = (f"(d) the issue's table (JPEG against H.264, /websocket?codec=h264): a second "
            f"pancake, recording (--record-continuous, so its encoder runs either way), "
            f"testsrc2 at {WIDTH}x{HEIGHT} and {H264_FPS} fps with --max-stream-fps "
            f"{MAX_STREAM_FPS}: the JPEG viewer gets {MAX_STREAM_FPS} pictures a second, an "
            f"H.264 viewer all {H264_FPS}. {rounds} rounds of one {seconds:g} s run of each "
            f"kind (no viewer, 1 JPEG, 1 H.264, 2 H.264), the order reversed every other round; "
            f"CPU ratios are taken within each round (the median, and the rounds' range). "
            f"Bytes: the websocket binary messages (header + picture). Frame age: the H.264 "
            f"viewers of those runs. H.264 at 2 Mbit/s: one viewer read as in (b), "
            f"{slow_seconds:g} s. testsrc2 is the worst case for H.264 (every pixel moves every "
            f"frame). (e) the same pancake with real footage as the camera: tests/data/"
            f"people.mp4 (a fixed camera over a square, people walking; 320x240 10 fps) "
            f"motion-interpolated to {H264_FPS} fps, looped, scaled by pancake to "
            f"{WIDTH}x{HEIGHT}; {max(2, rounds // 2)} rounds. Encoder: the default (libx264 "
            f"ultrafast, zerolatency, CRF 23, a keyframe every second).")
    return rows, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="(d): rounds of interleaved CPU runs (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=RUN_ROUND,
                        help="(d): seconds of each run (default %(default)s)")
    parser.add_argument("--slow-seconds", type=float, default=RUN_SLOW,
                        help="(d): seconds of the 2 Mbit/s H.264 viewer (default %(default)s)")
    parser.add_argument("--h264-only", action="store_true",
                        help="run (d) and (e) only and print their table; BENCHMARKS.md is "
                             "left alone")
    args = parser.parse_args()
    if args.rounds < 2 or args.seconds < 2 or args.slow_seconds < 12:
        parser.error("--rounds ≥ 2, --seconds ≥ 2, --slow-seconds ≥ 12")
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    if args.h264_only:
        rows, note = jpeg_vs_h264(args.rounds, args.seconds, args.slow_seconds)
        print(note + "\n\n" + table(rows))
        return 0
    port = free_port()
    log = ROOT / "bench" / "out" / "bench_live-pancake.log"
    log.parent.mkdir(exist_ok=True)
    argv = [sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc", "--port", str(port),
            "--bind", "127.0.0.1",
            "--resolution", str(WIDTH), str(HEIGHT), "--fps", str(FPS),
            "--max-stream-fps", str(MAX_STREAM_FPS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST, port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"pancake did not start; see {log}") from None
                time.sleep(0.1)
        time.sleep(2.0)  # let capture settle

        # (a) loopback, one viewer acking as fast as it shows.
        a = Viewer(port)
        t0 = time.time()
        run_viewers([a], RUN_A)
        ages_a = after_warmup(a.ages, t0)
        print(f"(a) loopback: {len(ages_a)} frames, p50 {pct(ages_a, 50) * 1000:.0f} ms, "
              f"p95 {pct(ages_a, 95) * 1000:.0f} ms", flush=True)

        # (b) pancake read at 2 Mbit/s, beside push MJPEG of the same frames read at 2 Mbit/s.
        push = PushMjpeg()
        sizes: list[int] = []

        def relay_frame(jpeg: bytes, wall: float) -> None:
            sizes.append(len(jpeg))
            push.publish(jpeg, wall)

        relay = Viewer(port, on_frame=relay_frame)
        slow = Viewer(port, bps=THROTTLE_BPS, rcvbuf=SMALL_RCVBUF)
        push_ages: list[tuple[float, float]] = []
        stop_push = threading.Event()
        pusher = threading.Thread(target=push_client,
                                  args=(push.port, THROTTLE_BPS, push_ages, stop_push), daemon=True)
        t0 = time.time()
        pusher.start()
        run_viewers([relay, slow], RUN_B)
        stop_push.set()
        push.close()
        pusher.join(5)
        ages_b = after_warmup(slow.ages, t0)
        ages_p = after_warmup(push_ages, t0)
        late = [a for at, a in push_ages if at >= t0 + RUN_B - 3]
        early = [a for at, a in push_ages if t0 + 1 <= at < t0 + 4]
        jpeg_kb = statistics.mean(sizes) / 1024
        print(f"(b) 2 Mbit/s: pancake {len(ages_b)} frames p50 {pct(ages_b, 50) * 1000:.0f} "
              f"p95 {pct(ages_b, 95) * 1000:.0f} ms; push {len(ages_p)} frames "
              f"p50 {pct(ages_p, 50) * 1000:.0f} p95 {pct(ages_p, 95) * 1000:.0f} ms, "
              f"first 3 s median {statistics.median(early) * 1000:.0f} ms, "
              f"last 3 s median {statistics.median(late) * 1000:.0f} ms", flush=True)

        # (c) CPU of the pancake process with two viewers against one (alternated, twice).
        cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
        for n in (0, 1, 2, 1, 2, 1, 2):
            viewers = [Viewer(port) for _ in range(n)]
            time.sleep(0.5)
            c0, w0 = cpu_seconds(proc.pid), time.monotonic()
            run_viewers(viewers, RUN_CPU) if viewers else time.sleep(RUN_CPU)
            cpu[n].append((cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0))
        one, two, none = (statistics.mean(cpu[1]), statistics.mean(cpu[2]),
                          statistics.mean(cpu[0]))
        print(f"(c) CPU: 0 viewers {none * 100:.0f} %, 1 viewer {one * 100:.0f} %, "
              f"2 viewers {two * 100:.0f} %, ratio {two / one:.3f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    h264_rows, h264_note = jpeg_vs_h264(args.rounds, args.seconds, args.slow_seconds)
    interval_ms = 1000 / MAX_STREAM_FPS
    body = (
        f"pancake.py --source testsrc --resolution {WIDTH} {HEIGHT} --fps {FPS} "
        f"--max-stream-fps {MAX_STREAM_FPS}; viewers are websocket clients on raw loopback "
        f"sockets that ack each frame on arrival. Age = arrival time - capture time (same "
        f"clock), first second dropped. Throttled readers read {THROTTLE_BPS / 1e6:g} Mbit/s "
        f"through a {SMALL_RCVBUF // 1024} KiB receive buffer; the push stream is the same JPEGs "
        f"(~{jpeg_kb:.0f} KiB each) relayed by the benchmark as multipart/x-mixed-replace, each "
        f"client written the newest frame as soon as its last write returned (picamera2's "
        f"mjpeg_server example). CPU: pancake's utime+stime ÷ wall time, mean of three "
        f"{RUN_CPU:g} s runs each.\n\n"
        + table([
            ("(a) loopback: frame age p50", f"{pct(ages_a, 50) * 1000:.0f} ms", ""),
            ("(a) loopback: frame age p95", f"{pct(ages_a, 95) * 1000:.0f} ms",
             f"≤ {interval_ms + 30:.0f} ms (1/max-stream-fps + 30 ms)"),
            ("(a) loopback: frames a second to the viewer", f"{len(ages_a) / (RUN_A - 1):.1f}",
             f"≤ {MAX_STREAM_FPS * 1.1:g}"),
            ("(b) 2 Mbit/s, pancake (ack-paced): frame age p50",
             f"{pct(ages_b, 50) * 1000:.0f} ms", ""),
            ("(b) 2 Mbit/s, pancake (ack-paced): frame age p95",
             f"{pct(ages_b, 95) * 1000:.0f} ms", "≤ 500 ms"),
            ("(b) 2 Mbit/s, pancake: frames a second", f"{len(ages_b) / (RUN_B - 1):.1f}", ""),
            ("(b) 2 Mbit/s, push MJPEG: frame age p50", f"{pct(ages_p, 50) * 1000:.0f} ms", ""),
            ("(b) 2 Mbit/s, push MJPEG: frame age p95", f"{pct(ages_p, 95) * 1000:.0f} ms",
             "grows without bound"),
            ("(b) push MJPEG: median age, first 3 s of the run",
             f"{statistics.median(early) * 1000:.0f} ms", ""),
            (f"(b) push MJPEG: median age, last 3 s of the run ({RUN_B:g} s)",
             f"{statistics.median(late) * 1000:.0f} ms", "grows with the run's length"),
            ("(c) pancake CPU, no viewer", f"{none * 100:.1f} %", ""),
            ("(c) pancake CPU, 1 viewer", f"{one * 100:.1f} %", ""),
            ("(c) pancake CPU, 2 viewers", f"{two * 100:.1f} %", ""),
            ("(c) CPU 2 viewers ÷ 1 viewer", f"{two / one:.3f}", "≤ 1.05"),
        ])
        + f"\n\n{h264_note}\n\n"
        + table(h264_rows)
    )
    write_section("live", "Live view (pancake.py web page)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
