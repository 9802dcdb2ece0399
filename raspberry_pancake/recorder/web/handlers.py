"""The page's Tornado handlers: index, login, logout, /status, /api/*, and the ack-paced websocket view."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import tornado.iostream
import tornado.web
import tornado.websocket

from raspberry_pancake.recorder.frames import Unit
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web import auth
from raspberry_pancake.recorder.web.jpeg import Jpeg
from raspberry_pancake.recorder.web.live import H264, JPEG, STATUS_EVERY, Live, display_name
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

SESSION_COOKIE = "pancake_session"
SESSION_DAYS = auth.SESSION_DAYS

_limiter = RateLimiter()


@dataclass
class Login:
    """What the handlers need when --login is given."""

    hashed: bytes
    tag: str
    throttle: auth.LoginThrottle
    pool: concurrent.futures.ThreadPoolExecutor  # bcrypt checks
    revoked: auth.Revocations
    state_pool: concurrent.futures.ThreadPoolExecutor  # writes of the revocations file


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
                   tls: bool, lives: dict[str, Live] | None = None) -> None:
        self.recorder = state
        self.live = live
        self.login = login
        self.tls = tls
        # Every camera's live view by name, the first camera's first.
        self.lives: dict[str, Live] = lives if lives is not None else {state.name: live}

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy",
                        "default-src 'self'; img-src 'self' blob: data:; "
                        # blob: for the H.264 view's MediaSource (a <video> with a blob: URL)
                        "media-src 'self' blob:; "
                        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'")

    def get_current_user(self) -> str | None:
        return _session(self, self.login)

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        # Every cookie (session, XSRF, and the clearing of either) is Secure whenever the
        # browser speaks HTTPS to us: --certfile, or a proxy's X-Forwarded-Proto with
        # --trust-proxy (Tornado's xheaders set request.protocol; ignored without the flag).
        if self.request.protocol == "https":
            kwargs["secure"] = True
        super().set_cookie(name, value, *args, **kwargs)


class IndexHandler(Base):
    def get(self) -> None:
        if self.current_user is None:
            self.redirect("/login?next=" + quote(self.request.uri or "/", safe=""))
            return
        self.set_header("Cache-Control", "no-store")
        cameras = [{"name": name, "title": live.state.title,
                    "source": display_name(live.state.source_name),
                    "continuous": live.state.cfg.record_continuous is not None}
                   for name, live in self.lives.items()]
        enlarged = self.get_argument("camera", "")
        if enlarged not in self.lives:
            enlarged = ""  # an unknown or stale bookmark: the grid
        self.render("index.html", source=display_name(self.recorder.source_name),
                    login=self.login is not None, cameras=cameras, enlarged=enlarged,
                    multi=len(cameras) > 1, grid_fps=_grid_fps(self.lives))


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
                    source=display_name(self.recorder.source_name) if len(self.lives) == 1
                    else f"{len(self.lives)} cameras")

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
                               expires_days=SESSION_DAYS, httponly=True, samesite="Strict")
        self.redirect(target)


class LogoutHandler(Base):
    """POST only (with the XSRF token): a GET that ends a session could be set off by any page.
    Other methods get Tornado's 405."""

    async def post(self) -> None:
        sid = self.current_user
        if self.login is not None and sid is not None:
            # Written to disk (off the loop) before we answer, so that a restart right after
            # still refuses it; refused in memory even if the write fails.
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self.login.state_pool, self.login.revoked.revoke, sid)
            except OSError as exc:
                log.error("logout not saved in %s (%s): that session ends now, but would work "
                          "again after a restart", self.login.revoked.path, exc.strerror)
            for live in self.lives.values():
                live.end_session(sid)
            log.info("logout from %s", self.request.remote_ip)
        self.clear_cookie(SESSION_COOKIE, httponly=True, samesite="Strict")
        self.redirect("/login" if self.login is not None else "/")


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
        status["jpeg_failures"] = self.live.producer.failures
        status["max_stream_fps"] = self.recorder.cfg.max_stream_fps
        if len(self.lives) > 1:
            cameras: dict[str, Any] = {}
            for name, live in self.lives.items():
                one: dict[str, Any] = await loop.run_in_executor(None, live.state.snapshot)
                one["source"] = display_name(str(one.get("source", "")))
                one["title"] = live.state.title
                one["health"] = live.state.health()[0]
                one["viewers"] = len(live.viewers)
                one["jpeg_encodes"] = live.producer.encodes
                one["jpeg_failures"] = live.producer.failures
                cameras[name] = one
            # The top level keeps its keys: the first camera's, with the counts of all.
            status["viewers"] = sum(c["viewers"] for c in cameras.values())
            status["jpeg_encodes"] = sum(c["jpeg_encodes"] for c in cameras.values())
            status["jpeg_failures"] = sum(c["jpeg_failures"] for c in cameras.values())
            status["cameras"] = cameras
        self.finish(status)


def _grid_fps(lives: dict[str, Live]) -> float:
    first = next(iter(lives.values()), None)
    return 1.0 / first.grid_interval if first is not None else 0.0


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


