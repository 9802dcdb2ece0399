"""Login for the live page: the bcrypt hash file, the cookie secret beside it, failure throttling."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
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
