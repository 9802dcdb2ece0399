"""Writes one benchmark's figures into its own section of BENCHMARKS.md, leaving the others."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures from `make bench` (each script in bench/ rewrites its own section).\n"


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(rows: list[tuple[str, str, str]]) -> str:
    """A markdown table of (figure, value, goal) rows."""
    out = ["| figure | measured | goal |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out) + "\n"


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md with `body`."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    section = (f"<!-- {name} -->\n## {title}\n\nMachine: {machine()}\n\n{body.rstrip()}\n"
               f"<!-- /{name} -->\n")
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS.write_text(text)
