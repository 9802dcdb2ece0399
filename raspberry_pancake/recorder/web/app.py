"""The live page's server: checks the TLS and login flags, builds the Tornado app, serves it until stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import secrets
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from raspberry_pancake.recorder.config import ConfigError, RecorderConfig
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web import auth
from raspberry_pancake.recorder.web.control import (
    MaskHandler,
    MaskPage,
    SnapshotHandler,
    TriggerHandler,
)
from raspberry_pancake.recorder.web.faces_page import faces_routes, make_faces
from raspberry_pancake.recorder.web.handlers import (
    CameraHandler,
    HealthHandler,
    IndexHandler,
    LiveSocket,
    Login,
    LoginHandler,
    LogoutHandler,
    StatusHandler,
)
from raspberry_pancake.recorder.web.jpeg import ImageEncoder
from raspberry_pancake.recorder.web.live import Live
from raspberry_pancake.recorder.web.parts import UI_MODULES
from raspberry_pancake.recorder.web.review import Review, routes
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.statedir import state_dir

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]  # the checkout: index.html, login.html and static/ live there
# How often the loop looks at the stop event and refreshes the status pushed to viewers.
STOP_POLL = 0.1
STATUS_TICK = 0.25
# How often open websockets are checked against logouts made by another pancake.
REVOKED_TICK = 1.0

_limiter = RateLimiter()


def prepare(cfg: RecorderConfig) -> None:
    """Check --login and --certfile/--keyfile before anything starts; ConfigError if unusable."""
    if cfg.login is not None:
        auth.load_hash(cfg.login)
        auth.cookie_secret(cfg.login)
        _revocations(cfg).load()
    _ssl_context(cfg)


def _revocations(cfg: RecorderConfig) -> auth.Revocations:
    """Where logouts are kept: the state directory (DESIGN.md "State"), --state-dir's when
    given, with --catalog elsewhere or not."""
    return auth.Revocations(cfg.state_home or cfg.state_dir or state_dir())


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name


def open_to_network(cfg: RecorderConfig, address: str | None = None) -> str | None:
    """The warning for a page anyone on the network may watch: no --login, and bound to
    `address` (else --bind) that is not loopback."""
    if cfg.login is not None or _is_loopback(cfg.bind if address is None else address):
        return None
    return (f"the live view has no password: anyone who can reach port {cfg.port} can watch. "
            "To add one: python3 util/set_password.py password.txt, then start pancake with "
            "--login password.txt")


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


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Only refusals and errors reach the daemon's log; a page polled all day must not."""
    status = handler.get_status()
    if status < 400:
        return
    request = handler.request
    _limiter.log(log, logging.WARNING if status >= 500 else logging.INFO, f"http-{status}",
                 "%d %s %s from %s", status, request.method, request.path, request.remote_ip)


