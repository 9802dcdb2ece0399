"""The live web page: Tornado app with the ack-paced websocket view, login and /status.

Websocket protocol on /websocket (one JPEG in flight per viewer, never a queue):

client -> server, text
    ``read_frame``: the ack. "I have shown the last frame; send the next." Opening the
    websocket counts as the first ack, so a client that never acks gets exactly one frame.
    Acks do not add up: one or ten acks before the next frame still earn one frame.

server -> client, binary: one JPEG, after a fixed 24-byte big-endian header (HEADER)
    ``seq``   u64  the frame's capture sequence number; strictly increasing per client
    ``wall``  f64  capture time, seconds since the epoch (server clock)
    ``age``   f32  seconds from capture to this send (server monotonic clock)
    ``hold``  f32  seconds the server held the ack before answering (waiting for a newer
                   frame or for the --max-stream-fps interval)
    The page needs no clock agreement: round trip = (ack -> frame at the client) - hold, and
    the frame's age when shown = age + round trip / 2 + the client's own decode time.

server -> client, text: small JSON status objects, ``{"type": "status", ...}`` with
    ``source``, ``detection`` (bool), ``rec`` (number of recording files open),
    ``capture_fps``, ``viewers``, ``max_stream_fps``. Sent only to a client that is waiting
    for a frame: with the next frame when it changed, and at least once a second while the
    client waits (so a stalled client is sent nothing at all).

Pacing: after an ack, the client gets the newest JPEG it has not seen, no sooner than
1/--max-stream-fps after the previous frame sent to it. JPEGs are encoded by jpeg.py's
thread only while some viewer waits, once per frame, shared by all viewers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web
import tornado.websocket

from raspberry_pancake.recorder.config import ConfigError, RecorderConfig
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web import auth
from raspberry_pancake.recorder.web.jpeg import Jpeg, JpegProducer
from raspberry_pancake.shared.credentials import redact_url
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

HEADER = struct.Struct("!Qdff")
ACK = "read_frame"
ROOT = Path(__file__).resolve().parents[3]  # the checkout: index.html, login.html and static/ live there
SESSION_COOKIE = "pancake_session"
SESSION_DAYS = 7
# How often the loop looks at the stop event and refreshes the status pushed to viewers.
STOP_POLL = 0.1
STATUS_TICK = 0.25
STATUS_EVERY = 1.0  # a waiting viewer hears the status at least this often
MAX_REVOKED = 10_000
TIMER_SLACK = 0.002

_limiter = RateLimiter()
def display_name(source: str) -> str:
    """The source as viewers may see it: an rtsp://user:password@host URL loses its userinfo."""
    return redact_url(source)


def prepare(cfg: RecorderConfig) -> None:
    """Check --login and --certfile/--keyfile before anything starts; ConfigError if unusable."""
    if cfg.login is not None:
        auth.load_hash(cfg.login)
        auth.cookie_secret(cfg.login)
    _ssl_context(cfg)


def _ssl_context(cfg: RecorderConfig) -> ssl.SSLContext | None:
    if cfg.certfile is None or cfg.keyfile is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--certfile/--keyfile: cannot load {str(cfg.certfile)!r} with "
                          f"{str(cfg.keyfile)!r}: {getattr(exc, 'reason', None) or exc}") from None
    return ctx


@dataclass
class Login:
    """What the handlers need when --login is given."""

    hashed: bytes
    tag: str
    throttle: auth.LoginThrottle
    pool: concurrent.futures.ThreadPoolExecutor
    revoked: dict[str, float]  # session id -> monotonic time it may be forgotten


