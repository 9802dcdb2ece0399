"""--detect as a list and the detectors' flags: parsed into RecorderConfig, bad input one line."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from conftest import ROOT, free_port

from raspberry_pancake.recorder.config import FACES_MODULE, ConfigError, RecorderConfig, parse
from raspberry_pancake.recorder.detect.runner import build_checks


def write_png(path: Path, grey: npt.NDArray[np.uint8]) -> Path:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = grey.shape[1], grey.shape[0], "gray"
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def cfg(tmp_path: Path, *args: str) -> RecorderConfig:
    return parse(["--source", "testsrc", "--state-dir", str(tmp_path / "state"), *args])


def customize(tmp_path: Path, body: str = "def detect(rgb):\n    return False\n") -> str:
    path = tmp_path / "customize.py"
    path.write_text(body)
    return str(path)


def test_the_old_single_values_keep_their_meaning(tmp_path: Path) -> None:
    c = cfg(tmp_path, "--detect", "image", "--customize", customize(tmp_path),
            "--detect-resize", "224", "224")
    assert (c.detect, c.detectors, c.detect_combine) == ("image", ("image",), "or")
    assert c.detect_fn is not None and c.detect_resize is not None
    none = customize(tmp_path, "def detect():\n    return True\n")
    c = cfg(tmp_path, "--detect", "no-image", "--customize", none)
    assert (c.detect, c.detectors) == ("no-image", ("no-image",))
    c = cfg(tmp_path)
    assert (c.detect, c.detectors, c.detecting) == (None, (), False)


def test_a_list_of_detectors_with_their_options(tmp_path: Path) -> None:
    mask = np.zeros((90, 160), np.uint8)
    mask[:, 80:] = 255
    png = write_png(tmp_path / "mask.png", mask)
    c = cfg(tmp_path, "--detect", "motion,image,faces", "--customize", customize(tmp_path),
            "--detect-combine", "and", "--motion-mask", str(png), "--motion-min-area", "1.5",
            "--motion-sensitivity", "8", "--motion-min-duration", "0.5", "--face-match", "0.5",
            "--detect-gpio", "17", "--detect-gpio-kind", "button")
    assert c.detectors == ("motion", "image", "faces")
    assert c.detect == "image" and c.detect_fn is not None
    assert c.detect_combine == "and"
    assert (c.motion_mask, c.motion_min_area, c.motion_sensitivity, c.motion_min_duration) == \
        (png, 1.5, 8, 0.5)
    assert (c.faces_dir, c.face_match) == (tmp_path / "state" / "faces", 0.5)
    assert (c.detect_gpio, c.detect_gpio_kind) == (17, "button")
    # Faces are searched twice a second unless told otherwise; motion alone on every frame.
    assert c.detect_interval == 0.5
    assert cfg(tmp_path, "--detect", "faces", "--detect-interval", "0.2").detect_interval == 0.2
    assert cfg(tmp_path, "--detect", "motion", "--fps", "10").detect_interval == 0.1


def test_motion_alone_needs_no_customize_py(tmp_path: Path) -> None:
    c = cfg(tmp_path, "--detect", "motion", "--customize", str(tmp_path / "missing.py"),
            "--record-detection", "edge", str(tmp_path))
    assert (c.detect, c.detect_fn, c.customize, c.detectors) == (None, None, None, ("motion",))
    assert (c.motion_min_area, c.motion_sensitivity, c.motion_min_duration) == (0.3, 5, 1.0)


def test_a_sensor_alone_is_a_detector(tmp_path: Path) -> None:
    c = cfg(tmp_path, "--detect-gpio", "GPIO4", "--record-detection", "all", str(tmp_path))
    assert (c.detectors, c.detect_gpio, c.detect_gpio_kind, c.detecting) == \
        ((), "GPIO4", "motion", True)


@pytest.mark.parametrize(("args", "reason"), [
    (["--detect", "image,no-image"], "image and no-image exclude each other"),
    (["--detect", "motion,smoke"], "'smoke' is not one of image, no-image, motion, faces"),
    (["--detect", "motion,"], "'' is not one of"),
    (["--detect-combine", "and"], "--detect-combine requires --detect"),
    (["--detect", "motion", "--detect-combine", "xor"], "invalid choice"),
    (["--motion-min-area", "1"], "--motion-min-area requires --detect motion"),
    (["--detect", "image", "--motion-sensitivity", "3"], "--motion-sensitivity requires"),
    (["--detect", "motion", "--faces", "/tmp"], "--faces requires --detect faces"),
    (["--detect", "motion", "--face-match", "0.4"], "--face-match requires --detect faces"),
    (["--detect", "motion", "--motion-sensitivity", "11"], "'11' is not 1..10"),
    (["--detect", "motion", "--motion-sensitivity", "x"], "not a whole number"),
    (["--detect", "motion", "--motion-min-area", "0"], "not a percent"),
    (["--detect", "motion", "--motion-min-area", "nan"], "not a percent"),
    (["--detect", "motion", "--motion-min-duration", "-1"], "not 0..3600"),
    (["--detect", "faces", "--face-match", "inf"], "not a distance"),
    (["--detect", "motion", "--detect-resize", "64", "64"], "--detect-resize requires --detect image"),
    (["--detect-gpio-kind", "button"], "--detect-gpio-kind requires --detect-gpio"),
    (["--detect-gpio", "99"], "not a GPIO number"),
    (["--detect-gpio", "17;rm"], "not a GPIO pin"),
])
def test_bad_detector_flags_are_one_line_exit_2(tmp_path: Path, args: list[str],
                                                reason: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", "127.0.0.1",
                           "--state-dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancake.py: error: "), done.stderr
    assert reason in lines[0]


def test_bad_masks_are_one_line_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    black = write_png(tmp_path / "black.png", np.zeros((20, 20), np.uint8))
    for path, reason in ((text, "not an image"), (black, "all black"),
                         (tmp_path / "none.png", "no such file"), (tmp_path, "is a directory")):
        done = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                               "--port", str(free_port()), "--bind", "127.0.0.1",
                               "--detect", "motion", "--motion-mask", str(path)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("pancake.py: error: --motion-mask: motion mask ")
        assert reason in lines[0] and str(path) in lines[0]


def test_faces_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "faces").write_text("")
    with pytest.raises(ConfigError, match=r"^--faces: .* is not a directory$"):
        cfg(tmp_path, "--detect", "faces", "--faces", str(tmp_path / "faces"))


def test_faces_not_available_is_said_in_one_line(tmp_path: Path) -> None:
    """Without the face detector (this version lacks it, or its models are missing), --detect
    faces is one line: at parse when the module is absent, when the detector is made else."""
    if importlib.util.find_spec(FACES_MODULE) is None:
        with pytest.raises(ConfigError, match=r"^--detect faces: not available in this version"):
            cfg(tmp_path, "--detect", "faces")
        return
    faces = importlib.import_module(FACES_MODULE)
    why = faces.check_available()
    c = cfg(tmp_path, "--detect", "faces")
    if why is None:
        checks, _ = build_checks(c)
        assert [k.name for k in checks] == ["faces"]
    else:
        with pytest.raises(ConfigError, match=r"^--detect faces: not available: [^\n]+$"):
            build_checks(c)