def make_app(state: RecorderState, live: Live, login: Login | None, tls: bool,
             cookie_secret: bytes | None,
             lives: dict[str, Live] | None = None,
             review: Review | None = None) -> tornado.web.Application:
    """`state`/`live`: the first camera's; `lives`: every camera's Live by name, in order
    (default: that one camera); `review`: the events and recordings pages (with a catalog)."""
    if lives is None:
        lives = {state.name: live} if state is not None else {}
    deps = {"state": state, "live": live, "login": login, "tls": tls, "lives": lives}
    # One Faces for both pages: the review page names an event's faces in its camera's store.
    faces = make_faces(lives, review)
    return tornado.web.Application(
        [
            (r"/", IndexHandler, deps),
            (r"/login", LoginHandler, deps),
            (r"/logout", LogoutHandler, deps),
            (r"/status", StatusHandler, deps),
            (r"/api/health", HealthHandler, deps),
            (r"/api/cameras/([a-z0-9_-]{1,32})", CameraHandler, deps),
            (r"/api/trigger", TriggerHandler, deps),
            (r"/mask", MaskPage, deps),
            (r"/api/cameras/([a-z0-9_-]{1,32})/snapshot\.jpg", SnapshotHandler, deps),
            (r"/api/cameras/([a-z0-9_-]{1,32})/mask\.png", MaskHandler, deps),
            (r"/websocket", LiveSocket, deps),
            *(routes(review, login, tls, faces) if review is not None else []),
            *faces_routes(faces, deps),
        ],
        template_path=str(ROOT),
        ui_modules=UI_MODULES,
        static_path=str(ROOT / "static"),
        cookie_secret=cookie_secret or secrets.token_bytes(auth.SECRET_BYTES),
        # The XSRF token guards every POST; LiveSocket's Origin check (Tornado's) guards the
        # websocket. "secure" is added per request (handlers.Base.set_cookie).
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"},
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


def run(state: RecorderState | Sequence[RecorderState], stop: threading.Event, *,
        address: str = "", sockets: list[socket.socket] | None = None,
        encoder: ImageEncoder | None = None) -> None:
    """Serve the live page of one camera or several (`state` a sequence, the first the
    default) on `sockets` (else cfg.port on `address`) until `stop` is set.

    Runs the IOLoop in the calling thread (pancake's main thread) and returns promptly after
    `stop`: the JPEG threads are joined and every websocket closed. A port that cannot be
    bound raises ConfigError. `encoder` replaces the live view's JPEG encoder (tests).
    """
    states = [state] if isinstance(state, RecorderState) else list(state)
    if sockets is None:
        sockets = listen(states[0].cfg.port, address)
    asyncio.run(_serve(states, stop, address, sockets, encoder))


async def _serve(states: list[RecorderState], stop: threading.Event, address: str,
                 sockets: list[socket.socket], encoder: ImageEncoder | None) -> None:
    state = states[0]
    cfg = state.cfg
    tls_ctx = _ssl_context(cfg)
    hashed = auth.load_hash(cfg.login) if cfg.login is not None else None
    secret = auth.cookie_secret(cfg.login) if cfg.login is not None else None
    # bcrypt (~0.2 s a check, ~1 s on a Pi Zero) and disk queries run here, off the loop.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="login-bcrypt")
    status_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                        thread_name_prefix="web-status")
    asyncio.get_running_loop().set_default_executor(status_pool)
    # Logouts are written here: not behind a /status stuck on a hung mount.
    state_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="login-state")
    login = None
    if hashed is not None:
        revoked = _revocations(cfg)
        revoked.load()
        login = Login(hashed, auth.session_tag(hashed), auth.LoginThrottle(), pool, revoked,
                      state_pool)
    loop = tornado.ioloop.IOLoop.current()
    lives = {s.name: Live(s, loop, encoder, cameras=len(states)) for s in states}
    live = lives[state.name]
    review = None
    if cfg.catalog is not None:
        rates = {s.name: s.cfg.fps for s in states}
        review = Review(cfg.catalog, [d for s in states for d in s.cfg.record_dirs],
                        lambda camera: rates.get(camera, cfg.fps))
    app = make_app(state, live, login, tls_ctx is not None, secret, lives, review)
    # xheaders only with --trust-proxy: else any client could name its own address (and dodge
    # the login throttle) or claim HTTPS.
    server = tornado.httpserver.HTTPServer(app, ssl_options=tls_ctx, xheaders=cfg.trust_proxy)
    server.add_sockets(sockets)
    for each in lives.values():
        each.producer.start()
    log.info("live view on %s://%s:%d/%s%s", "https" if tls_ctx else "http", address or "*",
             cfg.port, " (login required)" if login else "",
             " (--trust-proxy: client address and scheme from the proxy's headers)"
             if cfg.trust_proxy else "")
    warning = open_to_network(cfg, address)
    if warning is not None:
        log.warning(warning)
    done = asyncio.Event()

    def tick() -> None:
        if stop.is_set():
            done.set()

    def refresh() -> None:
        for each in lives.values():
            each.refresh_status()

    stopper = tornado.ioloop.PeriodicCallback(tick, STOP_POLL * 1000)
    status = tornado.ioloop.PeriodicCallback(refresh, STATUS_TICK * 1000)
    callbacks = [stopper, status]
    if login is not None:
        ended = login.revoked

        def drop() -> None:
            for each in lives.values():
                each.drop_revoked(ended.__contains__)

        callbacks.append(tornado.ioloop.PeriodicCallback(drop, REVOKED_TICK * 1000))
    for callback in callbacks:
        callback.start()
    try:
        await done.wait()
    finally:
        for callback in callbacks:
            callback.stop()
        server.stop()
        for each in lives.values():
            each.close_all()
        for each in lives.values():
            each.producer.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        status_pool.shutdown(wait=False, cancel_futures=True)
        state_pool.shutdown(wait=True)  # a logout being written is finished, not lost
        if review is not None:
            review.close()
        try:
            await asyncio.wait_for(server.close_all_connections(), 0.5)
        except TimeoutError:
            log.info("closing HTTP connections took too long; leaving them to exit")
        log.info("live view stopped")