class Live:
    """The event loop's side of the live view: viewers, who waits for a frame, the status.

    Everything here runs on the IOLoop; the JPEG thread only reaches it via add_callback.
    """

    def __init__(self, state: RecorderState, loop: tornado.ioloop.IOLoop) -> None:
        self.state = state
        self.loop = loop
        self.producer = JpegProducer(state.hub, state.cfg.max_stream_fps, self._from_thread)
        self.interval = self.producer.interval
        self.viewers: set[LiveSocket] = set()
        self.waiting: set[LiveSocket] = set()
        self.status_text = self._status_text()

    def _from_thread(self, jpeg: Jpeg) -> None:
        self.loop.add_callback(self._deliver, jpeg)

    def _deliver(self, jpeg: Jpeg) -> None:
        waiting, self.waiting = self.waiting, set()
        for viewer in waiting:
            self.pump(viewer)

    def join(self, viewer: LiveSocket) -> None:
        self.viewers.add(viewer)
        self.refresh_status()

    def leave(self, viewer: LiveSocket) -> None:
        self.viewers.discard(viewer)
        self.waiting.discard(viewer)
        self.refresh_status()

    def pump(self, viewer: LiveSocket) -> None:
        """Send `viewer` a frame if it asked for one and may have one now; else arrange to."""
        if not viewer.wants or viewer.writing or viewer.closed:
            return
        now = time.monotonic()
        due = viewer.last_sent + self.interval
        # A timer may fire a hair early (epoll rounds to milliseconds): without this slack a
        # woken viewer would find itself not yet due and re-arm the timer in a busy loop.
        if now < due - TIMER_SLACK:
            viewer.wake_at(due)
            return
        cached = self.producer.latest
        if cached is not None and cached.seq > viewer.last_seq and now - cached.encoded < self.interval:
            viewer.send(cached, self.status_text)
            return
        # Nothing fresh it has not seen: wait for the producer (never on this loop).
        self.waiting.add(viewer)
        self.producer.request(max(viewer.last_seq, cached.seq if cached is not None else -1))

    def _status_text(self) -> str:
        return json.dumps({
            "type": "status",
            "source": display_name(self.state.source_name),
            "detection": self.state.detecting,
            "rec": len(self.state.open_files()),
            "capture_fps": round(self.state.capture_rate.rate(), 1),
            "viewers": len(self.viewers),
            "max_stream_fps": self.state.cfg.max_stream_fps,
        }, separators=(",", ":"))

    def refresh_status(self) -> None:
        self.status_text = self._status_text()
        now = time.monotonic()
        for viewer in list(self.viewers):
            if viewer.wants and (viewer.status_sent != self.status_text
                                 or now - viewer.status_at >= STATUS_EVERY):
                viewer.send_status(self.status_text)

    def close_all(self) -> None:
        for viewer in list(self.viewers):
            viewer.close(1001, "server stopping")


def _session(handler: tornado.web.RequestHandler, login: Login | None) -> str | None:
    """The session id of a valid session cookie (or "viewer" when no --login), else None."""
    if login is None:
        return "viewer"
    raw = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
    if raw is None:
        return None
    tag, _, sid = raw.decode("ascii", "replace").partition(":")
    if tag != login.tag or not sid or sid in login.revoked:
        return None
    return sid


class Base(tornado.web.RequestHandler):
    def initialize(self, state: RecorderState, live: Live, login: Login | None,
                   tls: bool) -> None:
        self.recorder = state
        self.live = live
        self.login = login
        self.tls = tls

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' blob: data:; "
                        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")

    def get_current_user(self) -> str | None:
        return _session(self, self.login)


class IndexHandler(Base):
    def get(self) -> None:
        if self.current_user is None:
            self.redirect("/login?next=" + quote(self.request.uri or "/", safe=""))
            return
        self.set_header("Cache-Control", "no-store")
        self.render("index.html", source=display_name(self.recorder.source_name),
                    login=self.login is not None)


