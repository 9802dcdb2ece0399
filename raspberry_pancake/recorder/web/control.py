"""The page's control routes: POST /api/trigger, the mask editor page, a camera's snapshot and its mask."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import numpy as np
import tornado.web

from raspberry_pancake.recorder.config import MaskError, read_mask
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.handlers import Base
from raspberry_pancake.recorder.web.jpeg import JpegEncoder
from raspberry_pancake.recorder.web.live import Live, display_name
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limiter = RateLimiter()

# A trigger's label: one short word or a few (it becomes the event's label, an MQTT payload
# and a caption); its duration, in seconds.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,31}")
DEFAULT_SECONDS = 10.0
MAX_SECONDS = 3600.0
# An uploaded mask: a PNG, at most this big (a 4K black-and-white mask is a few KiB).
MAX_MASK_BYTES = 4 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Headers a reverse proxy adds: with them (and no --trust-proxy) a loopback peer is a proxy
# speaking for someone else, not a program on this machine.
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


def _json_error(handler: tornado.web.RequestHandler, status: int, text: str) -> None:
    handler.set_status(status)
    handler.finish({"error": text})


class _Api(Base):
    """JSON answers, never cached; Tornado's XSRF check answered in JSON."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            _limiter.log(log, logging.INFO, "control-xsrf", "%s %s without a valid XSRF token "
                         "from %s", self.request.method, self.request.path,
                         self.request.remote_ip)
            _json_error(self, 403, "XSRF token missing or wrong")
            raise tornado.web.Finish() from None

    def camera(self, name: str) -> Live | None:
        """The camera's Live, or None having answered 404."""
        live = self.lives.get(name)
        if live is None:
            _json_error(self, 404, f"no camera {name}")
        return live

    def refused(self) -> bool:
        """401 unless logged in (or no --login); True when refused."""
        if self.current_user is not None:
            return False
        _json_error(self, 401, "login required")
        return True


class TriggerHandler(_Api):
    """POST /api/trigger: label=WORD, seconds=N (default 10, at most 3600), camera=NAME (default
    the first), as form fields, query arguments or a JSON object. A detection labelled WORD
    starts at once and lasts N seconds; another trigger extends it.

    Who may: a program with `Authorization: Bearer TOKEN` (--trigger-token; no XSRF token
    needed, a browser never sends that header by itself); the page's session with its XSRF
    token (X-XSRFToken or _xsrf); without --login, a program on this machine (loopback; a
    browser's request, which carries an Origin, needs the XSRF token). Anything else: 401 (a
    wrong or missing token, no session) or, without --login and without --trigger-token, 403
    for a request from the network."""

    def _bearer(self) -> str | None:
        """The token of an Authorization header ("" for another scheme), None without one."""
        header = self.request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""

    def _local(self) -> bool:
        """From this machine: a loopback peer that is not a proxy relaying someone else."""
        if not self.recorder.cfg.trust_proxy and any(h in self.request.headers
                                                    for h in PROXY_HEADERS):
            return False
        try:
            return ipaddress.ip_address(self.request.remote_ip or "").is_loopback
        except ValueError:
            return False

    def _session_ok(self) -> bool:
        """The page's way in: a valid session (with --login), or loopback without --login."""
        if self.login is not None:
            return self.current_user is not None
        return self._local()

    def check_xsrf_cookie(self) -> None:
        # A bearer token is checked in post(); a request with neither token nor session is
        # refused there too, with a 401 that says what is missing rather than an XSRF 403.
        if self._bearer() is not None or not self._session_ok():
            return
        if self.login is None and "Origin" not in self.request.headers:
            # Without --login, from loopback: a script on this machine (curl sends no Origin;
            # a browser sends one with every POST, and then the XSRF token is needed).
            return
        super().check_xsrf_cookie()

    def _refuse(self, status: int, why: str, text: str) -> None:
        _limiter.log(log, logging.WARNING, f"trigger-{status}",
                     "POST /api/trigger refused (%s) from %s", why, self.request.remote_ip)
        _json_error(self, status, text)

    def _allowed(self) -> str | None:
        """How the request got in ("token", "session"), or None having answered it."""
        token = self.recorder.cfg.trigger_token
        given = self._bearer()
        if given is not None:
            if token is None:
                self._refuse(401, "a token, but no --trigger-token is set",
                             "no token is accepted here (pancake has no --trigger-token)")
                return None
            # Constant time: how much of a guess matched must not show in the answer's time.
            if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                       token.reveal().encode("utf-8")):
                self._refuse(401, "wrong token", "wrong token")
                return None
            return "token"
        if self._session_ok():
            return "session"  # the XSRF token was checked before post()
        if self.login is not None:
            self._refuse(401, "no session and no token",
                         "log in, or send Authorization: Bearer TOKEN (--trigger-token)")
        elif token is not None:
            self._refuse(401, "no token", "send Authorization: Bearer TOKEN (--trigger-token)")
        else:
            self._refuse(403, "from the network, with neither --login nor --trigger-token",
                         "without --login or --trigger-token, triggers are taken from this "
                         "machine only")
        return None

    def _fields(self) -> dict[str, str] | None:
        """label, seconds and camera as given, or None having answered 400."""
        names = ("label", "seconds", "camera")
        content = self.request.headers.get("Content-Type", "")
        if content.split(";")[0].strip().lower() == "application/json":
            try:
                body = json.loads(self.request.body or b"{}")
            except (ValueError, UnicodeDecodeError):
                body = None
            if not isinstance(body, dict) or not all(
                    isinstance(body[k], str | int | float) and not isinstance(body[k], bool)
                    for k in names if k in body):
                _json_error(self, 400, 'a JSON object {"label": "doorbell", "seconds": 10}')
                return None
            return {k: str(body[k]) for k in names if k in body}
        fields: dict[str, str] = {}
        for k in names:
            value = self.get_argument(k, None)
            if value is not None:
                fields[k] = value
        return fields

    def post(self) -> None:
        how = self._allowed()
        if how is None:
            return
        fields = self._fields()
        if fields is None:
            return
        label = fields.get("label", "").strip()
        if not LABEL.fullmatch(label):
            _json_error(self, 400, "label: 1..32 characters, letters, digits, space, _ . - "
                                   "(starting with a letter or digit)")
            return
        try:
            seconds = float(fields.get("seconds", DEFAULT_SECONDS))
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_SECONDS:  # NaN fails too
            _json_error(self, 400, f"seconds: a number above 0, at most {MAX_SECONDS:g}")
            return
        name = fields.get("camera") or self.recorder.name
        live = self.camera(name)
        if live is None:
            return
        state = live.state
        if state.trigger is None:
            _json_error(self, 503, f"{name} cannot be triggered here")
            return
        if not state.switches()[0]:
            _json_error(self, 409, f"{name} is disarmed: arm it to take triggers")
            return
        state.trigger(label, seconds)
        _limiter.log(log, logging.INFO, f"trigger-{name}", "trigger %r for %g s on %s (%s from %s)",
                     label, seconds, name, how, self.request.remote_ip)
        self.finish({"camera": name, "label": label, "seconds": seconds})


