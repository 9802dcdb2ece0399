"""Helpers for the web tests: the real pancake.py, the web part in a thread (units), clients, a proxy."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from conftest import Pancake, run_pancake

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raspberry_pancake.recorder import config as recorder_config  # noqa: E402
from raspberry_pancake.recorder.frames import Frame, LatestFrame  # noqa: E402
from raspberry_pancake.recorder.state import RecorderState  # noqa: E402
from raspberry_pancake.recorder.web import app as web  # noqa: E402
from raspberry_pancake.recorder.web import handlers  # noqa: E402
from raspberry_pancake.recorder.web.jpeg import ImageEncoder  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port}")


class SyntheticCamera:
    """Publishes lavfi testsrc2 frames into a LatestFrame in real time, like the capture thread."""

    def __init__(self, hub: LatestFrame, state: RecorderState | None, width: int, height: int,
                 fps: float) -> None:
        self.hub = hub
        self.state = state
        self.size = (width, height)
        self.fps = fps
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-camera", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _frames(self) -> Iterator[av.VideoFrame]:
        w, h = self.size
        # Pre-decode one second and loop it: the test machine's CPU belongs to the server.
        spec = f"testsrc2=size={w}x{h}:rate={self.fps:g}"
        with av.open(spec, format="lavfi") as src:
            clip = []
            for frame in src.decode(video=0):
                clip.append(frame.reformat(format="yuv420p"))
                if len(clip) >= max(1, int(self.fps)):
                    break
        while True:
            yield from clip

    def _run(self) -> None:
        start = time.monotonic()
        for seq, image in enumerate(self._frames(), start=1):
            due = start + seq / self.fps
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self.hub.publish(Frame(seq, image, time.monotonic(), time.time()))
            if self.state is not None:
                self.state.capture_rate.tick()
            self.published = seq


class ServerThread:
    """recorder.web.app.run in a thread of this process, on loopback, fed by a SyntheticCamera."""

    def __init__(self, flags: list[str] | tuple[str, ...] = (), *, fps: float = 30.0,
                 size: tuple[int, int] = (320, 240), camera: bool = True,
                 encoder: ImageEncoder | None = None) -> None:
        self.port = free_port()
        self.encoder = encoder
        argv = ["--port", str(self.port), "--resolution", str(size[0]), str(size[1]),
                "--fps", f"{fps:g}", *flags]
        self.cfg = recorder_config.parse(argv)
        web.prepare(self.cfg)
        self.hub = LatestFrame()
        self.state = RecorderState(self.cfg, "testsrc", self.hub)
        self.camera = SyntheticCamera(self.hub, self.state, size[0], size[1], fps) if camera else None
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="test-web", daemon=True)

    def _serve(self) -> None:
        try:
            web.run(self.state, self.stop, address=HOST, encoder=self.encoder)
        except BaseException as exc:  # reported by __exit__ / the test
            self.error = exc

    def __enter__(self) -> ServerThread:
        if self.camera is not None:
            self.camera.start()
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return self
            time.sleep(0.02)
        raise TimeoutError("server thread did not listen")

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(5)
        if self.camera is not None:
            self.camera.stop()
        self.hub.close()
        assert not self._thread.is_alive(), "web.run did not return after stop"
        if self.error is not None:
            raise self.error

    def encodes(self) -> int:
        return int(get_json(self.port, "/status")["jpeg_encodes"])


LISTENING = "live view on http"  # the web part's line once it serves (https too)


def start_pancake(pancakes: list[Pancake], flags: list[str], cwd: Path,
                  env: dict[str, str] | None = None, timeout: float = 30.0) -> Pancake:
    """The real pancake.py on `--source testsrc`, loopback, its state in `cwd`/state unless
    `env` says otherwise; returns once the page is served."""
    env = {"XDG_STATE_HOME": str(cwd / "state"), **(env or {})}
    daemon = run_pancake(pancakes, ["--source", "testsrc", *flags], cwd, env)
    daemon.wait_for(LISTENING, timeout)
    wait_port(daemon.port, timeout)
    return daemon


def get(port: int, path: str, headers: dict[str, str] | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    import json

    status, _, body = get(port, path, headers)
    assert status == 200, (status, body[:200])
    result: dict[str, Any] = json.loads(body)
    return result


def set_cookies(response_headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in response_headers if k.lower() == "set-cookie"]


@dataclass
class LoginResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float

    def cookie(self, name: str) -> str | None:
        for line in set_cookies(self.headers):
            m = re.match(rf"{re.escape(name)}=([^;]*)", line)
            if m and m.group(1):
                return m.group(1)
        return None

    def set_cookie_line(self, name: str) -> str:
        for line in set_cookies(self.headers):
            if line.startswith(name + "="):
                return line
        raise AssertionError(f"no Set-Cookie for {name}: {self.headers}")


def xsrf(port: int) -> str:
    """An _xsrf token from the login page (the cookie and the form field carry the same one)."""
    status, _headers, body = get(port, "/login")
    m = re.search(rb'name="_xsrf" value="([^"]+)"', body)
    assert m, (status, body[:300])
    return m.group(1).decode()


def post_login(port: int, password: str | bytes, *, token: str | None = "auto",
               next_: str = "/") -> LoginResult:
    from urllib.parse import urlencode

    fields: dict[str, str | bytes] = {"password": password, "next": next_}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token == "auto":
        token = xsrf(port)
    if token is not None:
        fields["_xsrf"] = token
        headers["Cookie"] = f"_xsrf={token}"
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    start = time.monotonic()
    try:
        conn.request("POST", "/login", body=urlencode(fields), headers=headers)
        r = conn.getresponse()
        body = r.read()
        return LoginResult(r.status, r.getheaders(), body, time.monotonic() - start)
    finally:
        conn.close()


# --- websocket clients -------------------------------------------------------------------


class Session:
    """A client logged in to a pancake run with --login: its session cookie, the XSRF token
    the page `page` gave it, and JSON calls carrying both (or `headers` instead)."""

    def __init__(self, port: int, password: str, page: str = "/") -> None:
        from raspberry_pancake.recorder.web import handlers

        self.port = port
        result = post_login(port, password)
        cookie = result.cookie(handlers.SESSION_COOKIE)
        assert cookie, result.headers
        self.session = f"{handlers.SESSION_COOKIE}={cookie}"
        status, _, body = get(port, page, {"Cookie": self.session})
        assert status == 200, body[:300]
        m = re.search(rb'data-xsrf="([^"]+)"', body)
        assert m, body[:300]
        self.token = m.group(1).decode()
        self.headers = {"Cookie": f"{self.session}; _xsrf={self.token}",
                        "X-XSRFToken": self.token}

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        """(status, the JSON answer) — or the bytes when the answer is not JSON (a crop,
        Tornado's own page for no route)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={
                **(self.headers if headers is None else headers),
                **({"Content-Type": "application/json"} if data is not None else {})})
            r = conn.getresponse()
            got = r.read()
            if not r.getheader("Content-Type", "").startswith("application/json"):
                return r.status, got
            return r.status, json.loads(got) if got else {}
        finally:
            conn.close()