def _safe_next(target: str) -> str:
    """Only a path on this server: never "//host" or "/\\host" (an open redirect)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


class LoginHandler(Base):
    def get(self) -> None:
        target = _safe_next(self.get_argument("next", "/"))
        if self.login is None or self.current_user is not None:
            self.redirect(target)
            return
        self._page(target, None)

    def _page(self, target: str, error: str | None) -> None:
        self.set_header("Cache-Control", "no-store")
        self.render("login.html", next=target, error=error,
                    source=display_name(self.recorder.source_name))

    async def post(self) -> None:
        target = _safe_next(self.get_body_argument("next", "/"))
        if self.login is None:
            self.redirect(target)
            return
        password = self.get_body_argument("password", "").encode("utf-8", "surrogatepass")
        login = self.login

        async def check() -> bool:
            if not password or len(password) > auth.MAX_PASSWORD_BYTES:
                return False  # cannot match any hash set_password.py writes
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(login.pool, auth.check_password, password,
                                              login.hashed)

        address = self.request.remote_ip or "?"
        try:
            ok = await login.throttle.run(address, check)
        except auth.TooManyAttempts:
            _limiter.log(log, logging.WARNING, "login-flood",
                         "too many login attempts waiting from %s", address)
            self.set_status(429)
            self.set_header("Retry-After", str(int(auth.MAX_DELAY)))
            self._page(target, "Too many attempts. Wait a minute and try again.")
            return
        if not ok:
            _limiter.log(log, logging.WARNING, "login-fail", "failed login from %s (%d in a row)",
                         address, login.throttle.failures(address))
            self.set_status(401)
            self._page(target, "Wrong password.")
            return
        log.info("login from %s", address)
        self.set_signed_cookie(SESSION_COOKIE, f"{login.tag}:{secrets.token_urlsafe(18)}",
                               expires_days=SESSION_DAYS, httponly=True, samesite="Strict",
                               secure=self.tls)
        self.redirect(target)


class LogoutHandler(Base):
    def _logout(self) -> None:
        sid = self.current_user
        if self.login is not None and sid is not None:
            revoked = self.login.revoked
            now = time.monotonic()
            for old in [s for s, until in revoked.items() if until < now]:
                del revoked[old]
            if len(revoked) >= MAX_REVOKED:
                del revoked[next(iter(revoked))]
            revoked[sid] = now + SESSION_DAYS * 86400
        self.clear_cookie(SESSION_COOKIE, httponly=True, samesite="Strict", secure=self.tls)
        self.redirect("/login" if self.login is not None else "/")

    def get(self) -> None:
        self._logout()

    def post(self) -> None:
        self._logout()


class StatusHandler(Base):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.current_user is None:
            self.set_status(401)
            self.finish({"error": "login required"})
            return
        # snapshot() asks the disk for free space: a hung mount must not stall the loop.
        loop = asyncio.get_running_loop()
        status: dict[str, Any] = await loop.run_in_executor(None, self.recorder.snapshot)
        status["source"] = display_name(str(status.get("source", "")))
        status["viewers"] = len(self.live.viewers)
        status["jpeg_encodes"] = self.live.producer.encodes
        status["max_stream_fps"] = self.recorder.cfg.max_stream_fps
        self.finish(status)


class LiveSocket(tornado.websocket.WebSocketHandler):
    """One viewer. See the module docstring for the protocol."""

    def initialize(self, state: RecorderState, live: Live, login: Login | None,
                   tls: bool) -> None:
        self.live = live
        self.login = login
        self.wants = False
        self.writing = False
        self.closed = False
        self.last_seq = -1
        self.last_sent = float("-inf")
        self.ack_at = 0.0
        self.status_sent = ""
        self.status_at = float("-inf")
        self._timer: object | None = None

    def get_current_user(self) -> str | None:
        return _session(self, self.login)

    def prepare(self) -> None:
        # Checked before the upgrade: a refused viewer gets a plain 403, not an open socket.
        if self.current_user is None:
            raise tornado.web.HTTPError(403, "login required")

    def open(self, *args: str, **kwargs: str) -> None:
        self.wants = True  # opening is the first ack
        self.ack_at = time.monotonic()
        self.live.join(self)
        self.live.pump(self)

    def on_message(self, message: str | bytes) -> None:
        if message == ACK:
            self.wants = True
            self.ack_at = time.monotonic()
            self.live.pump(self)
        else:
            _limiter.log(log, logging.INFO, "ws-junk", "unexpected websocket message from %s",
                         self.request.remote_ip)

    def on_close(self) -> None:
        self.closed = True
        self._cancel_timer()
        self.live.leave(self)

    def wake_at(self, when: float) -> None:
        """Pump again at `when` (time.monotonic): IOLoop.call_at would read it as time.time."""
        if self._timer is None:
            self._timer = self.live.loop.call_later(max(0.0, when - time.monotonic()),
                                                    self._woken)

    def _woken(self) -> None:
        self._timer = None
        self.live.pump(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self.live.loop.remove_timeout(self._timer)
            self._timer = None

    def send_status(self, text: str) -> None:
        self.status_sent = text
        self.status_at = time.monotonic()
        try:
            self.write_message(text).add_done_callback(_retrieve)
        except tornado.websocket.WebSocketClosedError:
            self.closed = True

    def send(self, jpeg: Jpeg, status: str) -> None:
        now = time.monotonic()
        if status != self.status_sent or now - self.status_at >= STATUS_EVERY:
            self.send_status(status)
        header = HEADER.pack(jpeg.seq, jpeg.wall, now - jpeg.mono, now - self.ack_at)
        self.wants = False
        self.last_seq = jpeg.seq
        self.last_sent = now
        try:
            future = self.write_message(header + jpeg.data, binary=True)
        except tornado.websocket.WebSocketClosedError:
            self.closed = True
            return
        # Until this frame has left for the kernel, no other: a client that acks without
        # reading cannot make frames pile up in our buffers.
        self.writing = True
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self.writing = False
        _retrieve(future)
        self.live.pump(self)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Consume a write's outcome: a viewer gone mid-write is normal, not an error to report."""
    if not future.cancelled():
        future.exception()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Only refusals and errors reach the daemon's log; a page polled all day must not."""
    status = handler.get_status()
    if status < 400:
        return
    request = handler.request
    _limiter.log(log, logging.WARNING if status >= 500 else logging.INFO, f"http-{status}",
                 "%d %s %s from %s", status, request.method, request.path, request.remote_ip)