class HealthHandler(Base):
    """GET /api/health: DESIGN.md "Health" (login required when --login)."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.current_user is None:
            self.set_status(401)
            self.finish({"error": "login required"})
            return
        cameras = {name: live.state.health_entry() for name, live in self.lives.items()}
        detections = [t for t in (live.state.last_detection() for live in self.lives.values())
                      if t is not None]
        self.finish({
            "status": "healthy" if all(c["state"] == "live" for c in cameras.values())
            else "degraded",
            "active_streams": sum(c["state"] in ("live", "delay") for c in cameras.values()),
            "total_cameras": len(cameras),
            "last_detection": _iso(max(detections)) if detections else None,
            "cameras": cameras,
        })


class CameraHandler(Base):
    """POST /api/cameras/NAME with a JSON body {"armed": bool, "continuous": bool} (either or
    both), the session cookie and the XSRF token (X-XSRFToken header): the camera's switches,
    kept in the catalog. Answers the camera's /api/health entry."""

    def check_xsrf_cookie(self) -> None:
        # Tornado's check, but a JSON answer rather than its HTML page for a script.
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            _limiter.log(log, logging.INFO, "api-xsrf", "camera switch without a valid XSRF "
                         "token from %s", self.request.remote_ip)
            self.set_status(403)
            self.finish({"error": "XSRF token missing or wrong"})
            raise tornado.web.Finish() from None

    def post(self, name: str) -> None:
        self.set_header("Cache-Control", "no-store")
        if self.current_user is None:
            self.set_status(401)
            self.finish({"error": "login required"})
            return
        live = self.lives.get(name)
        if live is None:
            self.set_status(404)
            self.finish({"error": f"no camera {name}"})
            return
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not body or set(body) - {"armed", "continuous"} or not all(
                isinstance(v, bool) for v in body.values()):
            self.set_status(400)
            self.finish({"error": 'a JSON object {"armed": true|false, "continuous": true|false}'})
            return
        state = live.state
        if body.get("continuous") and state.cfg.record_continuous is None:
            self.set_status(409)
            self.finish({"error": f"{name} has no record_continuous directory"})
            return
        if state.control is None:
            self.set_status(503)
            self.finish({"error": f"{name} cannot be switched here"})
            return
        state.control(body.get("armed"), body.get("continuous"))
        live.refresh_status()
        self.finish(state.health_entry())


# The websocket protocol: LiveSocket's docstring.
HEADER = struct.Struct("!Qdff")
ACK = "read_frame"
# A viewer asks for (or stops asking for) the motion detector's boxes in its status messages.
OUTLINES_ON, OUTLINES_OFF = "outlines:on", "outlines:off"
# RFC 6455 section 5.2: FIN + opcode 2 (binary), then the payload length in 7, 7+16 or 7+64 bits
# (a server's frames are never masked).
BINARY_FIN = 0x82
_LEN16, _LEN64 = struct.Struct("!BBH"), struct.Struct("!BBQ")


def binary_frame_head(length: int) -> bytes:
    """The websocket frame header of one unmasked, unfragmented binary message of `length` bytes."""
    if length < 126:
        return bytes((BINARY_FIN, length))
    if length <= 0xFFFF:
        return _LEN16.pack(BINARY_FIN, 126, length)
    return _LEN64.pack(BINARY_FIN, 127, length)


