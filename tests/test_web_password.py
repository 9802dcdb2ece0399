"""util/set_password.py on a real pseudo-terminal: asks twice, echoes nothing, writes 0600."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
from web_helpers import ROOT

from raspberry_pancake.recorder.web import auth

SCRIPT = ROOT / "util" / "set_password.py"
# Makes the pty this process's controlling terminal (getpass talks to /dev/tty), then runs
# the script: what a person at a terminal gets.
CLAIM_TTY = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
             "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


class Terminal:
    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-c", CLAIM_TTY, str(SCRIPT), *args],
                                     stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_until(self, text: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not shown; got {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not shown before exit; got {self.output!r}")
                self.output += chunk

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self) -> int:
        rc = self.proc.wait(30)
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        os.close(self.master)
        return rc


def test_writes_a_private_bcrypt_hash_without_echoing(tmp_path: Path) -> None:
    term = Terminal([], tmp_path)  # default path: ./password.txt
    term.read_until(b"New password: ")
    term.type("tea for two")
    term.read_until(b"Repeat it: ")
    term.type("tea for two")
    assert term.finish() == 0, term.output
    assert b"tea for two" not in term.output, "the password was echoed"
    path = tmp_path / "password.txt"
    assert path.stat().st_mode & 0o777 == 0o600
    hashed = path.read_bytes().strip()
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(b"tea for two", hashed)
    assert auth.load_hash(path) == hashed


def test_replaces_an_existing_file_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "hash"
    path.write_text("old\n")
    path.chmod(0o644)
    term = Terminal([str(path)], tmp_path)
    term.read_until(b"New password: ")
    term.type("second one")
    term.read_until(b"Repeat it: ")
    term.type("second one")
    assert term.finish() == 0, term.output
    assert path.stat().st_mode & 0o777 == 0o600
    assert bcrypt.checkpw(b"second one", path.read_bytes().strip())
    assert [p.name for p in tmp_path.iterdir()] == ["hash"], "a temporary file was left"


def test_two_different_answers_write_nothing(tmp_path: Path) -> None:
    term = Terminal([str(tmp_path / "pw.txt")], tmp_path)
    term.read_until(b"New password: ")
    term.type("one")
    term.read_until(b"Repeat it: ")
    term.type("two")
    assert term.finish() == 2
    assert b"differ" in term.output and b"Traceback" not in term.output
    assert not (tmp_path / "pw.txt").exists()


def test_a_password_over_72_bytes_is_refused(tmp_path: Path) -> None:
    term = Terminal([str(tmp_path / "pw.txt")], tmp_path)
    long = "x" * 73
    term.read_until(b"New password: ")
    term.type(long)
    term.read_until(b"Repeat it: ")
    term.type(long)
    assert term.finish() == 2
    assert b"72" in term.output and b"Traceback" not in term.output
    assert not (tmp_path / "pw.txt").exists()


def test_bad_path_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing" / "pw.txt")],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr
