#!/usr/bin/env python3
"""Rebuild the catalog (pancake.db) from the recordings on disk, or check it against them.

examples:
  python3 util/catalog.py rebuild /home/pi/Videos --mp4-dir /home/pi/mp4
      adds every recording of /home/pi/Videos the catalog does not know, counts each mp4 with
      the recording's frame count as converted, imports the old .uploaded journals once
  python3 util/catalog.py check /home/pi/Videos --mp4-dir /home/pi/mp4
      lists what the catalog says that the disk does not bear out (exit 1 if anything)

The catalog is pancake.db in the state directory ($XDG_STATE_HOME/pancake, by default
~/.local/state/pancake; /var/lib/pancake under the systemd units): --state-dir or --catalog
choose another. A damaged catalog is moved aside (pancake.db.corrupt-<time>) by rebuild and
started anew; uploads of a rebuilt catalog count as not done. With several cameras, run it
once per camera with its --camera and its directories.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.catalog import (
    Catalog,
    CatalogError,
    check,
    import_journals,
    rebuild,
)
from raspberry_pancake.shared.cli import ConfigError, OneLineParser
from raspberry_pancake.shared.statedir import catalog_path, ensure

PROG = "catalog.py"
CAMERA = re.compile(r"[a-z0-9_-]{1,32}")  # DESIGN.md "Cameras and names"


@dataclass(frozen=True, slots=True)
class Config:
    action: Literal["rebuild", "check"]
    catalog: Path
    h264_dirs: tuple[Path, ...]
    mp4_dir: Path | None
    camera: str
    state_dir: Path | None  # made (0700) when the catalog lives there and it is missing


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = (__doc__ or "").strip().partition("\n")
    parser = OneLineParser(prog=PROG, description=summary, epilog=rest.strip() or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("rebuild", "check"),
                        help="rebuild: add what is on disk; check: report what disagrees")
    parser.add_argument("h264_dirs", nargs="+", metavar="H264_DIR", type=Path,
                        help="a directory pancake records into (more may follow)")
    parser.add_argument("--mp4-dir", type=Path, metavar="DIR",
                        help="postproc's mp4 directory (its conversions and upload journals)")
    parser.add_argument("--camera", default="cam", metavar="NAME",
                        help="the camera these directories belong to (default: cam)")
    parser.add_argument("--catalog", type=Path, metavar="PATH",
                        help="the catalog file (default: pancake.db in the state directory)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="the state directory (default: $XDG_STATE_HOME/pancake, else "
                             "~/.local/state/pancake)")
    return parser


def parse_args(argv: Sequence[str] | None) -> Config:
    """Parse and check once: directories exist, the camera name is valid."""
    a = build_parser().parse_args(argv)
    for d in [*a.h264_dirs, *([a.mp4_dir] if a.mp4_dir else [])]:
        if not d.is_dir():
            raise ConfigError(f"{d}: {'not a directory' if d.exists() else 'no such directory'}")
    if not CAMERA.fullmatch(a.camera):
        raise ConfigError(f"--camera {a.camera!r}: use 1-32 of a-z, 0-9, _ and -")
    path = catalog_path(a.catalog, a.state_dir)
    if a.catalog is not None:
        if path.is_dir():
            raise ConfigError(f"--catalog {str(path)!r} is a directory")
        if not path.absolute().parent.is_dir():
            raise ConfigError(f"--catalog {str(path)!r}: its directory does not exist")
    if a.state_dir is not None and a.state_dir.exists() and not a.state_dir.is_dir():
        raise ConfigError(f"--state-dir {str(a.state_dir)!r} is not a directory")
    return Config(a.action, path, tuple(a.h264_dirs), a.mp4_dir, a.camera,
                  None if a.catalog is not None else path.parent)


def _rebuild(cfg: Config) -> int:
    if cfg.state_dir is not None:
        ensure(cfg.state_dir)
    with Catalog.open(cfg.catalog, owner=True) as catalog:
        if catalog.moved_aside is not None:
            print(f"{cfg.catalog}: damaged, moved aside to {catalog.moved_aside.name}")
        done = rebuild(catalog, list(cfg.h264_dirs), cfg.mp4_dir, cfg.camera)
        imported = import_journals(catalog, cfg.mp4_dir) if cfg.mp4_dir else None
    print(f"{cfg.catalog}: added {done.recordings} recording(s), {done.conversions} "
          f"conversion(s), {done.gone} mp4(s) of deleted recordings"
          + (f"; imported {imported} upload(s) from the old journals" if imported else ""))
    for path in done.unreadable:
        print(f"cannot read {path}", file=sys.stderr)
    return 1 if done.unreadable else 0


def _check(cfg: Config) -> int:
    if not cfg.catalog.exists():
        print(f"{PROG}: {cfg.catalog}: no catalog (run `{PROG} rebuild` to make one)",
              file=sys.stderr)
        return 1
    with Catalog.open(cfg.catalog) as catalog:
        found = check(catalog, list(cfg.h264_dirs), cfg.mp4_dir, cfg.camera)
    for d in found:
        print(d)
    print(f"{cfg.catalog}: {len(found)} disagreement(s) with the disk" if found
          else f"{cfg.catalog}: agrees with the disk")
    return 1 if found else 0


def main(argv: Sequence[str] | None = None) -> int:
    """0: done (or agrees); 1: a file or the catalog could not be read, or check disagreed;
    2: bad input."""
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _rebuild(cfg) if cfg.action == "rebuild" else _check(cfg)
    except CatalogError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
