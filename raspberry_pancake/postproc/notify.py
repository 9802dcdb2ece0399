"""Telegram alerts: text or photo at a detection edge, the clip as a video once it is converted."""

from __future__ import annotations

import datetime as dt
import errno
import http.client
import io
import json
import logging
import math
import os
import queue
import re
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, cast
from urllib.parse import quote, urlsplit

from raspberry_pancake.postproc.config import TelegramTarget
from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.shared.credentials import RedactingFilter
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

# The public Bot API takes uploads up to 50 MB; a self-hosted server takes up to 2000 MB.
PUBLIC_UPLOAD_LIMIT = 50 * 1000 * 1000
SELF_HOSTED_UPLOAD_LIMIT = 2000 * 1000 * 1000
# A network error is retried a few times (1, 2, 4 s apart); a flood-control wait is honoured
# up to this many times per alert; a 400 (or any other refusal) is never retried.
NETWORK_ATTEMPTS = 4
RETRY_AFTER_TIMES = 5
RETRY_AFTER_MAX = 600.0
# A wait longer than this is no answer to act on (the server's bug, or not the Bot API).
RETRY_AFTER_UNREADABLE = 1e9
BACKOFF_FIRST = 1.0
# Each is the longest wait for progress: the connection (and TLS handshake), any byte of the
# reply, each chunk of a request; a media upload's chunk may wait longer on a slow uplink.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MEDIA_WRITE_TIMEOUT = 120.0
POLL = 0.1
# An upload goes out in chunks read from the file: a 50 MB clip never sits in memory.
CHUNK = 64 * 1024
# The Bot API's replies are a few hundred bytes; anything past this is not one.
REPLY_MAX = 1024 * 1024
USER_AGENT = "raspberry-pancake"
# A camera's outage and its return: at most one message per camera in this many seconds. A
# change held back is sent when the window ends, if it still stands.
HEALTH_INTERVAL = 600.0
# pancake records the event in the catalog as it sends the edge; an alert that went out
# first looks for it again for this long before giving up on recording it.
RECORD_WITHIN = 10.0
# The system's hashed CA directory (Debian and Pi OS keep it with update-ca-certificates).
SYSTEM_CA_DIR = Path("/etc/ssl/certs")
_HASHED = re.compile(r"[0-9a-f]{8}\.\d+")
# What a multipart header may not carry from a file name: quotes, backslashes, controls.
_UNSAFE_NAME = re.compile(r'["\\\x00-\x1f\x7f]')


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


class BotApiError(Exception):
    """The Bot API (or the way to it) did not take a request. Texts never hold the URL."""


class NetworkError(BotApiError):
    """No answer, or a 5xx: worth trying again after a pause."""


class FloodControl(BotApiError):
    """HTTP 429 with parameters.retry_after: the server's word, as it sent it."""

    def __init__(self, retry_after: object) -> None:
        super().__init__(f"flood control, retry_after {retry_after!r}")
        self.retry_after = retry_after


class Refused(BotApiError):
    """400 bad request or chat not found, 401/404 invalid token, 403 forbidden, 409, 413 too
    large, a chat migrated to a supergroup: retrying cannot help."""


class Unreadable(BotApiError):
    """A reply that is not the Bot API's: retrying would only get the same."""