@dataclass
class Received:
    seq: int
    wall: float
    age: float
    hold: float
    jpeg: bytes
    at: float  # time.monotonic() when it arrived


def parse_frame(data: bytes) -> Received:
    seq, wall, age, hold = handlers.HEADER.unpack_from(data)
    return Received(seq, wall, age, hold, data[handlers.HEADER.size:], time.monotonic())


class WsClient:
    """tornado's websocket client with the protocol's two halves split out for tests."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.frames: list[Received] = []
        self.statuses: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, port: int, headers: dict[str, str] | None = None,
                      scheme: str = "ws", ssl_ctx: Any = None) -> WsClient:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        req = HTTPRequest(f"{scheme}://{HOST}:{port}/websocket", headers=headers or {},
                          ssl_options=ssl_ctx, connect_timeout=5, request_timeout=5)
        return cls(await websocket_connect(req))

    async def next_frame(self, timeout: float = 5.0) -> Received | None:
        """The next binary frame (status texts are collected on the way), None on timeout."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = await asyncio.wait_for(self.conn.read_message(), left)
            except TimeoutError:
                return None
            if msg is None:
                raise ConnectionError("websocket closed")
            if isinstance(msg, str):
                self.statuses.append(json.loads(msg))
                continue
            frame = parse_frame(msg)
            self.frames.append(frame)
            return frame

    async def ack(self) -> None:
        await self.conn.write_message(handlers.ACK)

    async def run_acking(self, seconds: float) -> int:
        """Ack every frame as soon as it arrives for `seconds`; the number of frames got."""
        end = time.monotonic() + seconds
        got = 0
        while time.monotonic() < end:
            frame = await self.next_frame(max(0.05, end - time.monotonic()))
            if frame is None:
                break
            got += 1
            await self.ack()
        return got

    def close(self) -> None:
        self.conn.close()