class LiveSocket(tornado.websocket.WebSocketHandler):
    """One viewer on /websocket (one picture in flight per viewer, never a queue). The protocol:

    client -> server, text
        ``read_frame``: the ack. "I have shown the last frame; send the next." Opening the
        websocket counts as the first ack, so a client that never acks gets exactly one frame.
        Acks do not add up: one or ten acks before the next frame still earn one frame.
        ``outlines:on`` / ``outlines:off``: the motion detector's boxes in the status (below)
        or not (the default). Not an ack.

    server -> client, binary: one JPEG, after a fixed 24-byte big-endian header (HEADER)
        ``seq``   u64  the frame's capture sequence number; strictly increasing per client
        ``wall``  f64  capture time, seconds since the epoch (server clock)
        ``age``   f32  seconds from capture to this send (server monotonic clock)
        ``hold``  f32  seconds the server held the ack before answering (waiting for a newer
                       frame or for the --max-stream-fps interval)
        The page needs no clock agreement: round trip = (ack -> frame at the client) - hold, and
        the frame's age when shown = age + round trip / 2 + the client's own decode time.

    with ``codec=h264``, server -> client, binary: the same header, then one H.264 access unit
        in Annex B instead of a JPEG. ``seq`` then counts the camera's units with no gap, so a
        client sees a skip as a jump. The first unit, and the first after a skip, is an IDR
        with SPS/PPS in front. A client that is waiting when a unit arrives gets it at once;
        one that acks later gets it then if no newer unit has come meanwhile, and otherwise
        has missed it and is sent the next IDR (at most a second away). --max-stream-fps and
        ``view=grid`` do not apply: a dropped P-frame would break the pictures after it.

    server -> client, text: small JSON status objects, ``{"type": "status", ...}`` with
        ``source``, ``detection`` (bool), ``rec`` (number of recording files open),
        ``capture_fps``, ``viewers``, ``max_stream_fps``, ``camera`` (its name), ``title``,
        ``health`` (live, delay, error, offline), ``armed``, ``continuous``, ``h264`` (false:
        the camera has no H.264 units, since it records nothing and so encodes nothing; a
        page that asked for H.264 then asks for JPEG), ``motion`` (the camera runs the motion
        detector, so it has outlines to show). A client that sent ``outlines:on``
        also gets, while the camera runs the motion detector (``--detect motion``, armed),
        ``boxes`` (the regions changing in the newest analysed frame, each ``[x, y, w, h]`` as
        fractions of the frame; also while below the bar; ``[]`` for a still scene),
        ``score`` (0..1, as an event's), ``above`` (the changed area reaches the bar),
        ``area`` and ``bar`` (percent of the watched picture) and ``boxes_seq`` (the analysed
        frame's seq); they change at most four times a second. Sent only to a
        client that is waiting for a frame: with the next frame when it changed, and at least
        once a second while the client waits (so a stalled client is sent nothing at all).

    query: ``camera=NAME`` (default: the first camera; unknown: 404 before the upgrade);
        ``view=grid``: a tile of the grid, paced to max(2, max_stream_fps / cameras);
        ``codec=jpeg`` (the default) or ``codec=h264`` (anything else: 400 before the upgrade).

    close: code 1008 (live.LOGGED_OUT) when the viewer's session logs out, in any tab.

    A frame the encoder refuses is skipped, not answered: the ack still stands and the next
    captured frame answers it. Pacing (when a frame is sent after an ack) is in live.Live's
    docstring.
    """

    def initialize(self, state: RecorderState, live: Live, login: Login | None,
                   tls: bool, lives: dict[str, Live] | None = None) -> None:
        self.live = live
        self.lives: dict[str, Live] = lives if lives is not None else {state.name: live}
        self.login = login
        self.interval = 0.0
        self.codec = JPEG
        self.outlines = False
        self.wants = False
        self.writing = False
        self.closed = False
        self.last_seq = -1
        self.last_sent = float("-inf")
        self.ack_at = 0.0
        self.status_sent = ""
        self.status_at = float("-inf")
        self.session: str | None = None
        self._timer: object | None = None

    def get_current_user(self) -> str | None:
        return _session(self, self.login)

    def prepare(self) -> None:
        # Checked before the upgrade: a refused viewer gets a plain 403, not an open socket.
        if self.current_user is None:
            raise tornado.web.HTTPError(403, "login required")
        self.session = self.current_user  # a logout of this session closes this socket
        name = self.get_argument("camera", "")
        if name:
            live = self.lives.get(name)
            if live is None:
                raise tornado.web.HTTPError(404, "no such camera")
            self.live = live
        codec = self.get_argument("codec", JPEG)
        if codec not in (JPEG, H264):
            raise tornado.web.HTTPError(400, "codec must be jpeg or h264")
        self.codec = codec
        # A grid tile shares --max-stream-fps with the others; enlarged (or alone), the full rate.
        if self.get_argument("view", "") == "grid":
            self.interval = self.live.grid_interval

    def get_compression_options(self) -> None:
        # No permessage-deflate: send() writes its frames to the stream itself, uncompressed
        # (and JPEG and H.264 would not shrink anyway).
        return None

    def open(self, *args: str, **kwargs: str) -> None:
        # Without this, a picture written right after a status message (two writes, at least
        # once a second) waits for the client's delayed ACK of the first (Nagle): ~40 ms late.
        self.set_nodelay(True)
        self.wants = True  # opening is the first ack
        self.ack_at = time.monotonic()
        self.live.join(self)
        self.live.pump(self)

    def on_message(self, message: str | bytes) -> None:
        if message == ACK:
            self.wants = True
            self.ack_at = time.monotonic()
            self.live.pump(self)
        elif message in (OUTLINES_ON, OUTLINES_OFF):
            self.outlines = message == OUTLINES_ON
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

    def send(self, item: Jpeg | Unit, status: str) -> None:
        """One picture: a JPEG, or (codec=h264) an access unit."""
        now = time.monotonic()
        if status != self.status_sent or now - self.status_at >= STATUS_EVERY:
            self.send_status(status)
        conn = self.ws_connection
        if conn is None or conn.is_closing() or conn.stream is None:
            self.closed = True
            return
        data = item.data
        self.wants = False
        self.last_seq = item.seq
        self.last_sent = now
        # One frame written straight to the stream, one copy of the picture: write_message
        # would copy it twice more (our header + data, then its frame header + that) and wrap
        # each write in a Task, per viewer per picture.
        frame = (binary_frame_head(HEADER.size + len(data))
                 + HEADER.pack(item.seq, item.wall, now - item.mono, now - self.ack_at) + data)
        try:
            future = conn.stream.write(frame)
        except tornado.iostream.StreamClosedError:
            self.closed = True
            return
        if future.done():
            # The kernel took it all at once (the usual case): no ack can have come meanwhile,
            # so nothing to pump, and no callback to schedule per viewer per picture.
            _retrieve(future)
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
