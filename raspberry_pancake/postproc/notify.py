"""Telegram alerts: text or photo at a detection edge, the clip as a video once it is converted."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import queue
import re
import ssl
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from telegram import Bot, InputFile
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest

from raspberry_pancake.postproc.config import TelegramTarget
from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.shared.credentials import RedactingFilter

log = logging.getLogger(__name__)

# PTB 22 warns on every flood-control reply unless timedeltas are opted into; this module
# handles both forms (see _retry_after_seconds).
os.environ.setdefault("PTB_TIMEDELTA", "1")

# The public Bot API takes uploads up to 50 MB; a self-hosted server takes up to 2000 MB.
PUBLIC_UPLOAD_LIMIT = 50 * 1000 * 1000
# A network error is retried a few times (1, 2, 4 s apart); a flood-control wait is honoured
# up to this many times per alert; a 400 (or any other refusal) is never retried.
NETWORK_ATTEMPTS = 4
RETRY_AFTER_TIMES = 5
RETRY_AFTER_MAX = 600.0
BACKOFF_FIRST = 1.0
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MEDIA_WRITE_TIMEOUT = 120.0
POLL = 0.1
# The system's hashed CA directory (Debian and Pi OS keep it with update-ca-certificates).
SYSTEM_CA_DIR = Path("/etc/ssl/certs")
_HASHED = re.compile(r"[0-9a-f]{8}\.\d+")


@dataclass(frozen=True, slots=True)
class Alert:
    """One message: `photo` or `video` with `text` as its caption, or `text` alone."""

    text: str
    photo: Path | None = None
    video: Path | None = None


class EntityTooLarge(TelegramError):
    """HTTP 413: the upload is over the server's limit. Retrying cannot help."""


class _Request(HTTPXRequest):
    """PTB reports a 413 as a plain NetworkError, which is otherwise worth retrying."""

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        code, payload = await super().do_request(*args, **kwargs)
        if code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            raise EntityTooLarge("request entity too large (413)")
        return code, payload


