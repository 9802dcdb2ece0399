"""Runs every bench/bench_*.py in turn, then opens BENCHMARKS.md with one table of all figures.

Each script rewrites its own section (bench/report.py). The summary is rebuilt from those
sections' tables, so it always agrees with them: `--summary-only` rebuilds it without running
anything.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.report import BENCHMARKS, HEADER  # noqa: E402 — needs the path above when run as a script

SUMMARY_START = "<!-- summary -->"
SUMMARY_END = "<!-- /summary -->"
_SECTION = re.compile(r"^<!-- (?!/)([\w.-]+) -->\n(.*?)^<!-- /\1 -->\n?", re.M | re.S)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class Figure:
    section: str  # the section's title
    figure: str
    measured: str
    goal: str
    machine: str

    @property
    def verdict(self) -> str:
        return verdict(self.measured, self.goal)


def _cells(line: str) -> list[str] | None:
    """The cells of a markdown table row, or None if the line is not one."""
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        return None
    return [c.strip() for c in line[1:-1].split("|")]


def section_figures(name: str, body: str) -> list[Figure]:
    """The rows of the (figure, measured, goal) tables in one section written by report.py."""
    title_match = re.search(r"^## (.+)$", body, re.M)
    title = title_match.group(1).strip() if title_match else name
    machine_match = re.search(r"^Machine: (.+)$", body, re.M)
    machine = machine_match.group(1).strip() if machine_match else "unknown"
    figures = []
    columns: list[str] | None = None
    for line in body.splitlines():
        cells = _cells(line)
        if cells is None:
            columns = None
            continue
        if columns is None:
            columns = [c.lower() for c in cells]
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        if columns[:3] != ["figure", "measured", "goal"] or len(cells) < 3:
            continue
        figures.append(Figure(title, cells[0], cells[1], cells[2], machine))
    return figures


def collect(text: str) -> list[Figure]:
    """Every figure of every section, in file order (the summary itself is skipped)."""
    figures = []
    for match in _SECTION.finditer(text):
        if match.group(1) != "summary":
            figures += section_figures(match.group(1), match.group(2))
    return figures


def _value(text: str) -> tuple[float, str] | None:
    """A single number and its unit ("87 MB" -> (87, "MB")), or None if it is not that simple."""
    text = re.sub(r"\(.*?\)", "", text).strip()
    numbers = _NUMBER.findall(text)
    if len(numbers) != 1:
        return None
    head, _, unit = text.partition(numbers[0])
    if head.strip():
        return None
    return float(numbers[0]), unit.strip()


def verdict(measured: str, goal: str) -> str:
    """"met" / "missed" when both are one number in the same unit and the goal says ≤ or ≥;
    blank otherwise (a reference row, a goal in words, two figures in one cell)."""
    goal = re.sub(r"\(.*?\)", "", goal).strip()
    match = re.fullmatch(r"(≤|<=|≥|>=)\s*(.+)", goal)
    if not match:
        return ""
    want, got = _value(match.group(2)), _value(measured)
    if want is None or got is None or want[1] != got[1]:
        return ""
    ok = got[0] <= want[0] if match.group(1) in ("≤", "<=") else got[0] >= want[0]
    return "met" if ok else "missed"


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def summary(figures: list[Figure]) -> str:
    out = [SUMMARY_START, "## Summary", "",
           "Every figure below, collected from the sections that follow. *met* / *missed* is "
           "filled in where the goal is a single bound in the measured unit.", "",
           "| benchmark | figure | measured | goal | goal met | machine |",
           "|---|---|---|---|---|---|"]
    out += [f"| {_escape(f.section)} | {f.figure} | {f.measured} | {f.goal} | {f.verdict} | "
            f"{_escape(f.machine)} |" for f in figures]
    if not figures:
        out.append("| (no benchmark has written its section yet) | | | | | |")
    out.append(SUMMARY_END)
    return "\n".join(out) + "\n"


def roll_up(path: Path) -> list[Figure]:
    """Put the summary table at the top of `path` (after the header), replacing an old one."""
    text = path.read_text() if path.exists() else HEADER
    old = re.compile(rf"{re.escape(SUMMARY_START)}.*?{re.escape(SUMMARY_END)}\n?", re.S)
    text = old.sub("", text)
    figures = collect(text)
    first = _SECTION.search(text)
    head, rest = (text[:first.start()], text[first.start():]) if first else (text, "")
    path.write_text(head.rstrip("\n") + "\n\n" + summary(figures)
                    + ("\n" + rest if rest else ""))
    return figures


def run_benchmarks() -> list[str]:
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent, check=False).returncode:
            failed.append(script.name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.py", description=__doc__)
    parser.add_argument("--summary-only", action="store_true",
                        help="only rebuild the summary table from the sections already there")
    parser.add_argument("--benchmarks", type=Path, default=BENCHMARKS, metavar="FILE",
                        help=f"the file to summarise (default {BENCHMARKS})")
    args = parser.parse_args(argv)
    failed = [] if args.summary_only else run_benchmarks()
    figures = roll_up(args.benchmarks)
    missed = [f for f in figures if f.verdict == "missed"]
    print(f"{args.benchmarks.name}: {len(figures)} figures, {len(missed)} goal(s) missed"
          + "".join(f"\n  missed: {f.section}: {f.figure} = {f.measured} (goal {f.goal})"
                    for f in missed))
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
