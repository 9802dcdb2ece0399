#!/usr/bin/env python3
"""Write the bcrypt hash file for pancake.py --login: asks twice, never echoes, mode 0600."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspberry_pancake.recorder.web.auth import MAX_PASSWORD_BYTES, hash_password


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner only, never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="set_password.py",
        description="Set the live page's password: writes a bcrypt hash for pancake.py --login.")
    parser.add_argument("path", nargs="?", default="password.txt",
                        help="hash file to write (default: password.txt)")
    args = parser.parse_args(argv)
    path = Path(args.path)
    if path.is_dir():
        parser.exit(2, f"set_password.py: error: {args.path!r} is a directory\n")
    if not path.absolute().parent.is_dir():
        parser.exit(2, f"set_password.py: error: directory of {args.path!r} does not exist\n")
    try:
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat it: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        parser.exit(2, "set_password.py: error: no password given; nothing written\n")
    if first != second:
        parser.exit(2, "set_password.py: error: the two passwords differ; nothing written\n")
    password = first.encode("utf-8", "surrogatepass")
    if not password:
        parser.exit(2, "set_password.py: error: the password is empty; nothing written\n")
    if len(password) > MAX_PASSWORD_BYTES:
        parser.exit(2, f"set_password.py: error: the password is {len(password)} bytes; "
                       f"bcrypt takes at most {MAX_PASSWORD_BYTES}; nothing written\n")
    try:
        write_private(path, hash_password(password) + b"\n")
    except OSError as exc:
        parser.exit(2, f"set_password.py: error: cannot write {args.path!r}: {exc.strerror}\n")
    print(f"wrote {path} (bcrypt); use: pancake.py --login {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
