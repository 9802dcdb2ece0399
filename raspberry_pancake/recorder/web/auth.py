"""Login for the live page: the bcrypt hash file, the cookie secret, revoked sessions, failure throttling."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from raspberry_pancake.recorder.config import ConfigError

BCRYPT_COST = 12
# bcrypt only reads 72 bytes; bcrypt 5 raises ValueError beyond that instead of truncating.
MAX_PASSWORD_BYTES = 72
_BCRYPT_HASH = re.compile(rb"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
SECRET_BYTES = 32
SECRET_SUFFIX = ".secret"  # noqa: S105 — a file name suffix, not a secret
SESSION_DAYS = 7  # a session cookie's life; a revocation is kept as long
REVOKED_FILE = "revoked-sessions.json"
MAX_REVOKED = 10_000

log = logging.getLogger(__name__)


def hash_password(password: bytes) -> bytes:
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_COST))


def check_password(password: bytes, hashed: bytes) -> bool:
    """True if `password` matches; slow on purpose (~0.2 s here, ~1 s on a Pi Zero): not on the loop."""
    if not password or len(password) > MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(password, hashed)


def load_hash(path: Path) -> bytes:
    """The bcrypt hash in `path`, or ConfigError with one line saying what is wrong."""
    fix = f"write it with: util/set_password.py {path}"
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"--login: {str(path)!r} does not exist; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"--login: cannot read {str(path)!r}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"--login: {str(path)!r} is empty; {fix}")
    if not _BCRYPT_HASH.match(text):
        raise ConfigError(f"--login: {str(path)!r} does not hold a bcrypt hash; {fix}")
    return text


def session_tag(hashed: bytes) -> str:
    """A short fingerprint of the hash, put in sessions: a new password ends every old session."""
    return hashlib.sha256(hashed).hexdigest()[:16]


def cookie_secret(hash_path: Path) -> bytes:
    """The cookie-signing secret kept (mode 0600) beside the hash, made on first use.

    Kept on disk so that a restart does not log everyone out.
    """
    path = hash_path.with_name(hash_path.name + SECRET_SUFFIX)
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        secret = b""
    except OSError as exc:
        raise ConfigError(f"--login: cannot read {str(path)!r}: {exc.strerror}") from None
    if len(secret) >= 2 * SECRET_BYTES and os.stat(path).st_mode & 0o077 == 0:
        return secret
    # Missing, short or readable by others: make a new one (old sessions end, as they should).
    secret = secrets.token_hex(SECRET_BYTES).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secret + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"--login: cannot write the cookie secret {str(path)!r}: "
                          f"{exc.strerror}") from None
    return secret


class Revocations:
    """Sessions ended by logging out, kept in the state directory so a restart keeps them ended.

    The file (mode 0600, in a 0700 directory) holds a SHA-256 of each session id (never the id)
    with the wall-clock time after which its cookie has expired anyway. Several pancakes (one per
    camera) may share it: a logout re-reads it under a lock and merges before writing, and a
    check re-reads it when it changed, so a cookie logged out on one is refused by all.
    Checks run on the event loop (a stat, rarely a small read); writes run in an executor.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / REVOKED_FILE
        # Guards _ids and _seen: checks on the loop, writes in an executor thread.
        self._lock = threading.Lock()
        self._ids: dict[str, float] = {}
        self._seen: tuple[int, int, int] | None = None

    def load(self) -> None:
        """Make the directory and read the file; ConfigError with one line if either fails."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.stat().st_mode & 0o077 and directory.stat().st_uid == os.getuid():
                directory.chmod(0o700)
            with self._lock:
                self._reload()
        except OSError as exc:
            raise ConfigError(f"--login: cannot keep logged-out sessions in {str(directory)!r}: "
                              f"{exc.strerror}; set XDG_STATE_HOME to a writable directory"
                              ) from None

    @staticmethod
    def _key(sid: str) -> str:
        return hashlib.sha256(sid.encode()).hexdigest()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        """Read the file if it changed since last read (caller holds _lock); OSError if unreadable."""
        stamp = self._stamp()
        if stamp == self._seen:
            return
        ids: dict[str, float] = {}
        if stamp is not None:
            with open(self.path, "rb") as f:
                raw = f.read(4 * 1024 * 1024)
            try:
                data = json.loads(raw)
                ids = {str(k): float(v) for k, v in data.get("revoked", {}).items()}
            except (ValueError, AttributeError, TypeError):
                # A damaged file must not resurrect sessions silently, nor stop the page.
                log.error("%s is damaged; sessions logged out before may work again until they "
                          "expire", self.path)
        self._ids = ids
        self._seen = stamp

    def __contains__(self, sid: str) -> bool:
        key = self._key(sid)
        with self._lock:
            try:
                self._reload()
            except OSError as exc:
                log.error("cannot read %s: %s", self.path, exc.strerror)
            until = self._ids.get(key)
        return until is not None and until > time.time()

    def revoke(self, sid: str) -> None:
        """End `sid` for good (blocking: call it off the event loop). OSError if not written:
        the session is then ended in memory only, until a restart."""
        key = self._key(sid)
        now = time.time()
        with self._lock:
            self._ids[key] = now + SESSION_DAYS * 86400
            lock_path = self.path.with_name(self.path.name + ".lock")
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another pancake may be writing it too
                mine = dict(self._ids)
                self._seen = None
                with contextlib.suppress(OSError):
                    self._reload()
                merged = {k: v for k, v in {**self._ids, **mine}.items() if v > now}
                if len(merged) > MAX_REVOKED:  # keep the ones that expire last
                    merged = dict(sorted(merged.items(), key=lambda kv: kv[1])[-MAX_REVOKED:])
                self._ids = merged  # kept in memory even if the write below fails
                _write_private(self.path, json.dumps({"version": 1, "revoked": merged}).encode())
                self._seen = self._stamp()
            finally:
                os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600) so that a crash leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# Failure throttling: the n-th failure in a row from one address costs BASE * 2**(n-1) s, up
# to MAX_DELAY. An address that stays quiet for FORGET seconds starts again from BASE.
BASE_DELAY = 1.0
MAX_DELAY = 60.0
FORGET = 15 * 60.0
MAX_PENDING = 10  # attempts from one address waiting their turn; more are refused at once
MAX_ADDRESSES = 4096


@dataclass
class _Client:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    pending: int = 0
    last: float = field(default_factory=time.monotonic)


CheckFn = Callable[[], Awaitable[bool]]


class TooManyAttempts(Exception):
    """More attempts from one address are already waiting their turn."""


class LoginThrottle:
    """Per client address: answers one at a time, each failure answered slower than the last.

    Lives on the event loop (asyncio only, no threads): the waiting is `asyncio.sleep`, so a
    throttled address delays nobody else and never the live view.
    """

    def __init__(self, base: float = BASE_DELAY, maximum: float = MAX_DELAY) -> None:
        self._base = base
        self._max = maximum
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def delay(self, failures: int) -> float:
        return 0.0 if failures <= 0 else min(self._max, self._base * 2 ** min(failures - 1, 30))

    def failures(self, address: str) -> int:
        client = self._clients.get(address)
        return 0 if client is None else client.failures

    def _client(self, address: str) -> _Client:
        now = time.monotonic()
        client = self._clients.get(address)
        if client is not None and client.pending == 0 and now - client.last > FORGET:
            client = None
        if client is None:
            if len(self._clients) >= MAX_ADDRESSES:
                self._evict()
            client = self._clients[address] = _Client()
        self._clients.move_to_end(address)
        return client

    def _evict(self) -> None:
        idle = [a for a, c in self._clients.items() if c.pending == 0]
        for address in idle[: max(1, len(idle) // 2)]:
            del self._clients[address]

    async def run(self, address: str, check: CheckFn) -> bool:
        """Run `check()` for `address` now; answer in arrival order, each failure held back.

        The check itself starts at once (its CPU work is bounded by the caller's pool), but
        answers from one address leave one at a time, each failure after a growing delay:
        ten guesses sent together are answered after 1, 3, 7, 15… seconds. Raises
        TooManyAttempts when MAX_PENDING attempts from the address already wait.
        """
        client = self._client(address)
        if client.pending >= MAX_PENDING:
            raise TooManyAttempts(address)
        client.pending += 1
        checking = asyncio.ensure_future(check())
        try:
            async with client.lock:  # FIFO: answers leave in the order the attempts came
                ok = await checking
                client.last = time.monotonic()
                if ok:
                    client.failures = 0
                    return True
                client.failures += 1
                # Still holding the lock: the next answer for this address waits this out too.
                await asyncio.sleep(self.delay(client.failures))
                return False
        finally:
            if not checking.done():
                checking.cancel()
            client.pending -= 1
            client.last = time.monotonic()
