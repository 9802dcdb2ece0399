#!/usr/bin/env python3
"""Keep the newest N days of a YYYY/MM/DD backup tree and delete older days.

examples:
  python3 util/limit_days.py /srv/backup/cam1 30 /srv/backup/cam2 60
      keeps the 30 most recent day directories under cam1/ and 60 under cam2/
  python3 util/limit_days.py --dry-run /srv/backup/cam1 30
      lists the days that would go

Meant for the machine receiving postproc's uploads, where files sit in YYYY/MM/DD directories.
Counting is by day directories present, not by calendar: a week without uploads does not use
up days. Months and years left empty are removed too. A day holding a file still being written
(open by any process, or modified in the last minute) keeps that file and whatever belongs
with it; everything else of that day goes. Symlinks are never followed. With
--only-recordings, only recordings and their sidecars are deleted from old days, other files
stay (and so does their day directory).

With pancake's catalog (pancake.db in the state directory, or --catalog; where the tree is on
the machine that records), a recording marked kept stays with its sidecars, and so does its
day; whatever else goes is marked deleted there.
"""

from __future__ import annotations

import re
import shutil
import stat
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.retention import RecordingDir, human_bytes, iter_tree
from raspberry_pancake.shared.retention_cli import Remover, parse_count, run_script

_YEAR = re.compile(r"\d{4}")
_TWO = re.compile(r"\d{2}")


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    path: Path


def _subdirs(path: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Real subdirectories (not symlinks) whose name matches `pattern`."""
    return sorted(p for p in path.iterdir()
                  if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def find_days(top: Path) -> list[Day]:
    """Every YYYY/MM/DD directory under `top` naming a real date, oldest first."""
    days = []
    for year in _subdirs(top, _YEAR):
        for month in _subdirs(year, _TWO):
            for day in _subdirs(month, _TWO):
                try:
                    when = date(int(year.name), int(month.name), int(day.name))
                except ValueError:
                    continue
                days.append(Day(when, day))
    days.sort(key=lambda d: d.day)
    return days


def _by_dir(paths: list[Path]) -> dict[Path, list[str]]:
    out: dict[Path, list[str]] = {}
    for p in paths:
        out.setdefault(p.parent, []).append(p.name)
    return out


def _remove_day(remover: Remover, day: Path, only_recordings: bool) -> bool:
    """Delete one day; True if its directory is gone (or would be)."""
    files = [(p, st) for p, st in iter_tree(day) if not stat.S_ISDIR(st.st_mode)]
    # A symlink is not being written, and rmtree removes the link, never what it points to.
    busy = [p for p, st in files
            if stat.S_ISREG(st.st_mode) and remover.busy.reason_stat(p, st) is not None]
    regular = [p for p, st in files if stat.S_ISREG(st.st_mode)]
    kept = any(k.kept for d, names in _by_dir(regular).items()
               for k in remover.catalog.known(d, names).values())
    if not only_recordings and not busy and not kept:
        size = sum(st.st_size for _, st in files)
        if remover.dry_run:
            remover.out(f"would delete {day}/ ({len(files)} files, {human_bytes(size)})")
        else:
            errors: list[str] = []
            shutil.rmtree(day, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
            for d, names in _by_dir([p for p in regular if not p.exists()]).items():
                remover.catalog.mark(d, names)
            for line in errors:
                remover.fail(f"cannot delete {line}")
            if errors:
                return False
            if remover.verbose:
                remover.out(f"deleted {day}/ ({len(files)} files, {human_bytes(size)})")
        remover.outcome.deleted += 1
        remover.outcome.freed += sum(st.st_blocks * 512 for _, st in files)
        return True
    # Something must stay: go recording by recording, so nothing is split from its sidecars.
    with RecordingDir(day) as rdir:
        plan = remover.plan(day, rdir.items(only_recordings))
        gone = [remover.remove(rdir, item) for item in plan.rest]
    if remover.dry_run or plan.kept or not all(gone):
        return False
    try:
        day.rmdir()
    except OSError:  # other files or subdirectories are still there: the day stays
        return False
    return True


def _prune_empty(remover: Remover, parent: Path, gone: set[Path]) -> bool:
    """Remove `parent` if every entry in it is gone; True if it is (or would be)."""
    if any(p not in gone for p in parent.iterdir()):
        return False
    if not remover.dry_run:
        try:
            parent.rmdir()
        except OSError:
            return False
    return True


def limit_days(remover: Remover, top: Path, keep: int, only_recordings: bool) -> None:
    """Delete all but the `keep` newest day directories under `top`, then empty months/years."""
    days = find_days(top)
    old = days[:max(len(days) - keep, 0)]
    gone = {d.path for d in old if _remove_day(remover, d.path, only_recordings)}
    for month in sorted({d.path.parent for d in old}):
        if _prune_empty(remover, month, gone):
            gone.add(month)
    for year in sorted({d.path.parent.parent for d in old}):
        _prune_empty(remover, year, gone)


LIMIT = ("DAYS", "how many of the newest days to keep")


def main(argv: list[str] | None = None) -> int:
    return run_script("limit_days.py", __doc__ or "", LIMIT,
                      parse_count, limit_days, argv)


if __name__ == "__main__":
    sys.exit(main())
