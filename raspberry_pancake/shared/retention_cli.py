"""The util/ retention scripts' common frame: their command line, the catalog, the remover."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from raspberry_pancake.shared.catalog import CONVERTED, REST, UPLOADED, Catalog, CatalogError
from raspberry_pancake.shared.cli import ConfigError, OneLineParser
from raspberry_pancake.shared.retention import (
    VIDEO_EXTS,
    BusyCheck,
    Item,
    RecordingDir,
    human_bytes,
    split_name,
)
from raspberry_pancake.shared.statedir import catalog_path

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
    catalog: Path
    # --catalog or --state-dir named it: a missing file is then worth a line on stderr, where
    # the default one missing is the normal case of a machine without pancake (a backup host).
    catalog_named: bool = False


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
                        help="print every file deleted and every one kept because it is in use "
                             "or kept in the catalog")
    parser.add_argument("--catalog", type=Path, metavar="PATH",
                        help="pancake's catalog, which says what is kept, converted and "
                             "uploaded (default: pancake.db in the state directory)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="the state directory holding pancake.db (default: "
                             "$XDG_STATE_HOME/pancake, else ~/.local/state/pancake)")
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
    catalog = catalog_path(a.catalog, a.state_dir)
    if catalog.is_dir():
        raise ConfigError(f"{catalog}: a directory, not a catalog file"
                          + (" (--state-dir names the directory holding it)"
                             if a.catalog is not None else ""))
    named = a.catalog is not None or a.state_dir is not None
    return RetentionConfig(tuple(pairs), a.dry_run, a.only_recordings, a.verbose, catalog, named)


# ---------------------------------------------------------------- the catalog

# The deletion order's tiers, first to go first (as the disk guard's, Catalog.deletion_order).
TIER_NOTE = {UPLOADED: "converted and uploaded everywhere", CONVERTED: "converted", REST: ""}


@dataclass(frozen=True, slots=True)
class Known:
    """What the catalog says of one video file."""

    kept: bool
    tier: int


def _forms(directory: Path) -> list[str]:
    """The directory as the catalog may have stored it: absolute as given, and with symlinks
    resolved (a user may reach the record directory through a link pancake did not use)."""
    forms = [os.path.abspath(directory)]
    real = os.path.realpath(directory)
    return forms if real == forms[0] else [*forms, real]


class CatalogLink:
    """The catalog as the util scripts use it: what is kept, the deletion order, and marking
    what went. The first failure turns it off for the rest of the run with one line: the
    scripts then work by age alone, as without a catalog (pancake, its owner, repairs it)."""

    def __init__(self, catalog: Catalog | None, fail: Callable[[str], None]) -> None:
        self._catalog = catalog
        self._fail = fail
        self._destinations: list[str] | None = None
        self.marked = 0

    @property
    def active(self) -> bool:
        return self._catalog is not None

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _off(self, exc: CatalogError) -> None:
        self._fail(f"catalog unavailable from here on ({exc}): deleting by age only, "
                   "nothing more marked")
        self.close()

    def known(self, directory: Path, names: Iterable[str]) -> dict[str, Known]:
        """What the catalog says of the videos among `names` in `directory`, by name; the
        names it does not know are left out."""
        videos = {n for n in names if split_name(n)[1] in VIDEO_EXTS}
        if self._catalog is None or not videos:
            return {}
        try:
            return self._known(self._catalog, directory, videos)
        except CatalogError as exc:
            self._off(exc)
            return {}

    def _known(self, catalog: Catalog, directory: Path, videos: set[str]) -> dict[str, Known]:
        if self._destinations is None:
            self._destinations = catalog.destinations()
        out: dict[str, Known] = {}
        for f in catalog.files_in(_forms(directory), self._destinations):
            name = os.path.basename(f.path)
            if name not in videos:
                continue
            old = out.get(name)
            # A name catalogued twice (two stored forms): kept wins, and the safer tier.
            out[name] = Known(f.kept or (old is not None and old.kept),
                              f.tier if old is None else max(f.tier, old.tier))
        return out

    def mark(self, directory: Path, names: Iterable[str]) -> None:
        """Tell the catalog these files of `directory` were deleted (the videos among them;
        sidecars go with their recording and have no row of their own)."""
        if self._catalog is None:
            return
        for name in names:
            if split_name(name)[1] not in VIDEO_EXTS:
                continue
            try:
                if any(self._catalog.mark_deleted(Path(f) / name) for f in _forms(directory)):
                    self.marked += 1
            except CatalogError as exc:
                self._off(exc)
                return


def open_catalog(cfg: RetentionConfig[T], prog: str, say: Callable[[str], None],
                 fail: Callable[[str], None]) -> CatalogLink:
    """The run's catalog, never its owner: a missing or damaged file is pancake's to make or
    move aside, so it is left untouched and the run works by age alone. One line says so: on
    stderr when it was named or is damaged; else (the default one missing, as on a backup
    host) through `say`, which the summary of -v and --dry-run shows."""
    path = cfg.catalog
    if not path.exists():
        line = f"no catalog at {path}: deleting by age only, nothing marked"
        if cfg.catalog_named:
            fail(f"{prog}: {line}")
        else:
            say(line)
        return CatalogLink(None, fail)
    try:
        return CatalogLink(Catalog.open(path, owner=False), fail)
    except CatalogError as exc:
        fail(f"{prog}: catalog unavailable ({exc}): deleting by age only, nothing marked")
        return CatalogLink(None, fail)


@dataclass(frozen=True, slots=True)
class Plan:
    """One directory's items split by the catalog: `kept` are never deleted; `rest` go in
    `key` order (plain age when the catalog knows nothing of the directory)."""

    kept: list[Item]
    rest: list[Item]
    tiers: dict[str, int]  # stem -> tier, for the items the catalog knows

    def key(self, item: Item) -> tuple[float | str, ...]:
        """Sort key, first to go first: with the catalog, safely copied elsewhere first, then
        converted, then the rest (what it does not know, too), oldest first within each."""
        if not self.tiers:
            return item.age_key
        return (self.tiers.get(item.stem, REST), *item.age_key)


@dataclass
class Outcome:
    """What a run did, for the exit code and the summary."""

    deleted: int = 0
    freed: int = 0
    kept_busy: int = 0
    kept_marked: int = 0  # marked kept in the catalog
    errors: list[str] = field(default_factory=list)


class Remover:
    """Deletes items for a util script, or says what it would delete (--dry-run)."""

    def __init__(self, dry_run: bool, verbose: bool, busy: BusyCheck | None = None,
                 out: Callable[[str], None] = print,
                 catalog: CatalogLink | None = None) -> None:
        self.dry_run = dry_run
        self.verbose = verbose
        self.busy = busy or BusyCheck()
        self.out = out
        self.outcome = Outcome()
        self.catalog = catalog or CatalogLink(None, self.fail)
        self._notes: dict[tuple[Path, str], str] = {}

    def plan(self, directory: Path, items: Iterable[Item]) -> Plan:
        """Split `items` of `directory` by the catalog, saying (-v, --dry-run) which it keeps."""
        items = list(items)
        known = self.catalog.known(directory, (f.name for i in items for f in i.files))
        kept: list[Item] = []
        rest: list[Item] = []
        tiers: dict[str, int] = {}
        for item in items:
            facts = [known[f.name] for f in item.files if f.name in known]
            if any(k.kept for k in facts):
                kept.append(item)
                self.keep_marked(item)
                continue
            rest.append(item)
            if facts:
                # The .h264's row decides when an .mp4 of the same name sits beside it.
                tiers[item.stem] = max(k.tier for k in facts)
                self._notes[(directory, item.stem)] = TIER_NOTE[tiers[item.stem]]
        return Plan(kept, rest, tiers)

    def keep_marked(self, item: Item) -> None:
        self.outcome.kept_marked += 1
        if self.verbose or self.dry_run:
            self.out(f"keep {item.describe()}: kept in the catalog")

    def remove(self, rdir: RecordingDir, item: Item) -> bool:
        """Delete one item unless it is in use; True if it went (or would go). What went is
        marked deleted in the catalog, even when a later file of the item could not go."""
        why = self.busy.reason(item)
        if why is not None:
            self.outcome.kept_busy += 1
            if self.verbose or self.dry_run:
                self.out(f"keep {item.describe()}: {why}")
            return False
        note = self._notes.get((rdir.path, item.stem))
        tail = f" ({note})" if note else ""
        if self.dry_run:
            self.out(f"would delete {item.describe()}, {human_bytes(item.size)}{tail}")
            self.outcome.deleted += 1
            self.outcome.freed += item.disk
            return True
        gone: list[str] = []
        try:
            freed = rdir.delete_files(item, gone.append)
        except OSError as exc:
            self.fail(f"cannot delete {item.describe()}: {exc.strerror or exc}")
            return False
        finally:
            self.catalog.mark(rdir.path, gone)
        self.outcome.deleted += 1
        self.outcome.freed += freed
        if self.verbose:
            self.out(f"deleted {item.describe()}, {human_bytes(item.size)}{tail}")
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
    # A catalog that cannot be read is not "could not be deleted": the run still does its
    # job by age, so its one line does not turn the exit code (and the cleanup unit) to 1.
    notes: list[str] = []  # said once, in the summary line (-v, --dry-run)
    remover.catalog = open_catalog(cfg, prog, notes.append,
                                   lambda line: print(line, file=sys.stderr))
    try:
        for path, value in cfg.pairs:
            try:
                apply(remover, path, value, cfg.only_recordings)
            except OSError as exc:
                remover.fail(f"{path}: {exc.strerror or exc}")
            remover.busy.refresh()
    finally:
        marked = remover.catalog.marked
        remover.catalog.close()
    o = remover.outcome
    if cfg.verbose or cfg.dry_run:
        verb = "would delete" if cfg.dry_run else "deleted"
        catalog = f", {o.kept_marked} kept in the catalog" if o.kept_marked else ""
        told = f"; {marked} marked deleted in the catalog" if marked else ""
        print(f"{verb} {o.deleted} item(s), giving back {human_bytes(o.freed)} of disk; "
              f"{o.kept_busy} kept because in use{catalog}{told}"
              + "".join(f"; {note}" for note in notes))
    return 1 if o.errors else 0
