"""Secrets from the command line, a file (`@/path`) or the environment (`env:VAR`), kept out of logs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

# A secret file holds one line; anything longer is not a password or a bot token.
MAX_SECRET_FILE = 4096

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY_END = re.compile(r"[/?#\n]")
_BLANK = re.compile(r"\s")
USERINFO_MASK = "***"


def _userinfo_end(text: str, start: int) -> int:
    """The index of the '@' that ends the user:password@ of the URL whose `scheme://` ends at
    `start`, or -1 when it has none."""
    end = _AUTHORITY_END.search(text, start)
    # The last '@' before the path, as FFmpeg splits a URL: a password may hold '@', ':' and
    # blanks (the price: a URL with no path, then an '@' later on the line, loses more).
    at = text.rfind("@", start, end.start() if end is not None else len(text))
    if at < 0:
        # A '/', '?' or '#' inside the password (FFmpeg cannot use such a URL, but the error
        # that says so quotes it): hide up to the word's last '@'.
        blank = _BLANK.search(text, start)
        at = text.rfind("@", start, blank.start() if blank is not None else len(text))
    return at


def redact_url(text: str) -> str:
    """Text with every URL's user:password@ shown as ***@: camera URLs carry credentials, and
    the source's name goes into log lines, /status and error messages (FFmpeg's among them)."""
    parts: list[str] = []
    done = 0
    for m in _SCHEME.finditer(text):
        if m.start() < done:
            continue  # inside a userinfo already hidden
        at = _userinfo_end(text, m.end())
        if at >= 0:
            parts += [text[done:m.end()], USERINFO_MASK]
            done = at
    parts.append(text[done:])
    return "".join(parts)


def url_has_password(text: str) -> bool:
    """Whether a URL in `text` carries user:password@ (a user name alone is no secret)."""
    for m in _SCHEME.finditer(text):
        at = _userinfo_end(text, m.end())
        if at >= 0 and ":" in text[m.end():at]:
            return True
    return False


class SecretError(ValueError):
    """A secret that cannot be read; the message names the flag and the source, never the value."""


class Secret:
    """A string that does not print: repr() and str() show only where it came from."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        """'the command line', 'file /path' or 'environment VAR'."""
        return self._source

    @property
    def from_command_line(self) -> bool:
        return self._source == "the command line"

    def __repr__(self) -> str:
        return f"Secret(from {self._source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def resolve(flag: str, text: str) -> Secret:
    """`@/path/to/file` (first line), `env:VARNAME`, or the literal text."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise SecretError(f"{flag}: cannot read secret file {str(path)!r}: "
                              f"{exc.strerror or exc}") from None
        if len(raw) > MAX_SECRET_FILE:
            raise SecretError(f"{flag}: secret file {str(path)!r} is longer than "
                              f"{MAX_SECRET_FILE} bytes")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise SecretError(f"{flag}: secret file {str(path)!r} is not UTF-8") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise SecretError(f"{flag}: secret file {str(path)!r} is empty")
        return Secret(value, f"file {path}")
    if text.startswith("env:"):
        name = text[4:]
        if not name:
            raise SecretError(f"{flag}: env: needs a variable name")
        value = os.environ.get(name, "")
        if not value:
            raise SecretError(f"{flag}: environment variable {name} is not set or empty")
        return Secret(value, f"environment {name}")
    if not text:
        raise SecretError(f"{flag}: empty secret")
    return Secret(text, "the command line")


class RedactingFilter(logging.Filter):
    """Replaces every known secret in a log record's final text: a last line of defence for
    messages that libraries build from URLs (a Bot API URL holds the token)."""

    MASK = "[secret]"

    def __init__(self, secrets: list[Secret]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted({s.reveal() for s in secrets if s.reveal()}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, self.MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._values:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, so the formatter does not render the raw one.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redact(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if clean != message or record.args:
            record.msg = clean
            record.args = None
        return True


def install_redaction(secrets: list[Secret]) -> None:
    """Attach a RedactingFilter to every root handler (call after setup_logging)."""
    if not secrets:
        return
    flt = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
