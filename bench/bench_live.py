"""Live view: frame age (loopback, 2 Mbit/s, beside push MJPEG), CPU per viewer, JPEG against H.264."""

from __future__ import annotations

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
# (d) JPEG against H.264: a recording camera (the H.264 exists anyway) at 720p and 10 fps, so
# both viewers get the same 10 pictures a second.
H264_FPS = 10
RUN_SLOW = 20.0
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
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


def start_pancake(port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc", "--port", str(port),
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


H264_PATH = "/websocket?codec=h264"


def jpeg_vs_h264() -> list[tuple[str, str, str]]:
    """(d): one pancake recording 720p at 10 fps; CPU and bytes a second with one JPEG viewer,
    one H.264 viewer and two H.264 viewers, runs alternated; then H.264 read at 2 Mbit/s."""
    port = free_port()
    log = ROOT / "bench" / "out" / "bench_live-h264-pancake.log"
    with tempfile.TemporaryDirectory(prefix="bench-live-") as rec:
        proc = start_pancake(port, log, ["--fps", str(H264_FPS), "--max-stream-fps",
                                         str(H264_FPS), "--record-continuous", rec])
        try:
            time.sleep(2.0)
            cpu: dict[str, list[float]] = {"none": [], "jpeg": [], "h264": [], "h264x2": []}
            rate: dict[str, list[float]] = {k: [] for k in cpu}
            fps: dict[str, list[float]] = {k: [] for k in cpu}
            kinds = {"none": [], "jpeg": ["/websocket"], "h264": [H264_PATH],
                     "h264x2": [H264_PATH, H264_PATH]}
            for kind in ("none", "jpeg", "h264", "h264x2", "jpeg", "h264", "h264x2"):
                viewers = [Viewer(port, path=path) for path in kinds[kind]]
                time.sleep(0.5)
                c0, w0 = cpu_seconds(proc.pid), time.monotonic()
                run_viewers(viewers, RUN_CPU) if viewers else time.sleep(RUN_CPU)
                wall = time.monotonic() - w0
                cpu[kind].append((cpu_seconds(proc.pid) - c0) / wall)
                if viewers:
                    rate[kind].append(viewers[0].received / wall)
                    fps[kind].append(len(viewers[0].ages) / wall)
            slow = Viewer(port, bps=THROTTLE_BPS, rcvbuf=SMALL_RCVBUF, path=H264_PATH)
            t0 = time.time()
            run_viewers([slow], RUN_SLOW)
            slow_ages = after_warmup(slow.ages, t0)
            loop = Viewer(port, path=H264_PATH)
            t1 = time.time()
            run_viewers([loop], RUN_CPU)
            loop_ages = after_warmup(loop.ages, t1)
        finally:
            stop_pancake(proc)
    m = {k: statistics.mean(v) if v else 0.0 for k, v in cpu.items()}
    b = {k: statistics.mean(v) if v else 0.0 for k, v in rate.items()}
    f = {k: statistics.mean(v) if v else 0.0 for k, v in fps.items()}
    early = [a for at, a in slow.ages if t0 + 1 <= at < t0 + 6]
    late = [a for at, a in slow.ages if at >= t0 + RUN_SLOW - 5]
    print(f"(d) CPU none {m['none'] * 100:.1f} %, JPEG {m['jpeg'] * 100:.1f} %, H.264 "
          f"{m['h264'] * 100:.1f} %, 2 H.264 {m['h264x2'] * 100:.1f} %; bytes/s JPEG "
          f"{b['jpeg'] / 1024:.0f} KiB, H.264 {b['h264'] / 1024:.0f} KiB; 2 Mbit/s H.264 p95 "
          f"{pct(slow_ages, 95) * 1000:.0f} ms", flush=True)
    interval_ms = 1000 / H264_FPS
    return [
        ("(d) pancake CPU, no viewer (recording)", f"{m['none'] * 100:.1f} %", ""),
        ("(d) pancake CPU, 1 JPEG viewer", f"{m['jpeg'] * 100:.1f} %", ""),
        ("(d) pancake CPU, 1 H.264 viewer", f"{m['h264'] * 100:.1f} %", ""),
        ("(d) pancake CPU, 2 H.264 viewers", f"{m['h264x2'] * 100:.1f} %", ""),
        ("(d) CPU, 1 H.264 viewer ÷ 1 JPEG viewer", f"{m['h264'] / m['jpeg']:.3f}", "≤ 0.7"),
        ("(d) CPU, 2 H.264 viewers ÷ 1", f"{m['h264x2'] / m['h264']:.3f}", "≤ 1.02"),
        ("(d) frames a second, JPEG / H.264 viewer", f"{f['jpeg']:.1f} / {f['h264']:.1f}", ""),
        ("(d) bytes a second to the JPEG viewer", f"{b['jpeg'] / 1024:.0f} KiB", ""),
        ("(d) bytes a second to the H.264 viewer", f"{b['h264'] / 1024:.0f} KiB", ""),
        ("(d) bytes a second, H.264 ÷ JPEG", f"{b['h264'] / b['jpeg']:.3f}", "≤ 0.5"),
        ("(d) H.264 loopback: frame age p95", f"{pct(loop_ages, 95) * 1000:.0f} ms",
         f"≤ {interval_ms + 40:.0f} ms (1 frame interval + 40 ms)"),
        ("(d) H.264 at 2 Mbit/s: frame age p95", f"{pct(slow_ages, 95) * 1000:.0f} ms",
         "≤ 1200 ms"),
        ("(d) H.264 at 2 Mbit/s: median age, first 5 s / last 5 s",
         f"{statistics.median(early) * 1000:.0f} / {statistics.median(late) * 1000:.0f} ms",
         "not growing"),
        ("(d) H.264 at 2 Mbit/s: frames a second", f"{len(slow_ages) / (RUN_SLOW - 1):.1f}", ""),
    ]


def main() -> int:
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

    h264_rows = jpeg_vs_h264()
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
        + f"\n\n(d) JPEG against H.264 (/websocket?codec=h264): a second pancake, recording "
        f"(--record-continuous, so its encoder runs either way), {WIDTH}x{HEIGHT} at "
        f"{H264_FPS} fps with --max-stream-fps {H264_FPS}, so both viewers get every frame; "
        f"runs alternated, each {RUN_CPU:g} s, twice. Bytes: the websocket binary messages "
        f"(header + picture). H.264 at 2 Mbit/s: one viewer read as in (b), {RUN_SLOW:g} s.\n\n"
        + table(h264_rows)
    )
    write_section("live", "Live view (pancake.py web page)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
