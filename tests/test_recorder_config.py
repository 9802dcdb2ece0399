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
