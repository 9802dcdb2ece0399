"""Every usage example in the util scripts' --help runs as written (dry, on temporary dirs)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["limit_files_by_number.py", "limit_files_by_size.py", "limit_days.py",
           "limit_free_space.py"]


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts look for pancake's catalog in the state directory: never the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def examples(script: str) -> list[list[str]]:
    done = subprocess.run([sys.executable, str(ROOT / "util" / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    found = re.findall(rf"python3 util/{re.escape(script)} (.+)$", done.stdout, re.MULTILINE)
    return [shlex.split(line) for line in found]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_examples_run(script: str, tmp_path: Path) -> None:
    runs = examples(script)
    assert len(runs) >= 2, f"{script} --help shows fewer than two examples"
    for args in runs:
        positional = [a for a in args if not a.startswith("-")]
        assert len(positional) % 2 == 0, args
        dirs = set(positional[::2])
        mapped = []
        for arg in args:
            if arg in dirs:
                target = tmp_path / arg.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                arg = str(target)
            mapped.append(arg)
        done = subprocess.run([sys.executable, str(ROOT / "util" / script), "--dry-run",
                               *mapped], capture_output=True, text=True, timeout=60)
        # A free-space target this machine's disk cannot meet is still a valid example.
        short = script == "limit_free_space.py" and "short of" in done.stderr
        assert done.returncode == 0 or (done.returncode == 1 and short), (args, done.stderr)