class Stopped(Exception):
    """The stop event was set while a request was under way."""


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart request: opened afresh for every attempt."""

    field: str
    path: Path
    content_type: str


def tls_context(ca_dir: Path = SYSTEM_CA_DIR) -> ssl.SSLContext | None:
    """Certificates checked against the system's CA directory, which OpenSSL reads lazily: only
    the root a server's chain needs is loaded, where a CA bundle file (ssl's default when
    /usr/lib/ssl/cert.pem exists, or certifi's) parses all ~140 roots into memory up front,
    about 2 MB of RSS. None (ssl's own defaults, `ssl.create_default_context()`) when the
    directory is missing or not hashed, or when SSL_CERT_FILE or SSL_CERT_DIR is set: OpenSSL
    honours those itself."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return None
    try:
        hashed = any(_HASHED.fullmatch(name) for name in os.listdir(ca_dir))
    except OSError:
        return None
    if not hashed:
        return None
    return ssl.create_default_context(capath=str(ca_dir))


def _phrase(status: int) -> str:
    try:
        return f"{HTTPStatus(status).phrase} ({status})"
    except ValueError:
        return f"HTTP {status}"


def _description(value: object, status: int) -> str:
    """The server's description for a log line: one line, bounded."""
    if not isinstance(value, str) or not value.strip():
        return _phrase(status)
    return " ".join(value.split())[:300] + f" ({status})"


def reply_result(status: int, body: bytes) -> object:
    """The `result` of a Bot API reply, or the error it stands for (mapped as
    python-telegram-bot did, which this module used before)."""
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = None
    if HTTPStatus.OK <= status <= 299:
        if data is None or data.get("ok") is not True or "result" not in data:
            raise Unreadable(f"{_phrase(status)} without the Bot API's ok and result")
        return data["result"]
    if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        # Often nginx's HTML page, not JSON: the size is the whole story.
        raise Refused("request entity too large (413)")
    message = _description(data.get("description") if data else None, status)
    parameters = data.get("parameters") if data else None
    if isinstance(parameters, dict):
        migrated = parameters.get("migrate_to_chat_id")
        if migrated:
            raise Refused(f"Group migrated to supergroup. New chat id: {migrated}; give that "
                          "as --notify-telegram's chat_id")
        retry_after = parameters.get("retry_after")
        if retry_after:
            raise FloodControl(retry_after)
    if status in (HTTPStatus.BAD_REQUEST, HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN,
                  HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT):
        raise Refused(message)
    raise NetworkError(message)


class _Received:
    """What http.client.HTTPResponse reads from: the bytes received so far."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str, *args: object, **kwargs: object) -> IO[bytes]:
        return io.BytesIO(self._data)


def _parse(data: bytes, complete: bool) -> tuple[int, bytes] | None:
    """(status, body) of the HTTP response in `data`; None while more is to come. `complete`:
    the server closed the connection, so what is here is all there is."""
    if b"\r\n\r\n" not in data and b"\n\n" not in data:
        if complete:
            raise NetworkError("the connection closed before a reply" if not data
                               else "a reply cut off in its headers")
        return None
    response = http.client.HTTPResponse(cast(socket.socket, _Received(data)))
    try:
        response.begin()
        if not complete and not response.chunked and response.length is None:
            return None  # the body runs to the end of the connection
        return response.status, response.read()
    except (http.client.HTTPException, ValueError) as exc:
        if not complete:
            return None  # a chunk-size line half received parses as nonsense: wait for more
        if isinstance(exc, http.client.IncompleteRead):
            raise NetworkError("a reply cut off in its body") from None
        raise NetworkError(f"not an HTTP reply ({type(exc).__name__})") from None


class BotApi:
    """A Bot API client on the standard library, one connection per request.

    Every wait (connecting, the TLS handshake, each chunk sent, the reply) polls the stop event
    every POLL seconds and has its own timeout, so a request in progress is cut off within a
    POLL of a stop. Name resolution is the one blocking call (getaddrinfo has no timeout).
    """

    def __init__(self, api_url: str, token: str, stop: threading.Event,
                 context: ssl.SSLContext | None = None) -> None:
        url = api_url.replace("{token}", token) if "{token}" in api_url else api_url + token
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        # Said (without the URL, which holds the token) at every request, as a refusal: one
        # line per alert, where raising here would stop postproc with a traceback.
        self._invalid = (parts.scheme not in ("http", "https") or not parts.hostname
                         or port == -1)
        self._tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = port if port and port > 0 else (443 if self._tls else 80)
        # The token goes into the path as it is, but nothing in it can end the request line.
        self._path = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self._tls else 80
        self._host_header = host if self.port == default else f"{host}:{self.port}"
        self._stop = stop
        self._context = (context or tls_context() or ssl.create_default_context()) \
            if self._tls else None

    @property
    def where(self) -> str:
        """host:port, for messages (never the URL, which holds the token)."""
        return f"{self.host}:{self.port}"

    def call(self, method: str, fields: Mapping[str, str], upload: Upload | None = None,
             ) -> object:
        """POST one method; its `result`. Raises NetworkError, FloodControl, Refused,
        Unreadable, Stopped, or OSError when the upload's file cannot be read."""
        if self._invalid:
            raise Refused("--telegram-api-url with the token appended is not an http(s) URL "
                          "with a host and port (it should end in /bot)")
        if upload is None:
            body = json.dumps(dict(fields)).encode()
            head = self._head(method, "application/json", len(body))
            return self._exchange(head + body, None, b"", READ_TIMEOUT)
        boundary = secrets.token_hex(16)
        preamble = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode() + b"\r\n" for name, value in fields.items())
        filename = _UNSAFE_NAME.sub("_", upload.path.name)
        preamble += (f'--{boundary}\r\nContent-Disposition: form-data; name="{upload.field}"; '
                     f'filename="{filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
                     ).encode()
        epilogue = f"\r\n--{boundary}--\r\n".encode()
        with upload.path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = len(preamble) + size + len(epilogue)
            head = self._head(method, f"multipart/form-data; boundary={boundary}", length)
            return self._exchange(head + preamble, (f, size), epilogue, MEDIA_WRITE_TIMEOUT)

    def _head(self, method: str, content_type: str, length: int) -> bytes:
        return (f"POST {self._path}/{method} HTTP/1.1\r\nHost: {self._host_header}\r\n"
                f"User-Agent: {USER_AGENT}\r\nAccept: application/json\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
                "Connection: close\r\n\r\n").encode()

    def _exchange(self, first: bytes, file: tuple[io.BufferedReader, int] | None, last: bytes,
                  write_timeout: float) -> object:
        sock = self._connect()
        try:
            self._send_all(sock, first, write_timeout)
            if file is not None:
                self._send_file(sock, *file, write_timeout)
            self._send_all(sock, last, write_timeout)
            status, body = self._receive(sock)
        finally:
            sock.close()
        return reply_result(status, body)

    def _wait(self, sock: socket.socket, write: bool, timeout: float, doing: str) -> None:
        """Until `sock` is ready, the stop event is set (Stopped) or `timeout` passes."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        end = time.monotonic() + timeout
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                raise NetworkError(f"{self.where}: timed out {doing} ({timeout:g} s)")
            if poller.poll(min(left, POLL) * 1000):
                return
        raise Stopped

    def _connect(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise NetworkError(f"{self.where}: cannot resolve the name: {exc}") from None
        error: BotApiError = NetworkError(f"{self.where}: no address")
        for family, kind, proto, _, address in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                raise NetworkError(f"{self.where}: no socket: {exc.strerror}") from None
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                    self._wait(sock, True, CONNECT_TIMEOUT, "connecting")
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise NetworkError(f"{self.where}: cannot connect: {os.strerror(code)}")
                if self._context is None:
                    return sock
                return self._handshake(sock)
            except NetworkError as exc:
                sock.close()
                error = exc
            except OSError as exc:
                sock.close()
                error = NetworkError(f"{self.where}: cannot connect: {exc.strerror or exc}")
            except BaseException:
                sock.close()
                raise
        raise error

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        assert self._context is not None
        try:
            tls = self._context.wrap_socket(sock, server_hostname=self.host,
                                            do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            raise NetworkError(f"{self.where}: TLS: {exc}") from None
        end = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                self._wait(tls, False, max(0.0, end - time.monotonic()), "in the TLS handshake")
            except ssl.SSLWantWriteError:
                self._wait(tls, True, max(0.0, end - time.monotonic()), "in the TLS handshake")
            except OSError as exc:
                # A certificate that does not verify ends here: nothing of the request went.
                tls.close()
                raise NetworkError(f"{self.where}: TLS: {exc}") from None

    def _send_all(self, sock: socket.socket, data: bytes | memoryview, timeout: float) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self._wait(sock, True, timeout, "sending")
                continue
            except ssl.SSLWantReadError:
                self._wait(sock, False, timeout, "sending")
                continue
            except OSError as exc:
                raise NetworkError(f"{self.where}: sending: {exc}") from None
            view = view[sent:]

    def _send_file(self, sock: socket.socket, f: io.BufferedReader, size: int,
                   timeout: float) -> None:
        """`size` bytes of `f`, CHUNK at a time: the Content-Length said so up front."""
        buffer = bytearray(CHUNK)
        left = size
        while left:
            n = f.readinto(memoryview(buffer)[:min(CHUNK, left)])
            if not n:
                raise OSError(errno.EIO, "the file shrank while it was sent")
            self._send_all(sock, memoryview(buffer)[:n], timeout)
            left -= n

    def _receive(self, sock: socket.socket) -> tuple[int, bytes]:
        data = b""
        while True:
            try:
                chunk = sock.recv(CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._wait(sock, False, READ_TIMEOUT, "waiting for the reply")
                continue
            except ssl.SSLWantWriteError:
                self._wait(sock, True, READ_TIMEOUT, "waiting for the reply")
                continue
            except ssl.SSLEOFError:
                chunk = b""  # closed without TLS's close_notify: the parse says if it is whole
            except OSError as exc:
                raise NetworkError(f"{self.where}: reading the reply: {exc}") from None
            data += chunk
            if len(data) > REPLY_MAX:
                raise Unreadable(f"{self.where}: a reply over {REPLY_MAX} bytes")
            parsed = _parse(data, complete=not chunk)
            if parsed is not None:
                return parsed


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


def _retry_after_seconds(value: object) -> float | None:
    """The wait a 429 asks for, at most RETRY_AFTER_MAX; None when it names no usable number
    ("soon", [1], NaN, 10**30)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if not math.isfinite(seconds) or seconds > RETRY_AFTER_UNREADABLE:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class Notifier:
    """One Telegram chat: a bounded queue and a thread that sends its alerts in turn.

    The thread makes blocking-free requests itself (BotApi polls the stop event while it
    waits), so a stop cuts off an alert in progress within a POLL and the thread is joined.
    The queue drops new alerts when full (logged): a stale alert is worth less than the
    capture and conversion it would otherwise hold up.
    """

    def __init__(self, target: TelegramTarget, api_url: str, public_api: bool, queue_size: int,
                 stop: threading.Event, record: Recorder | None = None,
                 health_interval: float = HEALTH_INTERVAL) -> None:
        self.target = target
        self._limit = PUBLIC_UPLOAD_LIMIT if public_api else SELF_HOSTED_UPLOAD_LIMIT
        self._queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self._stop = stop
        # Exception texts should never quote the URL (which holds the token); in case one does.
        self._redact = RedactingFilter([target.token]).redact
        self._thread = StageThread(f"telegram-{target.chat_id}"[:40], self._run)
        self._api = BotApi(api_url, target.token.reveal(), stop)
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
        api = self._api
        try:
            while not self._stop.is_set():
                self._record_pending()
                held = self._health_due()
                if held is not None:
                    self._deliver(api, held)
                    continue
                try:
                    alert = self._queue.get(timeout=POLL * 2)
                except queue.Empty:
                    continue
                if alert.health is not None and not self._health_now(alert):
                    continue
                self._deliver(api, alert)
        finally:
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

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when the stop event was set."""
        return not self._stop.wait(seconds)

    def _deliver(self, api: BotApi, alert: Alert) -> None:
        chat = self.target.chat_id
        call: Callable[[], object]
        if alert.video is not None:
            video = alert.video
            try:
                size = video.stat().st_size
            except OSError as exc:
                log.warning("%s: clip %s gone: %s", self.target.label, video, exc.strerror)
                return
            if size > self._limit:
                text = (f"{alert.text}: {size / 1e6:.0f} MB, over the Bot API's "
                        f"{self._limit / 1e6:.0f} MB limit")
                self._deliver(api, Alert(text))
                return

            def call() -> object:
                return api.call("sendVideo", {"chat_id": chat, "caption": alert.text,
                                              "supports_streaming": "true"},
                                Upload("video", video, "video/mp4"))
        elif alert.photo is not None:
            photo = alert.photo

            def call() -> object:
                return api.call("sendPhoto", {"chat_id": chat, "caption": alert.text},
                                Upload("photo", photo, "image/jpeg"))
        else:
            def call() -> object:
                return api.call("sendMessage", {"chat_id": chat, "text": alert.text})
        if self._send(call, alert.text):
            self._sent(alert)
            return
        if self._stop.is_set():
            return
        self.failed += 1
        if alert.video is not None or alert.photo is not None:
            # The media was refused or never got through: the words still matter.
            what = alert.video.name if alert.video is not None else "snapshot"
            if self._send(lambda: api.call("sendMessage", {
                    "chat_id": chat, "text": f"{alert.text} ({what} not sent)"}), alert.text):
                self._sent(alert)

    def _send(self, call: Callable[[], object], text: str) -> bool:
        label = self.target.label
        network_failures = 0
        flood_waits = 0
        delay = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                call()
                return True
            except Stopped:
                log.info("%s: alert cut off by shutdown", label)
                return False
            except FloodControl as exc:
                flood_waits += 1
                wait = _retry_after_seconds(exc.retry_after)
                if wait is None:
                    log.error("%s: unreadable reply to %r: flood control with no usable "
                              "retry_after", label, text)
                    return False
                if flood_waits > RETRY_AFTER_TIMES:
                    log.error("%s: still flood-limited, dropped %r", label, text)
                    return False
                log.warning("%s: flood control, retry in %g s", label, wait)
                if not self._sleep(wait):
                    return False
            except Refused as exc:
                log.error("%s: refused %r: %s", label, text, self._redact(str(exc)))
                return False
            except Unreadable as exc:
                log.error("%s: unreadable reply to %r: %s", label, text, self._redact(str(exc)))
                return False
            except NetworkError as exc:
                network_failures += 1
                if network_failures >= NETWORK_ATTEMPTS:
                    log.error("%s: gave up on %r after %d attempts: %s", label, text,
                              network_failures, self._redact(str(exc)))
                    return False
                log.warning("%s: %s; retry in %g s", label, self._redact(str(exc)), delay)
                if not self._sleep(delay):
                    return False
                delay *= 2
            except OSError as exc:
                # BotApi turns every socket error into a NetworkError: this is the file's.
                log.error("%s: cannot read the file for %r: %s", label, text,
                          exc.strerror or exc)
                return False
        return False
