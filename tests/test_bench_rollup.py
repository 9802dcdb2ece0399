"""make bench's roll-up: BENCHMARKS.md opens with one table of every section's figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, run_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A BENCHMARKS.md in tmp_path, written by report.write_section as the benchmarks do."""
    path = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(report, "BENCHMARKS", path)
    report.write_section("alpha", "Alpha recorder", "Some words.\n\n" + report.table([
        ("reference run", "2.4 s", "reference"),
        ("ratio", "1.13", "≤ 1.10"),
        ("peak RSS", "87 MB", "≤ 120 MB"),
    ]))
    report.write_section("beta", "Beta | post", report.table([
        ("latency p95", "0.012 s (max 0.02 s)", "≤ 0.75 s (interval + 0.5 s)"),
        ("age p50 / p95", "32 / 60 ms", "p95 ≤ 130 ms"),
        ("speed", "40 fps", "≥ 25 fps"),
        ("mixed units", "0.9 s", "≤ 400 ms"),
    ]))
    return path


def summary_rows(text: str) -> list[list[str]]:
    start, end = text.index(run_all.SUMMARY_START), text.index(run_all.SUMMARY_END)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r[1:-1].split(" | ")] for r in rows[1:]]


def test_summary_lists_every_figure_with_goal_verdict_and_machine(benchmarks: Path) -> None:
    figures = run_all.roll_up(benchmarks)
    assert len(figures) == 7
    text = benchmarks.read_text()
    # One summary, right after the header, before the first section.
    assert text.count(run_all.SUMMARY_START) == 1
    assert text.index(run_all.SUMMARY_END) < text.index("<!-- alpha -->") < text.index("<!-- beta -->")
    assert text.startswith(report.HEADER)
    rows = summary_rows(text)
    machine = report.machine()
    assert [r[1] for r in rows] == ["reference run", "ratio", "peak RSS", "latency p95",
                                    "age p50 / p95", "speed", "mixed units"]
    assert [r[4] for r in rows] == ["", "missed", "met", "met", "", "met", ""]
    assert {r[5] for r in rows} == {machine}
    assert rows[0][0] == "Alpha recorder" and rows[3][0] == "Beta \\| post"
    assert rows[1][2:4] == ["1.13", "≤ 1.10"]


def test_summary_follows_the_sections_when_they_are_rewritten(benchmarks: Path) -> None:
    run_all.roll_up(benchmarks)
    # A benchmark rerun alone rewrites its section and leaves the summary where it is...
    report.write_section("alpha", "Alpha recorder", report.table([("ratio", "1.02", "≤ 1.10")]))
    report.write_section("gamma", "Gamma", report.table([("new", "5 MB", "≤ 1 MB")]))
    text = benchmarks.read_text()
    assert text.index(run_all.SUMMARY_END) < text.index("<!-- alpha -->")
    # ...and the next roll-up replaces the summary with the new figures, once.
    run_all.roll_up(benchmarks)
    text = benchmarks.read_text()
    assert text.count(run_all.SUMMARY_START) == 1
    rows = summary_rows(text)
    assert [(r[1], r[2], r[4]) for r in rows if r[0] in ("Alpha recorder", "Gamma")] == [
        ("ratio", "1.02", "met"), ("new", "5 MB", "missed")]
    before = text
    run_all.roll_up(benchmarks)
    assert benchmarks.read_text() == before


def test_verdict_only_where_the_goal_is_one_comparable_bound() -> None:
    assert run_all.verdict("87 MB", "≤ 120 MB") == "met"
    assert run_all.verdict("121 MB", "≤ 120 MB") == "missed"
    assert run_all.verdict("9.1", "≤ 11") == "met"
    assert run_all.verdict("4.1", "≥ 5") == "missed"
    assert run_all.verdict("2.4 s / 450", "reference") == ""
    assert run_all.verdict("32 / 60 ms", "p95 ≤ 130 ms") == ""
    assert run_all.verdict("0.9 s", "≤ 400 ms") == ""
    assert run_all.verdict("1522 → 10417 ms", "grows without bound") == ""


def test_make_bench_summary_only_on_a_given_file(benchmarks: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--summary-only",
                          "--benchmarks", str(benchmarks)],
                         capture_output=True, text=True, check=False, cwd=benchmarks.parent)
    assert out.returncode == 0, out.stderr
    assert "7 figures, 1 goal(s) missed" in out.stdout
    assert "missed: Alpha recorder: ratio = 1.13 (goal ≤ 1.10)" in out.stdout
    assert len(summary_rows(benchmarks.read_text())) == 7


def test_roll_up_of_a_file_with_no_sections_yet(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    assert run_all.roll_up(path) == []
    assert "no benchmark has written its section yet" in path.read_text()
