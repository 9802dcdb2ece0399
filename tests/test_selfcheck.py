"""`pancake.py --self-check`, run as a program: on this machine (no picamera2) and with the stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_picamera2"


def self_check(*path: Path, **env: str) -> tuple[int, list[str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_PICAMERA2")}
    environ |= env | {"PYTHONPATH": os.pathsep.join(str(p) for p in (*path, REPO))}
    # The real command: `pancake.py --self-check`, which needs no other flag and binds no port.
    proc = subprocess.run([sys.executable, str(REPO / "pancake.py"), "--self-check"],
                          env=environ, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stderr == ""
    return proc.returncode, proc.stdout.splitlines()


def test_without_picamera2_it_says_so_and_fails() -> None:
    code, lines = self_check()
    assert code == 1
    assert "picamera2: not installed" in lines
    assert lines[-1].startswith("self-check: FAILED: picamera2 is not installed (on Raspberry Pi "
                                "OS: apt install --no-install-recommends python3-picamera2")
    assert any(line.startswith("av: ") and "libavcodec" in line for line in lines)
    assert any(line.startswith("numpy: ") for line in lines)


def test_on_a_pi_5_with_a_camera_recording_will_work() -> None:
    code, lines = self_check(FAKE, FAKE_PICAMERA2_PLATFORM="pisp")
    assert code == 0, lines
    assert f"picamera2: 0.3.33 ({FAKE / 'picamera2'})" in lines
    assert "platform: PISP" in lines
    assert any(line.startswith("H.264 encoder: ") and "LibavH264Encoder" in line for line in lines)
    assert any(line.startswith("camera picamera2:0: imx708 id /base/") for line in lines)
    assert lines[-1] == "self-check: OK: recording from the Pi camera will work"


def test_on_a_pi_4_without_its_hardware_encoder_it_fails_with_the_reason() -> None:
    # No /dev/video11 here: on a Pi 4 that is the VideoCore encoder picamera2 records with.
    code, lines = self_check(FAKE)
    assert code == 1
    assert "platform: VC4" in lines
    assert any(line.startswith("/dev/video11: does not open") for line in lines)
    assert lines[-1] == "self-check: FAILED: the hardware encoder /dev/video11 does not open"


def test_a_usb_camera_only_and_a_known_bad_version_are_named(tmp_path: Path) -> None:
    dist = tmp_path / "picamera2-0.3.32.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: picamera2\nVersion: 0.3.32\n")
    code, lines = self_check(tmp_path, FAKE, FAKE_PICAMERA2_PLATFORM="pisp",
                             FAKE_PICAMERA2_CAMERAS="usb:C920")
    assert code == 1
    assert any("(USB: use --source /dev/videoN)" in line for line in lines)
    assert any(line.startswith("picamera2 0.3.32 is known bad: its MappedArray") for line in lines)
    assert lines[-1] == ("self-check: FAILED: picamera2 0.3.32 is known bad; picamera2 lists no "
                         "Pi camera")
