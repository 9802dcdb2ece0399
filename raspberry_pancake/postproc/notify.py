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
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from raspberry_pancake.shared.logs import RateLimiter

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
# A camera's outage and its return: at most one message per camera in this many seconds. A
# change held back is sent when the window ends, if it still stands.
HEALTH_INTERVAL = 600.0
# pancake records the event in the catalog as it sends the edge; an alert that went out
# first looks for it again for this long before giving up on recording it.
RECORD_WITHIN = 10.0
# The system's hashed CA directory (Debian and Pi OS keep it with update-ca-certificates).
SYSTEM_CA_DIR = Path("/etc/ssl/certs")
_HASHED = re.compile(r"[0-9a-f]{8}\.\d+")


# Records that an alert for the event that rose at `rise` on `camera` went out on `channel`;
# False when the catalog has no such event (yet).
Recorder = Callable[[str, float, str], bool]
CHANNEL = "telegram"


@dataclass(frozen=True, slots=True)
class Alert:
    """One message: `photo` or `video` with `text` as its caption, or `text` alone.
    `event`: (camera, rise time) of the detection it announces, recorded once sent.
    `health`: (camera, state) of a camera's outage or return, rate-limited per camera."""

    text: str
    photo: Path | None = None
    video: Path | None = None
    event: tuple[str, float] | None = None
    health: tuple[str, str] | None = None


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


def edge_text(detecting: bool, epoch: float | None, place: str | None = None) -> str:
    where = f" ({place})" if place else ""
    return f"{'Detection' if detecting else 'Detection over'} at {_when(epoch)}{where}"


def _words(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _area(boxes: object) -> float:
    """How much of the picture the boxes cover (their areas summed, at most all of it)."""
    total = 0.0
    for box in boxes if isinstance(boxes, list) else []:
        if isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in box):
            total += max(0.0, float(box[2])) * max(0.0, float(box[3]))
    return min(total, 1.0)


def caption(event: Mapping[str, object], place: str | None) -> str:
    """What a rising edge says: who was seen ("Anna at front door", "Unknown person at front
    door"), else what ("motion, 12 % of the picture, front door"), else the original's
    "Detection at …"; the time follows on a second line."""
    names = list(dict.fromkeys(_words(event.get("names"))))
    known = [n for n in names if n != "unknown"]
    labels = list(dict.fromkeys(_words(event.get("labels"))))
    when = event.get("time")
    epoch = float(when) if isinstance(when, int | float) and not isinstance(when, bool) else None
    at = f" at {place}" if place else ""
    if known:
        who = known + (["an unknown person"] if "unknown" in names else [])
        head = f"{_and(who)}{at}"
    elif names:
        head = f"Unknown person{at}"
    elif labels:
        parts = []
        for label in labels:
            area = _area(event.get("boxes")) if label == "motion" else 0.0
            parts.append(f"{label}, {max(1, round(area * 100))} % of the picture" if area
                         else label)
        head = ", ".join(parts + ([place] if place else []))
    else:
        return edge_text(True, epoch, place)
    return f"{head}\n{_when(epoch)}"


