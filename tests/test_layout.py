"""The package's layout: the import contracts hold, and each one breaks when its rule is broken."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raspberry_pancake"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so that no contract's line is wrapped.
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=cwd,
                          env=dict(os.environ, COLUMNS="200"), capture_output=True, text=True,
                          timeout=120)


def test_contracts_hold_on_the_tree() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


# (module that gains the import, the import, the contract that must break)
VIOLATIONS = [
    ("recorder/state.py", "from raspberry_pancake.postproc import convert",
     "The two programs never import each other"),
    ("postproc/notify.py", "from raspberry_pancake.recorder import frames",
     "The two programs never import each other"),
    ("shared/events.py", "from raspberry_pancake.recorder import frames",
     "The shared part imports neither program"),
    ("recorder/recording/segments.py", "from raspberry_pancake.recorder.web import jpeg",
     "pancake's stages are layered"),
    ("recorder/sources/annotate.py", "from raspberry_pancake.recorder.web import auth",
     "pancake's stages are layered"),
    ("recorder/web/jpeg.py", "from raspberry_pancake.recorder.sources import pyav",
     "pancake's stages are layered"),
    ("recorder/config.py", "from raspberry_pancake.recorder import diskguard",
     "pancake's command line is parsed without the disk guard"),
    ("postproc/upload/worker.py", "from raspberry_pancake.postproc import config",
     "Uploads are configured by their targets, not by postproc's config"),
    ("recorder/sources/picam_streams.py", "from raspberry_pancake.recorder.sources import picam",
     "No import cycles"),
]


@pytest.mark.parametrize(("module", "line", "contract"), VIOLATIONS,
                         ids=[v[0] for v in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str,
                                                contract: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / PACKAGE.name,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / PACKAGE.name / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    broken = [row for row in done.stdout.splitlines() if row.endswith("BROKEN")]
    # An import against the layering may also close a cycle; the contract named must be broken.
    assert any(row.startswith(contract) for row in broken), done.stdout


def test_every_module_says_in_one_line_what_it_holds() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    folders = {p.parent for p in modules}
    assert all((folder / "__init__.py").is_file() for folder in folders)
    for path in modules:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(ROOT)} has no docstring"
        assert "\n" not in doc.strip(), f"{path.relative_to(ROOT)}: docstring is not one line"
