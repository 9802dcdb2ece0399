#!/usr/bin/env python3
"""Delete the oldest recordings in each directory until its filesystem has enough free space.

examples:
  python3 util/limit_free_space.py h264 2G
      deletes the oldest recordings in h264/ until its filesystem has 2 GiB free
  python3 util/limit_free_space.py --only-recordings h264 10% mp4 10%
      keeps 10% of the filesystem free: h264/ gives up its recordings first, mp4/ only
      if that was not enough (directories are used in the order given)
  crontab -e, then this line runs it at 7 minutes past every hour:
    7 * * * * cd ~/raspberry-pancake && python3 util/limit_free_space.py --only-recordings h264 10%

Sizes may be written in bytes, with K, M, G or T (powers of 1024, as `df -h` shows them), or
as a percentage of the filesystem's size; free space is what `df` calls Avail. A recording goes
together with its sidecars (X.h264 with X.pts and X.jpg). Age is the time in the name
(YYYYMMDD-hhmm[ss]), else the modification time. A file still being written (open by any
process, or modified in the last minute) is never deleted, and symlinks and subdirectories are
left alone. Exit code 1 when the target could not be reached.

With pancake's catalog (pancake.db in the state directory, or --catalog), recordings go in its
order: converted and uploaded to every destination first, then converted, then the rest, the
oldest first within each. One marked kept is never deleted, and what goes is marked deleted.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.retention import Amount, RecordingDir, human_bytes, parse_amount
from raspberry_pancake.shared.retention_cli import Remover, run_script


def parse_free(text: str) -> Amount:
    return parse_amount(text, percent_ok=True)


def limit_free_space(remover: Remover, path: Path, want: Amount, only_recordings: bool) -> None:
    """Delete items of `path` until its filesystem has `want` free: the oldest first, or in
    the catalog's order (uploaded everywhere, then converted, then the rest)."""
    with RecordingDir(path) as rdir:
        usage = shutil.disk_usage(path)
        need = want.of(usage.total)
        free = usage.free
        if free >= need:
            return
        plan = remover.plan(path, rdir.items(only_recordings))
        for item in sorted(plan.rest, key=plan.key):
            if not remover.remove(rdir, item):
                continue
            # A dry run can only estimate; a real one asks the filesystem again.
            free = free + item.disk if remover.dry_run else shutil.disk_usage(path).free
            if free >= need:
                return
        wanted = f"{want} ({human_bytes(need)})" if want.percent is not None else str(want)
        remover.fail(f"{path}: {human_bytes(free)} free after deleting what could go, "
                     f"short of {wanted}")


LIMIT = ("FREE", "free space wanted, as 2G or 10%%")


def main(argv: list[str] | None = None) -> int:
    return run_script("limit_free_space.py", __doc__ or "", LIMIT,
                      parse_free, limit_free_space, argv)


if __name__ == "__main__":
    sys.exit(main())
