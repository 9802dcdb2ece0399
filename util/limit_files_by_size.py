#!/usr/bin/env python3
"""Keep each directory's recordings under a total size, deleting the oldest first.

examples:
  python3 util/limit_files_by_size.py h264 1200000 mp4 2000000
      keeps h264/ under 1,200,000 bytes and mp4/ under 2,000,000 bytes
  python3 util/limit_files_by_size.py --only-recordings h264 20G mp4 500M
      sizes may be written with K, M, G or T (powers of 1024, as `df -h` shows them)

The newest recordings are kept for as long as their running total stays within the size;
that one and everything older go. A recording counts with its sidecars (X.h264 with X.pts and
X.jpg) and goes with them. Age is the time in the name (YYYYMMDD-hhmm[ss]), else the
modification time. A file still being written (open by any process, or modified in the last
minute) is never deleted, and symlinks and subdirectories are left alone.

With pancake's catalog (pancake.db in the state directory, or --catalog), recordings go in its
order: converted and uploaded to every destination first, then converted, then the rest, the
oldest first within each. One marked kept is never deleted (its size still counts), and what
goes is marked deleted there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.retention import Item, RecordingDir, parse_amount, take_oldest
from raspberry_pancake.shared.retention_cli import Remover, run_script


def parse_total(text: str) -> int:
    return parse_amount(text, percent_ok=False).of(0)


def limit_by_size(remover: Remover, path: Path, limit: int, only_recordings: bool) -> None:
    """Delete items of `path` until the rest add up to at most `limit` bytes: the oldest
    first, or in the catalog's order (uploaded everywhere, then converted, then the rest)."""
    with RecordingDir(path) as rdir:
        plan = remover.plan(path, rdir.items(only_recordings))
        # Kept recordings take their space: the limit is the directory's, so they count.
        total = sum(item.size for item in plan.kept)

        def fits(item: Item) -> bool:
            nonlocal total
            total += item.size
            return total <= limit

        for item in take_oldest(plan.rest, fits, plan.key):
            remover.remove(rdir, item)


LIMIT = ("SIZE", "their total at most, as 1200000, 500M or 2G")


def main(argv: list[str] | None = None) -> int:
    return run_script("limit_files_by_size.py", __doc__ or "", LIMIT,
                      parse_total, limit_by_size, argv)


if __name__ == "__main__":
    sys.exit(main())