def _mask_path(state: RecorderState) -> Path | None:
    """The mask the camera's motion detector started with or was given since: the page's saved
    one, else --motion-mask's; None when everything is watched."""
    stored = state.cfg.stored_mask
    if stored is not None and stored.is_file():
        return stored
    return state.cfg.motion_mask


def _mask_png(state: RecorderState) -> bytes | None:
    """The current mask as PNG bytes (a --motion-mask in another format is converted); None."""
    path = _mask_path(state)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if data.startswith(PNG_SIGNATURE):
        return data
    return _png(read_mask(path))


def _png(grey: np.ndarray[Any, np.dtype[np.uint8]]) -> bytes:
    ctx = av.CodecContext.create("png", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.height, ctx.width = grey.shape
    ctx.pix_fmt = "gray"
    ctx.open()
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


class MaskPage(Base):
    """GET /mask?camera=NAME (logged in): the mask editor over the camera's picture."""

    def get(self) -> None:
        if self.current_user is None:
            self.redirect("/login?next=" + quote(self.request.uri or "/mask", safe=""))
            return
        name = self.get_argument("camera", "") or self.recorder.name
        live = self.lives.get(name)
        if live is None:
            raise tornado.web.HTTPError(404, "no such camera")
        state = live.state
        size = state.cfg.frame_size
        self.set_header("Cache-Control", "no-store")
        self.render("mask.html", camera=name, title=state.title,
                    source=display_name(state.source_name), login=self.login is not None,
                    motion=state.set_mask is not None, width=size.width, height=size.height,
                    cameras=[(n, each.state.title) for n, each in self.lives.items()])


class SnapshotHandler(_Api):
    """GET /api/cameras/NAME/snapshot.jpg: the newest frame as a JPEG (encoded off the loop)."""

    async def get(self, name: str) -> None:
        if self.refused():
            return
        live = self.camera(name)
        if live is None:
            return
        frame = live.state.hub.latest()
        if frame is None:
            _json_error(self, 503, f"{name} has no picture yet")
            return
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, JpegEncoder().encode, frame.image)
        except (av.FFmpegError, ValueError) as exc:
            _limiter.log(log, logging.WARNING, "snapshot", "snapshot of %s not made: %s", name, exc)
            _json_error(self, 500, "the picture could not be encoded")
            return
        self.set_header("Content-Type", "image/jpeg")
        self.finish(data)


class MaskHandler(_Api):
    """GET /api/cameras/NAME/mask.png: the motion mask in use (white = watch, black = ignore;
    404: none, everything is watched). PUT or POST (the XSRF token, logged in) a PNG as the body
    (or as a multipart file): checked (400 with the reason), kept in the state directory and
    applied to the running detector at once."""

    async def get(self, name: str) -> None:
        if self.refused():
            return
        live = self.camera(name)
        if live is None:
            return
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, _mask_png, live.state)
        except (OSError, MaskError) as exc:
            _limiter.log(log, logging.WARNING, "mask-read", "mask of %s cannot be read: %s",
                         name, exc)
            _json_error(self, 500, "the mask cannot be read")
            return
        if data is None:
            _json_error(self, 404, "no mask: the whole picture is watched")
            return
        self.set_header("Content-Type", "image/png")
        self.finish(data)

    async def put(self, name: str) -> None:
        if self.refused():
            return
        live = self.camera(name)
        if live is None:
            return
        state = live.state
        if state.set_mask is None:
            _json_error(self, 409, f"motion detection is off for {name} (--detect motion)")
            return
        files = [f for each in self.request.files.values() for f in each]
        data = files[0].body if files else self.request.body
        if len(data) > MAX_MASK_BYTES:
            _json_error(self, 413, f"a mask of at most {MAX_MASK_BYTES // (1024 * 1024)} MiB")
            return
        if not data.startswith(PNG_SIGNATURE):
            _json_error(self, 400, "the uploaded mask: not a PNG")
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, state.set_mask, data)
        except ValueError as exc:  # MaskError: the reason, one line
            _limiter.log(log, logging.INFO, "mask-bad", "mask for %s refused: %s", name, exc)
            _json_error(self, 400, str(exc))
            return
        except OSError as exc:
            log.error("mask for %s not saved: %s", name, exc.strerror or exc)
            _json_error(self, 500, f"the mask cannot be kept: {exc.strerror or exc}")
            return
        self.finish({"camera": name, "saved": True})

    post = put