def health_text(place: str, state: str, epoch: float | None) -> str:
    if state == "live":
        return f"{place}: the camera delivers pictures again ({_when(epoch)})"
    return f"{place}: no picture from the camera for a minute ({state}, {_when(epoch)})"


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
                 stop: threading.Event, record: Recorder | None = None,
                 health_interval: float = HEALTH_INTERVAL) -> None:
        self.target = target
        self._api_url = api_url
        self._limit = PUBLIC_UPLOAD_LIMIT if public_api else None
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        # Exception texts can quote a URL, and a Bot API URL holds the token.
        self._redact = RedactingFilter([target.token]).redact
        self._thread = StageThread(f"telegram-{target.chat_id}"[:40], self._run)
        self._record = record
        self._limiter = RateLimiter()
        self._unrecorded: list[tuple[str, float, float]] = []  # camera, rise, give up at
        self._health_interval = health_interval
        # Per camera: when the last health message went, with which state; and the newest
        # one held back meanwhile. Only the notifier's thread touches these.
        self._health_sent: dict[str, tuple[float, str]] = {}
        self._health_held: dict[str, Alert] = {}
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

    def detection(self, event: Mapping[str, object], camera: str, place: str | None,
                  photo: Path | None) -> bool:
        """An edge message: at the rise, the caption and the photo (the one with boxes when
        there is one), recorded in the catalog once sent; at the fall, a line."""
        when = event.get("time")
        epoch = float(when) if isinstance(when, int | float) and not isinstance(when, bool) \
            else None
        if event.get("detection") is not True:
            return self.submit(Alert(edge_text(False, epoch, place)))
        return self.submit(Alert(caption(event, place), photo=photo,
                                 event=(camera, epoch) if epoch is not None else None))

    def health(self, camera: str, state: str, place: str, epoch: float | None) -> bool:
        return self.submit(Alert(health_text(place, state, epoch), health=(camera, state)))

    def text(self, text: str) -> bool:
        return self.submit(Alert(text))

    def clip(self, mp4: Path, place: str | None = None) -> bool:
        return self.submit(Alert(f"Clip {mp4.name}" + (f" ({place})" if place else ""),
                                 video=mp4))

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
                self._record_pending()
                held = self._health_due()
                if held is not None:
                    loop.run_until_complete(self._until_stopped(self._deliver(bot, held)))
                    continue
                try:
                    alert = self._queue.get(timeout=POLL * 2)
                except queue.Empty:
                    continue
                if alert.health is not None and not self._health_now(alert):
                    continue
                loop.run_until_complete(self._until_stopped(self._deliver(bot, alert)))
        finally:
            loop.run_until_complete(request.shutdown())
            loop.close()
            left = self._queue.qsize()
            if left:
                log.info("%s: %d alert(s) not sent at stop", self.target.label, left)

    def _health_now(self, alert: Alert) -> bool:
        """Whether a health alert goes now; if not, it is held until its camera's window
        ends (replacing an older one held)."""
        assert alert.health is not None
        camera, state = alert.health
        last = self._health_sent.get(camera)
        now = time.monotonic()
        if last is not None and now - last[0] < self._health_interval:
            self._health_held[camera] = alert
            return False
        self._health_sent[camera] = (now, state)
        return True

    def _health_due(self) -> Alert | None:
        """A held health alert whose window has ended, if it still says something new."""
        now = time.monotonic()
        for camera, alert in list(self._health_held.items()):
            sent_at, sent_state = self._health_sent[camera]
            if now - sent_at < self._health_interval:
                continue
            del self._health_held[camera]
            assert alert.health is not None
            if alert.health[1] == sent_state:
                continue  # back as it was when we last said: nothing to tell
            self._health_sent[camera] = (now, alert.health[1])
            return alert
        return None

    def _sent(self, alert: Alert) -> None:
        self.sent += 1
        if alert.event is not None and self._record is not None:
            camera, rise = alert.event
            self._unrecorded.append((camera, rise, time.monotonic() + RECORD_WITHIN))
            self._record_pending()

    def _record_pending(self) -> None:
        """Record the alerts sent in the catalog; an event pancake has not written yet is
        looked for again on the next turn, for RECORD_WITHIN seconds."""
        if not self._unrecorded or self._record is None:
            return
        left = []
        for camera, rise, give_up in self._unrecorded:
            try:
                done = self._record(camera, rise, CHANNEL)
            except Exception as exc:  # noqa: BLE001 - the catalog's trouble: the alert went
                log.warning("%s: alert not recorded in the catalog: %s", self.target.label, exc)
                continue
            if done:
                continue
            if time.monotonic() < give_up:
                left.append((camera, rise, give_up))
            else:
                self._limiter.log(log, logging.WARNING, "unrecorded", "%s: alert not "
                                  "recorded: the catalog has no event of camera %s at %s",
                                  self.target.label, camera, _when(rise))
        self._unrecorded = left

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
            self._sent(alert)
            return
        self.failed += 1
        if alert.video is not None or alert.photo is not None:
            # The media was refused or never got through: the words still matter.
            what = alert.video.name if alert.video is not None else "snapshot"
            if await self._send(lambda: bot.send_message(chat, f"{alert.text} ({what} not "
                                                                "sent)"), alert.text):
                self._sent(alert)

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
