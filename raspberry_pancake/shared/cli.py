"""What every command line here shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Generic, NoReturn, TypeVar

N = TypeVar("N", int, float)


class ConfigError(Exception):
    """Bad input found after parsing (cross-flag rules, files, directories): one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse without the usage block on errors: `prog: error: message`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class Bounded(Generic[N]):
    """An argparse type: a whole number (`int`) or a number (`float`) within bounds, each
    failure one line (`'x' is not a number`, `'500' is not 1..10`). `kind` tells --config's
    reader which TOML values the flag takes."""

    def __init__(self, convert: Callable[[str], N], ok: Callable[[N], bool], not_a: str,
                 out_of: str) -> None:
        self._convert: Callable[[str], N] = convert
        self._ok: Callable[[N], bool] = ok
        self._not_a = not_a
        self._out_of = out_of
        self.kind = "int" if convert is int else "number"

    def __call__(self, text: str) -> N:
        try:
            value: N = self._convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} {self._not_a}") from None
        if not self._ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {self._out_of}")
        return value