def tls_context(ca_dir: Path = SYSTEM_CA_DIR) -> ssl.SSLContext | None:
    """Certificates checked against the system's CA directory, which OpenSSL reads lazily: only
    the root a server's chain needs is loaded, where httpx's default (certifi's bundle) parses
    all ~140 roots into memory up front, about 2 MB of RSS. None (httpx's own choice) when
    the directory is missing or not hashed, or when SSL_CERT_FILE or SSL_CERT_DIR is set:
    httpx honours those itself."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return None
    try:
        hashed = any(_HASHED.fullmatch(name) for name in os.listdir(ca_dir))
    except OSError:
        return None
    if not hashed:
        return None
    return ssl.create_default_context(capath=str(ca_dir))


def _when(epoch: float | None) -> str:
    moment = dt.datetime.now()
    if epoch is not None:
        try:
            moment = dt.datetime.fromtimestamp(epoch)
        except (OverflowError, OSError, ValueError):
            # events.validate keeps such times out; an alert is still worth more than none.
            pass
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def edge_text(detecting: bool, epoch: float | None) -> str:
    return f"{'Detection' if detecting else 'Detection over'} at {_when(epoch)}"


def _retry_after_seconds(exc: RetryAfter) -> float | None:
    """The wait a 429 asks for, at most RETRY_AFTER_MAX; None when it names no number."""
    with warnings.catch_warnings():
        # PTB 22 warns that retry_after becomes a timedelta; either form is handled here.
        warnings.simplefilter("ignore")
        value = exc.retry_after
    try:
        seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None  # the server's word, passed through by PTB: "soon", [1]
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class Notifier:
    """One Telegram chat: a bounded queue and a thread running its own asyncio loop.

    The queue drops new alerts when full (logged): a stale alert is worth less than the
    capture and conversion it would otherwise hold up.
    """

    def __init__(self, target: TelegramTarget, api_url: str, public_api: bool, queue_size: int,
                 stop: threading.Event) -> None:
        self.target = target
        self._api_url = api_url
        self._limit = PUBLIC_UPLOAD_LIMIT if public_api else None
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        # Exception texts can quote a URL, and a Bot API URL holds the token.
        self._redact = RedactingFilter([target.token]).redact
        self._thread = StageThread(f"telegram-{target.chat_id}"[:40], self._run)
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        return self._thread.join(timeout)

    def submit(self, alert: Alert) -> bool:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.warning("%s: alert queue full: dropped %r", self.target.label, alert.text)
            return False
        return True

    def edge(self, detecting: bool, epoch: float | None, jpeg: Path | None) -> bool:
        return self.submit(Alert(edge_text(detecting, epoch), photo=jpeg))

    def text(self, text: str) -> bool:
        return self.submit(Alert(text))

    def clip(self, mp4: Path) -> bool:
        return self.submit(Alert(f"Clip {mp4.name}", video=mp4))

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        ctx = tls_context()
        request = _Request(connection_pool_size=2, connect_timeout=CONNECT_TIMEOUT,
                           read_timeout=READ_TIMEOUT, write_timeout=READ_TIMEOUT,
                           media_write_timeout=MEDIA_WRITE_TIMEOUT,
                           httpx_kwargs={"verify": ctx} if ctx is not None else None)
        bot = Bot(self.target.token.reveal(), base_url=self._api_url, request=request)
        try:
            loop.run_until_complete(request.initialize())
            while not self._stop.is_set():
                try:
                    alert = self._queue.get(timeout=POLL * 2)
                except queue.Empty:
                    continue
                loop.run_until_complete(self._until_stopped(self._deliver(bot, alert)))
        finally:
            loop.run_until_complete(request.shutdown())
            loop.close()
            left = self._queue.qsize()
            if left:
                log.info("%s: %d alert(s) not sent at stop", self.target.label, left)

    async def _until_stopped(self, work: Awaitable[None]) -> None:
        """Run `work`, cancelling it when the stop event is set (shutdown within seconds)."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await asyncio.wait({task}, timeout=POLL)
            if self._stop.is_set() and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    log.info("%s: alert cut off by shutdown", self.target.label)
                return
        await task

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when the stop event was set."""
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, POLL))
        return False

    async def _deliver(self, bot: Bot, alert: Alert) -> None:
        chat = self.target.chat_id
        call: Callable[[], Awaitable[object]]
        if alert.video is not None:
            video = alert.video
            try:
                size = video.stat().st_size
            except OSError as exc:
                log.warning("%s: clip %s gone: %s", self.target.label, video, exc.strerror)
                return
            if self._limit is not None and size > self._limit:
                text = (f"{alert.text}: {size / 1e6:.0f} MB, over the Bot API's "
                        f"{self._limit / 1e6:.0f} MB limit")
                await self._deliver(bot, Alert(text))
                return

            def call() -> Awaitable[object]:
                return self._send_video(bot, video, alert.text)
        elif alert.photo is not None:
            photo = alert.photo

            def call() -> Awaitable[object]:
                return self._send_photo(bot, photo, alert.text)
        else:
            def call() -> Awaitable[object]:
                return bot.send_message(chat, alert.text)
        if await self._send(call, alert.text):
            self.sent += 1
            return
        self.failed += 1
        if alert.video is not None or alert.photo is not None:
            # The media was refused or never got through: the words still matter.
            what = alert.video.name if alert.video is not None else "snapshot"
            if await self._send(lambda: bot.send_message(chat, f"{alert.text} ({what} not "
                                                                "sent)"), alert.text):
                self.sent += 1

    async def _send_video(self, bot: Bot, video: Path, caption: str) -> object:
        """Opened anew for every attempt. read_file_handle=False: httpx streams the file in
        chunks, where PTB would read the whole clip (up to 50 MB) into memory first."""
        with video.open("rb") as f:
            return await bot.send_video(self.target.chat_id,
                                        video=InputFile(f, filename=video.name,
                                                        read_file_handle=False),
                                        caption=caption, supports_streaming=True)

    async def _send_photo(self, bot: Bot, photo: Path, caption: str) -> object:
        """Opened here: given a path that no longer exists (retention deleted the snapshot),
        PTB would send the path itself as a file id and fail as if the network had."""
        with photo.open("rb") as f:
            return await bot.send_photo(self.target.chat_id,
                                        photo=InputFile(f, filename=photo.name), caption=caption)

    async def _send(self, call: Callable[[], Awaitable[object]], text: str) -> bool:
        label = self.target.label
        network_failures = 0
        flood_waits = 0
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                await call()
                return True
            except RetryAfter as exc:
                flood_waits += 1
                wait = _retry_after_seconds(exc)
                if wait is None:
                    log.error("%s: unreadable reply to %r: flood control with no usable "
                              "retry_after", label, text)
                    return False
                if flood_waits > RETRY_AFTER_TIMES:
                    log.error("%s: still flood-limited, dropped %r", label, text)
                    return False
                log.warning("%s: flood control, retry in %g s", label, wait)
                if not await self._sleep(wait):
                    return False
            except (BadRequest, Forbidden, InvalidToken, ChatMigrated, EntityTooLarge) as exc:
                log.error("%s: refused %r: %s", label, text, self._redact(str(exc)))
                return False
            except NetworkError as exc:
                network_failures += 1
                if network_failures >= NETWORK_ATTEMPTS:
                    log.error("%s: gave up on %r after %d attempts: %s", label, text,
                              network_failures, self._redact(str(exc)))
                    return False
                log.warning("%s: %s; retry in %g s", label, self._redact(str(exc)), delay)
                if not await self._sleep(delay):
                    return False
                delay *= 2
            except TelegramError as exc:
                log.error("%s: refused %r: %s", label, text, self._redact(str(exc)))
                return False
            except (ValueError, OverflowError, TypeError) as exc:
                # PTB reading a reply it cannot make sense of (a 429 whose retry_after is
                # "soon", NaN or 10**30) raises these from its own parsing.
                log.error("%s: unreadable reply to %r: %s: %s", label, text,
                          type(exc).__name__, self._redact(str(exc)))
                return False
            except OSError as exc:
                log.error("%s: cannot read the file for %r: %s", label, text, exc.strerror)
                return False
        return False