def make_app(state: RecorderState, live: Live, login: Login | None, tls: bool,
             cookie_secret: bytes | None) -> tornado.web.Application:
    deps = {"state": state, "live": live, "login": login, "tls": tls}
    return tornado.web.Application(
        [
            (r"/", IndexHandler, deps),
            (r"/login", LoginHandler, deps),
            (r"/logout", LogoutHandler, deps),
            (r"/status", StatusHandler, deps),
            (r"/websocket", LiveSocket, deps),
        ],
        template_path=str(ROOT),
        static_path=str(ROOT / "static"),
        cookie_secret=cookie_secret or secrets.token_bytes(auth.SECRET_BYTES),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict", "secure": tls},
        cross_origin_protection=True,
        websocket_ping_interval=20,
        websocket_max_message_size=4096,
        compress_response=False,
        log_function=_log_request,
    )


def listen(port: int, address: str = "") -> list[socket.socket]:
    """Bind the live view's port (all interfaces unless `address`); ConfigError if taken.
    pancake binds before it starts recording, so a taken port is one line and exit 2."""
    try:
        return tornado.netutil.bind_sockets(port, address or None)
    except OSError as exc:
        raise ConfigError(f"--port {port}: cannot listen: {exc.strerror}") from None


def run(state: RecorderState, stop: threading.Event, *, address: str = "",
        sockets: list[socket.socket] | None = None) -> None:
    """Serve the live page on `sockets` (else cfg.port on `address`) until `stop` is set.

    Runs the IOLoop in the calling thread (pancake's main thread) and returns promptly after
    `stop`: the JPEG thread is joined and every websocket closed. A port that cannot be
    bound raises ConfigError.
    """
    if sockets is None:
        sockets = listen(state.cfg.port, address)
    asyncio.run(_serve(state, stop, address, sockets))


async def _serve(state: RecorderState, stop: threading.Event, address: str,
                 sockets: list[socket.socket]) -> None:
    cfg = state.cfg
    tls_ctx = _ssl_context(cfg)
    hashed = auth.load_hash(cfg.login) if cfg.login is not None else None
    secret = auth.cookie_secret(cfg.login) if cfg.login is not None else None
    # bcrypt (~0.2 s a check, ~1 s on a Pi Zero) and disk queries run here, off the loop.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="login-bcrypt")
    status_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                        thread_name_prefix="web-status")
    asyncio.get_running_loop().set_default_executor(status_pool)
    login = (Login(hashed, auth.session_tag(hashed), auth.LoginThrottle(), pool, {})
             if hashed is not None else None)
    live = Live(state, tornado.ioloop.IOLoop.current())
    app = make_app(state, live, login, tls_ctx is not None, secret)
    server = tornado.httpserver.HTTPServer(app, ssl_options=tls_ctx, xheaders=False)
    server.add_sockets(sockets)
    live.producer.start()
    log.info("live view on %s://%s:%d/%s", "https" if tls_ctx else "http", address or "*",
             cfg.port, " (login required)" if login else "")
    done = asyncio.Event()

    def tick() -> None:
        if stop.is_set():
            done.set()

    stopper = tornado.ioloop.PeriodicCallback(tick, STOP_POLL * 1000)
    status = tornado.ioloop.PeriodicCallback(live.refresh_status, STATUS_TICK * 1000)
    stopper.start()
    status.start()
    try:
        await done.wait()
    finally:
        stopper.stop()
        status.stop()
        server.stop()
        live.close_all()
        live.producer.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        status_pool.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(server.close_all_connections(), 0.5)
        except TimeoutError:
            log.info("closing HTTP connections took too long; leaving them to exit")
        log.info("live view stopped")
