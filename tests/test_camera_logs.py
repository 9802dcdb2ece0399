"""Under --config, each camera's threads name it in their log lines; one camera logs as before."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.conftest import Pancake, run_pancake

FPS = 5
# `time LEVEL thread [camera] logger: message`; the camera only under --config.
LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<thread>\S+)(?: \[(?P<camera>[^\]]+)\])? "
                  r"(?P<logger>\S+): (?P<message>.*)$")


def parsed(p: Pancake) -> list[re.Match[str]]:
    return [m for line in p.log().splitlines() if (m := LINE.match(line))]


def test_two_cameras_detection_lines_name_their_camera(tmp_path: Path,
                                                       pancakes: list[Pancake]) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\n'
        f'[camera.front]\nsource = "testsrc"\nfps = {FPS}\ndetect = "motion"\n'
        f'record_continuous = "{rec}"\n'
        f'[camera.back]\nsource = "testsrc"\nfps = {FPS}\ndetect = "motion"\n'
        f'record_continuous = "{rec}"\n')
    p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    p.wait_for("live view on http", timeout=30)
    # Both cameras' detectors (testsrc moves: both see motion).
    deadline = time.monotonic() + 60
    while {m["camera"] for m in parsed(p) if m["message"].startswith("detection on")} \
            != {"front", "back"} and time.monotonic() < deadline:
        time.sleep(0.2)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    lines = parsed(p)
    on = {m["camera"] for m in lines if m["message"].startswith("detection on")}
    assert on == {"front", "back"}, p.log()
    # The camera's own stages name it; the process's own threads do not.
    by_thread = {(m["thread"], m["camera"]) for m in lines}
    assert ("capture", "front") in by_thread and ("capture", "back") in by_thread, p.log()
    assert all(m["camera"] is None for m in lines if m["thread"] in ("MainThread", "signals")), \
        p.log()


def test_one_camera_from_flags_logs_no_camera(tmp_path: Path, pancakes: list[Pancake]) -> None:
    p = run_pancake(pancakes, ["--source", "testsrc", "--fps", str(FPS), "--detect", "motion",
                               "--record-continuous", str(tmp_path)], tmp_path)
    p.wait_for("detection on", timeout=60)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    lines = parsed(p)
    assert lines and all(m["camera"] is None for m in lines), p.log()


def os_thread_names(p: Pancake) -> set[str]:
    names = set()
    for task in Path(f"/proc/{p.proc.pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return names


def test_stages_carry_their_names_in_the_kernel(tmp_path: Path, pancakes: list[Pancake]) -> None:
    # What `top -H` shows: the stage, and under --config its camera (cut to Linux's 15 bytes).
    rec = tmp_path / "rec"
    rec.mkdir()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'catalog = "{tmp_path / "pancake.db"}"\n'
        f'[camera.front]\nsource = "testsrc"\nfps = {FPS}\ndetect = "motion"\n'
        f'record_continuous = "{rec}"\n'
        f'[camera.yard]\nsource = "testsrc"\nfps = {FPS}\nrecord_continuous = "{rec}"\n')
    p = run_pancake(pancakes, ["--config", str(config)], tmp_path)
    p.wait_for("live view on http", timeout=30)
    deadline = time.monotonic() + 20
    want = {"front:detector", "front:encoder", "yard:encoder", "front:segments"}
    while not want <= os_thread_names(p) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert want <= os_thread_names(p), os_thread_names(p)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    single = run_pancake(pancakes, ["--source", "testsrc", "--fps", str(FPS),
                                    "--record-continuous", str(rec), "--detect", "motion"],
                         tmp_path)
    single.wait_for("live view on http", timeout=30)
    deadline = time.monotonic() + 20
    while not {"detector", "encoder"} <= os_thread_names(single) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {"detector", "encoder"} <= os_thread_names(single), os_thread_names(single)