def stalled_socket(port: int) -> socket.socket:
    """A websocket that completes the handshake and then never reads again."""
    s = socket.create_connection((HOST, port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall((f"GET /websocket HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked websocket frame in `data` (server to client)."""
    out = []
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i:i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i:i + 8], "big")
            i += 8
        if i + n > len(data):
            break
        out.append((opcode, data[i:i + n]))
        i += n
    return out


class Proxy:
    """A loopback TCP proxy in front of `port` that can fail the way networks do, for the page:
    `freeze()` stops forwarding on every open connection, which stays open (a dead Wi-Fi path,
    a stuck reverse proxy: nothing says it is gone); `drop_next_from_client()` loses the next
    chunk a client sends on each open connection (one websocket ack). New connections are
    forwarded normally."""

    def __init__(self, port: int) -> None:
        import selectors

        self.upstream = port
        self.listener = socket.create_server((HOST, 0))
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._from_client: set[socket.socket] = set()
        self._frozen: list[socket.socket] = []  # kept open, never read again
        self._drop: set[socket.socket] = set()
        self._lock = threading.Lock()  # guards _peer, _from_client, _drop; freeze's requests
        self._freeze = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in [self.listener, *self._peer, *self._frozen]:
            s.close()

    def freeze(self) -> None:
        with self._lock:
            self._freeze = True

    def drop_next_from_client(self) -> None:
        with self._lock:
            self._drop = set(self._from_client)

    def _run(self) -> None:
        import selectors

        while not self._stop.is_set():
            with self._lock:
                if self._freeze:
                    self._freeze = False
                    for s in list(self._peer):
                        self._sel.unregister(s)
                        self._frozen.append(s)
                    self._peer.clear()
                    self._from_client.clear()
            for key, _ in self._sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _addr = self.listener.accept()
                    server = socket.create_connection((HOST, self.upstream), timeout=5)
                    client.settimeout(5)
                    with self._lock:
                        self._peer[client], self._peer[server] = server, client
                        self._from_client.add(client)
                        self.accepted += 1
                    for s in (client, server):
                        self._sel.register(s, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                with self._lock:
                    other = self._peer.get(sock)
                    drop = sock in self._drop
                    self._drop.discard(sock)
                if other is None:
                    continue
                if not data:
                    with self._lock:
                        for s in (sock, other):
                            self._peer.pop(s, None)
                            self._from_client.discard(s)
                    for s in (sock, other):
                        self._sel.unregister(s)
                        s.close()
                    continue
                if not drop:
                    with contextlib.suppress(OSError):
                        other.sendall(data)


def make_hash_file(directory: Path, hashed: bytes, name: str = "password.txt") -> Path:
    path = directory / name
    path.write_bytes(hashed + b"\n")
    path.chmod(0o600)
    return path
