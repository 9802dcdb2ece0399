"""--detect motion and labelled detect() results through the real pancake.py: real footage,
a still scene, the update message and the boxes snapshot."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from conftest import ROOT, Listener, Pancake, run_pancake, write_video

from raspberry_pancake.shared.events import validate

PEOPLE = ROOT / "tests" / "data" / "people.mp4"  # 4 s empty square, 8 s people walking, 4 s empty


def edge_messages(listener: Listener) -> list[dict[str, object]]:
    return [m for m in listener.events() if "detection" in m and "h264" not in m]


def test_people_walking_give_a_motion_edge_with_boxes(tmp_path: Path, listener: Listener,
                                                      pancakes: list[Pancake]) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    p = run_pancake(pancakes, ["--source", str(PEOPLE), "--fps", "10", "--resolution", "320",
                               "240", "--detect", "motion", "--detect-interval", "0.2",
                               "--record-detection", "edge", str(clips),
                               "--emit", listener.name], tmp_path)
    deadline = time.monotonic() + 40
    while not any(m.get("detection") is False for m in edge_messages(listener)):
        assert time.monotonic() < deadline, p.log()
        time.sleep(0.2)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    rise = edge_messages(listener)[0]
    assert rise["detection"] is True
    assert validate(rise) == rise  # what postproc accepts
    assert rise["labels"] == ["motion"]
    boxes = rise["boxes"]
    assert isinstance(boxes, list) and boxes
    for x, y, w, h in boxes:
        assert 0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1
        assert w * h < 0.25  # people, not the whole picture
    assert isinstance(rise["score"], float) and 0.5 <= rise["score"] <= 1.0
    plain, drawn = Path(str(rise["jpeg"])), Path(str(rise["jpeg_boxes"]))
    assert drawn.name == f"{plain.stem}-boxes.jpg" and drawn.parent == clips
    for path in (plain, drawn):
        assert path.read_bytes()[:2] == b"\xff\xd8"
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (320, 240)
    with av.open(str(plain)) as a, av.open(str(drawn)) as b:
        pa = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(int)
        pb = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(pa - pb).max() > 100  # the boxes are drawn on the second copy only


def still_clip(path: Path, seconds: float, fps: int = 10) -> Path:
    """A fixed camera on a still scene: the same picture with fresh sensor noise every frame."""
    rng = np.random.default_rng(5)
    coarse = rng.random((13, 17)) * 130 + 50
    scene = np.kron(coarse, np.ones((10, 10)))[:120, :160]
    def frames() -> Iterator[np.ndarray]:
        for _ in range(int(seconds * fps)):
            grey = np.clip(scene + rng.normal(0, 2.0, scene.shape), 0, 255).astype(np.uint8)
            yield np.repeat(grey[..., None], 3, axis=2)
    return write_video(path, frames(), fps)


def test_still_scene_gives_no_motion_in_20_seconds(tmp_path: Path, listener: Listener,
                                                   pancakes: list[Pancake]) -> None:
    video = still_clip(tmp_path / "still.mp4", 30)
    p = run_pancake(pancakes, ["--source", str(video), "--fps", "10", "--resolution", "160",
                               "120", "--detect", "motion", "--detect-interval", "0.2",
                               "--emit", listener.name], tmp_path)
    p.wait_for("first frame captured")
    time.sleep(20)  # the burned-in clock changes every second all along
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert edge_messages(listener) == [], p.log()
    assert "raised" not in p.log()


def test_detect_gaining_a_label_sends_one_update(tmp_path: Path, listener: Listener,
                                                 pancakes: list[Pancake]) -> None:
    custom = tmp_path / "customize.py"
    custom.write_text(
        "import time\n"
        f"T0 = {time.time() + 3.0!r}\n"
        "def detect(rgb):\n"
        "    t = time.time() - T0\n"
        "    if t < 0:\n"
        "        return False\n"
        "    if t < 2:\n"
        "        return {'labels': ['car']}\n"
        "    if t < 5:\n"
        "        return {'labels': ['car', 'person'], 'names': ['unknown'], 'score': 0.7}\n"
        "    return False\n")
    p = run_pancake(pancakes, ["--source", "testsrc", "--fps", "10", "--resolution", "160",
                               "120", "--detect", "image", "--detect-interval", "0.1",
                               "--customize", str(custom), "--emit", listener.name], tmp_path)
    deadline = time.monotonic() + 30
    while not any(m.get("detection") is False for m in edge_messages(listener)):
        assert time.monotonic() < deadline, p.log()
        time.sleep(0.2)
    rc, _ = p.stop()
    assert rc == 0, p.log()
    edges = edge_messages(listener)
    assert [m["detection"] for m in edges] == [True, False]
    assert edges[0]["labels"] == ["car"] and "score" not in edges[0]
    updates = [m for m in listener.events() if m.get("update")]
    assert len(updates) == 1, listener.events()
    u = updates[0]
    assert validate(u) == u and "detection" not in u
    assert (u["labels"], u["names"]) == (["car", "person"], ["unknown"])
    assert isinstance(u["time"], float)
    assert float(str(edges[0]["time"])) + 1.5 < u["time"] < float(str(edges[1]["time"]))
