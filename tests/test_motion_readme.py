"""README's "Motion detection" customize.py example, run as written in the real pancake on the
real people clip (tests/data/people.mp4, see tests/data/SOURCES.md)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.conftest import ROOT, Listener, Pancake, run_pancake

CLIP = ROOT / "tests" / "data" / "people.mp4"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Motion detection"):]
    section = section[:section.index("\n## ", 3)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return str(code)


def test_the_readme_motion_example_detects_the_people(tmp_path: Path, listener: Listener,
                                                       pancakes: list[Pancake]) -> None:
    custom = tmp_path / "customize.py"
    custom.write_text(readme_example())
    p = run_pancake(pancakes, ["--source", str(CLIP), "--resolution", "320", "240", "--fps", "10",
                               "--detect", "image", "--detect-resize", "160", "120",
                               "--detect-interval", "0.2", "--customize", str(custom),
                               "--emit", listener.name], tmp_path)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and p.proc.poll() is None:
        edges = [e["detection"] for e in listener.events() if "detection" in e]
        if edges[:2] == [True, False]:
            break
        time.sleep(0.2)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    edges = [e["detection"] for e in listener.events() if "detection" in e]
    # The clip is 4 s still, 8 s of people walking, 4 s still, looped: motion starts and ends.
    assert edges[:2] == [True, False], (edges, p.log()[-2000:])
    assert "raised" not in p.log()
