"""The util/ retention scripts' common frame: their command line, the remover and main()."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from raspberry_pancake.shared.cli import ConfigError, OneLineParser
from raspberry_pancake.shared.retention import BusyCheck, Item, RecordingDir, human_bytes

T = TypeVar("T")


def parse_count(text: str) -> int:
    """A whole number ≥ 0 (files or days to keep). Raises ValueError."""
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number ≥ 0")
    return int(text)


@dataclass(frozen=True, slots=True)
class RetentionConfig(Generic[T]):
    """One util script's command line: (directory, limit) pairs and the common switches."""

    pairs: tuple[tuple[Path, T], ...]
    dry_run: bool
    only_recordings: bool
    verbose: bool


def build_parser(prog: str, doc: str, limit_name: str, limit_help: str) -> argparse.ArgumentParser:
    """The shared command line: `DIR LIMIT [DIR LIMIT …]` and the common switches."""
    summary, _, rest = doc.strip().partition("\n")
    parser = OneLineParser(prog=prog, description=summary, epilog=rest.strip() or None,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar=f"DIR {limit_name}",
                        help=f"a directory, then {limit_name}: {limit_help}; "
                             "more pairs may follow")
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="print what would be deleted, delete nothing")
    parser.add_argument("--only-recordings", action="store_true",
                        help="consider only files named like recordings (YYYYMMDD-hhmm[ss]) "
                             "and their sidecars; leave anything else alone")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print every file deleted and every one kept because it is in use")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               convert: Callable[[str], T]) -> RetentionConfig[T]:
    """Parse and check once: an even number of arguments, existing directories, valid limits."""
    a = parser.parse_args(argv)
    args: list[str] = a.pairs
    if len(args) % 2:
        raise ConfigError(f"arguments come in pairs DIR LIMIT; got {len(args)} "
                         f"(the last, {args[-1]!r}, has no partner)")
    pairs: list[tuple[Path, T]] = []
    for text, limit in zip(args[::2], args[1::2], strict=True):
        path = Path(text)
        if not path.exists():
            raise ConfigError(f"{text}: no such directory")
        if not path.is_dir():
            raise ConfigError(f"{text}: not a directory")
        try:
            value = convert(limit)
        except ValueError as exc:
            raise ConfigError(f"{text}: {exc}") from None
        pairs.append((path, value))
    return RetentionConfig(tuple(pairs), a.dry_run, a.only_recordings, a.verbose)


@dataclass
class Outcome:
    """What a run did, for the exit code and the summary."""

    deleted: int = 0
    freed: int = 0
    kept_busy: int = 0
    errors: list[str] = field(default_factory=list)


class Remover:
    """Deletes items for a util script, or says what it would delete (--dry-run)."""

    def __init__(self, dry_run: bool, verbose: bool, busy: BusyCheck | None = None,
                 out: Callable[[str], None] = print) -> None:
        self.dry_run = dry_run
        self.verbose = verbose
        self.busy = busy or BusyCheck()
        self.out = out
        self.outcome = Outcome()

    def remove(self, rdir: RecordingDir, item: Item) -> bool:
        """Delete one item unless it is in use; True if it went (or would go)."""
        why = self.busy.reason(item)
        if why is not None:
            self.outcome.kept_busy += 1
            if self.verbose or self.dry_run:
                self.out(f"keep {item.describe()}: {why}")
            return False
        if self.dry_run:
            self.out(f"would delete {item.describe()}, {human_bytes(item.size)}")
            self.outcome.deleted += 1
            self.outcome.freed += item.disk
            return True
        try:
            freed = rdir.delete(item)
        except OSError as exc:
            self.fail(f"cannot delete {item.describe()}: {exc.strerror or exc}")
            return False
        self.outcome.deleted += 1
        self.outcome.freed += freed
        if self.verbose:
            self.out(f"deleted {item.describe()}, {human_bytes(item.size)}")
        return True

    def fail(self, line: str) -> None:
        self.outcome.errors.append(line)
        print(line, file=sys.stderr)


def run_script(prog: str, doc: str, limit: tuple[str, str], convert: Callable[[str], T],
               apply: Callable[[Remover, Path, T, bool], None],
               argv: Sequence[str] | None = None) -> int:
    """main() of a util script: parse, apply the rule to each pair in order, exit code.

    0: done; 1: something could not be deleted or read (said on stderr); 2: bad input.
    """
    parser = build_parser(prog, doc, *limit)
    try:
        cfg = parse_args(parser, argv, convert)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    remover = Remover(cfg.dry_run, cfg.verbose)
    for path, value in cfg.pairs:
        try:
            apply(remover, path, value, cfg.only_recordings)
        except OSError as exc:
            remover.fail(f"{path}: {exc.strerror or exc}")
        remover.busy.refresh()
    o = remover.outcome
    if cfg.verbose or cfg.dry_run:
        verb = "would delete" if cfg.dry_run else "deleted"
        print(f"{verb} {o.deleted} item(s), giving back {human_bytes(o.freed)} of disk; "
              f"{o.kept_busy} kept because in use")
    return 1 if o.errors else 0
