#!/usr/bin/env python3
"""Keep the newest N recordings in each directory and delete the older ones.

examples:
  python3 util/limit_files_by_number.py h264 8 mp4 4
      keeps the 8 newest recordings in h264/ and the 4 newest in mp4/
  python3 util/limit_files_by_number.py --dry-run --only-recordings h264 500
      lists what would go, touching only files named like recordings
  crontab -e, then this line runs it every night at 03:30:
    30 3 * * * cd ~/raspberry-pancake && python3 util/limit_files_by_number.py mp4 2000

A recording counts once with its sidecars (X.h264 with X.pts, X.jpg and X-boxes.jpg) and goes with them.
Age is the time in the name (YYYYMMDD-hhmm[ss]), else the modification time. A file still
being written (open by any process, or modified in the last minute) is never deleted, and
symlinks and subdirectories are left alone.

With pancake's catalog (pancake.db in the state directory, or --catalog), a recording marked
kept is never deleted and does not count among the N; what goes is marked deleted there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.retention import RecordingDir, take_oldest
from raspberry_pancake.shared.retention_cli import Remover, parse_count, run_script


def limit_by_number(remover: Remover, path: Path, keep: int, only_recordings: bool) -> None:
    """Delete all but the `keep` newest items of `path`; those kept in the catalog stay and
    do not count (a number is about the recordings that rotate, so age alone decides)."""
    with RecordingDir(path) as rdir:
        plan = remover.plan(path, rdir.items(only_recordings))
        kept = 0

        def fits(_item: object) -> bool:
            nonlocal kept
            kept += 1
            return kept <= keep

        for item in take_oldest(plan.rest, fits):
            remover.remove(rdir, item)


LIMIT = ("N", "how many of the newest recordings to keep")


def main(argv: list[str] | None = None) -> int:
    return run_script("limit_files_by_number.py", __doc__ or "", LIMIT,
                      parse_count, limit_by_number, argv)


if __name__ == "__main__":
    sys.exit(main())
