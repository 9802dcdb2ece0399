"""Log lines name the camera whose thread wrote them (several cameras log alike lines)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Two cameras' stages and a helper thread log the same words; a process-wide thread and the
# main thread log too. The stage of "back" dies once and is respawned from a thread that serves
# no camera (the watchdog's), and must keep naming "back".
SCRIPT = textwrap.dedent("""
    import logging, sys, threading
    from raspberry_pancake.recorder.stage import Stage
    from raspberry_pancake.shared.logs import camera_scope, setup_logging, with_camera

    setup_logging(sys.argv[1])
    log = logging.getLogger("raspberry_pancake.recorder.pipeline")

    class Detector(Stage):
        def __init__(self) -> None:
            super().__init__("detector")
            self.runs = 0

        def run(self) -> None:
            self.runs += 1
            log.info("detection on (run %d)", self.runs)
            if self.runs == 1 and self.log_camera == "back":
                raise RuntimeError("first run dies")

    stages = []
    for name in ("front", "back"):
        with camera_scope(name):
            stage = Detector()
            stage.start()
            helper = threading.Thread(target=with_camera(lambda: log.info("helper says hi")),
                                      name="picam-frames")
            helper.start()
            helper.join()
        stages.append(stage)
    for stage in stages:
        stage.join(10)
    watchdog = threading.Thread(target=stages[1].respawn, name="watchdog")
    watchdog.start()
    watchdog.join()
    stages[1].join(10)
    plain = threading.Thread(target=lambda: log.info("no camera here"), name="diskguard")
    plain.start()
    plain.join()
    log.info("main thread")
    with camera_scope("front"):
        log.info("main thread for front")
    log.info("main thread again")
""")


def test_each_line_names_its_camera(tmp_path: Path) -> None:
    path = tmp_path / "pancake.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line.split(" ", 3)[3] for line in path.read_text().splitlines()
             if "stage died" not in line and not line.startswith("Traceback")
             and " INFO " in line]
    assert sorted(lines) == sorted([
        "detector [front] recorder.pipeline: detection on (run 1)",
        "picam-frames [front] recorder.pipeline: helper says hi",
        "detector [back] recorder.pipeline: detection on (run 1)",
        "picam-frames [back] recorder.pipeline: helper says hi",
        "detector [back] recorder.pipeline: detection on (run 2)",
        "diskguard recorder.pipeline: no camera here",
        "MainThread recorder.pipeline: main thread",
        "MainThread [front] recorder.pipeline: main thread for front",
        "MainThread recorder.pipeline: main thread again",
    ]), path.read_text()
    died = [line for line in path.read_text().splitlines() if "stage died" in line]
    assert len(died) == 1 and " ERROR detector [back] recorder.stage: " in died[0], died


def test_a_single_camera_line_reads_as_before(tmp_path: Path) -> None:
    """Without a camera scope (pancake with flags, and postproc) the format is unchanged:
    `time LEVEL thread logger: message`."""
    path = tmp_path / "postproc.log"
    script = ("import logging, sys\n"
              "from raspberry_pancake.shared.logs import setup_logging\n"
              "setup_logging(sys.argv[1])\n"
              "logging.getLogger('raspberry_pancake.postproc.convert').warning('converted %s', "
              "'x.h264')\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = path.read_text().splitlines()
    assert line.split(" ", 2)[2] == "WARNING MainThread postproc.convert: converted x.h264"
