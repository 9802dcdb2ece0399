#!/usr/bin/env python3
"""Manage the people pancake's faces detector knows: add photos of someone, list, remove, rename.

examples:
  python3 util/faces.py add Anna anna1.jpg anna2.jpg
      finds the face in each photo (the largest, if there are several), and keeps its
      embedding and a small crop of it under the name Anna (more photos: better recognition)
  python3 util/faces.py list
  python3 util/faces.py rename Anna "Anna K."
  python3 util/faces.py remove "Anna K."
      deletes Anna's embeddings and crops

The store is faces/ in the state directory ($XDG_STATE_HOME/pancake, by default
~/.local/state/pancake; /var/lib/pancake under the systemd units): --faces or --state-dir
choose another. It must belong to the user pancake runs as: under the units, run this as
`sudo -u pancake python3 util/faces.py ...`. A running pancake picks up changes within a second
or two. Names are 1-64 characters; "unknown" is reserved.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.shared.cli import ConfigError, OneLineParser
from raspberry_pancake.shared.faces import FaceStore, StoreError, check_name, default_dir

PROG = "faces.py"
MAX_SIDE = 2000  # photos are scaled down to this first: a 12 MP phone photo needs no more
DUPLICATE = 0.02  # an embedding this close to one already kept is the same photo again

Action = Literal["add", "list", "remove", "rename"]


@dataclass(frozen=True, slots=True)
class Config:
    action: Action
    faces: Path
    name: str = ""
    new_name: str = ""
    photos: tuple[Path, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = (__doc__ or "").strip().partition("\n")
    parser = OneLineParser(prog=PROG, description=summary, epilog=rest.strip() or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, metavar="DIR",
                        help="the known-people store (default: faces/ in the state directory)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="the state directory (default: $XDG_STATE_HOME/pancake, else "
                             "~/.local/state/pancake)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                parser_class=OneLineParser)
    add = sub.add_parser("add", help="add photos of a person (a new name or one already there)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("photos", nargs="+", metavar="PHOTO", type=Path)
    sub.add_parser("list", help="list the people and how many faces each has")
    rm = sub.add_parser("remove", help="remove a person, their embeddings and crops")
    rm.add_argument("name", metavar="NAME")
    mv = sub.add_parser("rename", help="rename a person")
    mv.add_argument("name", metavar="OLD")
    mv.add_argument("new_name", metavar="NEW")
    return parser


def parse_args(argv: Sequence[str] | None) -> Config:
    a = build_parser().parse_args(argv)
    faces = a.faces if a.faces is not None else default_dir(a.state_dir)
    if faces.exists() and not faces.is_dir():
        raise ConfigError(f"--faces {str(faces)!r} is not a directory")
    try:
        if a.action == "add":
            check_name(a.name)
        if a.action == "rename":
            check_name(a.new_name)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    return Config(a.action, faces, getattr(a, "name", ""), getattr(a, "new_name", ""),
                  tuple(getattr(a, "photos", ())))


def _list(cfg: Config) -> int:
    people = FaceStore(cfg.faces).people()
    if not people:
        print(f"{cfg.faces}: nobody enrolled yet (add someone: {PROG} add NAME PHOTO...)")
        return 0
    for p in sorted(people, key=lambda p: p.name.casefold()):
        since = min((f.added for f in p.faces), default=0.0)
        day = time.strftime("%Y-%m-%d", time.localtime(since)) if since else "?"
        print(f"{p.name}: {len(p.faces)} face(s), since {day}")
    return 0


def _add(cfg: Config) -> int:
    # Ownership before the models load (seconds on a Pi): a refusal should be immediate.
    store = FaceStore(cfg.faces)
    store.check_owner()

    import numpy as np

    from raspberry_pancake.recorder.detect.faces import (
        MIN_FACE,
        FaceError,
        crop_jpeg,
        largest,
        load_models,
    )

    try:
        models = load_models()  # first: it says which part of the face stack is missing
    except FaceError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    from PIL import Image, ImageOps
    failed = 0
    total = len(cfg.photos)
    for n, photo in enumerate(cfg.photos, 1):
        try:
            with Image.open(photo) as im:
                # Phone photos are stored sideways with an EXIF turn: faces must stand upright.
                upright = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            why = getattr(exc, "strerror", None) or "not a picture this can read"
            print(f"{PROG}: {photo}: {why}", file=sys.stderr)
            failed += 1
            continue
        upright.thumbnail((MAX_SIDE, MAX_SIDE))
        rgb = np.ascontiguousarray(np.asarray(upright, dtype=np.uint8))
        faces = models.find(rgb)
        face = largest(faces)
        if face is None:
            print(f"{PROG}: {photo}: no face found (use a photo where the face is clear and "
                  "upright)", file=sys.stderr)
            failed += 1
            continue
        if face.size < MIN_FACE:
            # The embedding of a tiny face is mostly noise: it would match strangers.
            print(f"{PROG}: {photo}: the face is {face.size:.0f} px, too small (at least "
                  f"{MIN_FACE} px: use a closer or larger photo)", file=sys.stderr)
            failed += 1
            continue
        vec = models.embed(rgb, face)
        person = store.find(cfg.name)
        if person is not None and any(
                float(np.linalg.norm(np.asarray(f.embedding) - vec)) < DUPLICATE
                for f in person.faces):
            print(f"[{n}/{total}] {photo}: already kept for {person.name}, skipped")
            continue
        person = store.add(cfg.name, vec.tolist(), crop_jpeg(rgb, face), photo.name)
        many = f" ({len(faces)} faces: took the largest)" if len(faces) > 1 else ""
        print(f"[{n}/{total}] {photo}: added to {person.name}{many}, "
              f"{len(person.faces)} face(s) in all")
    return 1 if failed else 0


def _remove(cfg: Config) -> int:
    person = FaceStore(cfg.faces).remove(cfg.name)
    print(f"removed {person.name} and {len(person.faces)} face(s)")
    return 0


def _rename(cfg: Config) -> int:
    old = FaceStore(cfg.faces).find(cfg.name)
    person = FaceStore(cfg.faces).rename(cfg.name, cfg.new_name)
    print(f"renamed {old.name if old else cfg.name} to {person.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """0: done; 1: a photo had no face or could not be read, or the store refused; 2: bad
    input."""
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the store's directory cannot even be looked at
        print(f"{PROG}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    run = {"add": _add, "list": _list, "remove": _remove, "rename": _rename}[cfg.action]
    try:
        return run(cfg)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc.filename or cfg.faces}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
