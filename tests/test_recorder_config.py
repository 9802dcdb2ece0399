"""pancake's command line as the real daemon reads it: the user's customize.py is run once."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Pancake, run_pancake


def test_customize_py_is_executed_once(tmp_path: Path, pancakes: list[Pancake]) -> None:
    """Its side effects (a GPIO pin opened, a model loaded) must not happen twice."""
    runs = tmp_path / "runs.txt"
    custom = tmp_path / "customize.py"
    custom.write_text(f"with open({str(runs)!r}, 'a') as f:\n    f.write('loaded\\n')\n\n"
                      "def detect():\n    return False\n")
    p = run_pancake(pancakes, ["--source", "testsrc", "--detect", "no-image",
                               "--customize", str(custom)], tmp_path)
    p.wait_for("first frame captured")
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert runs.read_text().splitlines() == ["loaded"]


def test_log_file_in_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    done = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", "127.0.0.1",
                           "--log", str(tmp_path / "no/such/dir/x.log")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancake.py: error: --log: "), done.stderr
    assert "no/such/dir/x.log" in lines[0]
