"""What every command line here shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ConfigError(Exception):
    """Bad input found after parsing (cross-flag rules, files, directories): one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse without the usage block on errors: `prog: error: message`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")
