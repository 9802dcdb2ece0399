"""Labelled detections through the real pipeline on testsrc, in-process: edge and update
messages, the catalog, the boxes snapshot, the page's switches and external triggers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import Listener

from raspberry_pancake.recorder.catalog_writer import CatalogConfig, CatalogWriter
from raspberry_pancake.recorder.config import RecorderConfig, parse
from raspberry_pancake.recorder.detect.result import Detection, as_detection, combine
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.pipeline import BOX_COLOUR, Pipeline, draw_boxes
from raspberry_pancake.recorder.sources.base import SourceSpec
from raspberry_pancake.recorder.sources.pyav import AVCamera
from raspberry_pancake.shared.catalog import Catalog

FPS = 10
# A detect(rgb) steered by the test through its module's STATE (the loaded customize.py).
CUSTOMIZE = """
STATE = {"answer": False}
def detect(rgb):
    answer = STATE["answer"]
    if isinstance(answer, Exception):
        raise answer
    return answer
"""


class Run:
    """One pipeline on testsrc with its emitter, stopped by the fixture."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.emitter: Emitter | None = None
        self.catalog: CatalogWriter | None = None

    def start(self, tmp_path: Path, listener: Listener, *args: str,
              catalog: bool = False) -> Pipeline:
        (tmp_path / "customize.py").write_text(CUSTOMIZE)
        cfg = parse(["--source", "testsrc", "--fps", str(FPS), "--resolution", "160", "120",
                     "--emit", listener.name, "--customize", str(tmp_path / "customize.py"),
                     "--catalog", str(tmp_path / "pancake.db"), *args])
        camera = AVCamera(SourceSpec("testsrc", ""), cfg)
        camera.open()
        self.emitter = Emitter(listener.name)
        if catalog:
            assert cfg.catalog is not None
            self.catalog = CatalogWriter(CatalogConfig(cfg.catalog, None, cfg.record_dirs,
                                                       camera=cfg.name))
        self.pipeline = Pipeline(cfg, camera, self.emitter, self.catalog)
        self.pipeline.start()
        return self.pipeline

    def stop(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        if self.emitter is not None:
            self.emitter.close()
            self.emitter = None


@pytest.fixture
def run() -> Iterator[Run]:
    r = Run()
    yield r
    r.stop()


def steer(cfg: RecorderConfig, answer: Any) -> None:
    assert cfg.detect_fn is not None
    cfg.detect_fn.__globals__["STATE"]["answer"] = answer


def wait_for(listener: Listener, want: Callable[[dict[str, Any]], bool],
             timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in listener.events():
            if want(m):
                return m
        time.sleep(0.05)
    raise AssertionError(f"no such message in {timeout} s: {listener.events()}")


def edges(listener: Listener) -> list[bool]:
    return [m["detection"] for m in listener.events() if "detection" in m and "h264" not in m]


def test_result_normalising_and_combining() -> None:
    d = as_detection({"labels": ["cat", "x" * 80, "", "a\tb", 5], "names": "Ann",
                      "boxes": [[0.5, 0.5, 0.9, 0.9], [0, 0, 0, 1], "x", [1e400, 0, 1, 1]],
                      "score": 10 ** 400})
    assert d.detected and d.labels == ("cat", "x" * 64, "a b", "5") and d.names == ("Ann",)
    assert d.boxes == ((0.5, 0.5, 0.5, 0.5),) and d.score is None
    assert as_detection({"labels": [str(i) for i in range(50)]}).labels == \
        tuple(str(i) for i in range(32))
    assert not as_detection({}) and not as_detection(None) and as_detection(True)
    a = Detection(True, ("motion",), (), ((0.1, 0.1, 0.2, 0.2),), 0.6)
    b = Detection(True, ("face",), ("Ann",), ((0.3, 0.3, 0.1, 0.1),), 0.9)
    off = Detection(False, ("motion",), (), ((0.5, 0.5, 0.1, 0.1),), 0.2)
    both = combine([a, b], "and")
    assert both == Detection(True, ("motion", "face"), ("Ann",), a.boxes + b.boxes, 0.9)
    assert combine([a, off], "or") == a  # only what the detectors that detected saw
    assert not combine([a, off], "and")
    assert not combine([], "or")


def test_boxes_are_drawn_on_a_copy() -> None:
    image = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 128, np.uint8), format="rgb24")
    drawn = draw_boxes(image, ((0.25, 0.25, 0.5, 0.5),)).to_ndarray(format="rgb24")
    assert tuple(drawn[30, 80]) == BOX_COLOUR  # the top edge, at x 40..120, y 30
    assert tuple(drawn[60, 80]) == (128, 128, 128)  # inside: the picture as it was
    assert tuple(drawn[10, 10]) == (128, 128, 128)
    assert (image.to_ndarray(format="rgb24") == 128).all()  # the original is untouched


def test_labelled_edge_update_and_boxes_snapshot(tmp_path: Path, listener: Listener,
                                                 run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image", "--detect-interval", "0.1",
                  "--record-detection", "edge", str(tmp_path), catalog=True)
    p.hub.wait_newer(-1, timeout=10)
    box = [0.25, 0.25, 0.5, 0.5]
    steer(p.cfg, {"labels": ["cat"], "boxes": [box], "score": 0.8})
    rise = wait_for(listener, lambda m: m.get("detection") is True and "h264" not in m)
    assert (rise["labels"], rise["boxes"], rise["score"]) == (["cat"], [box], 0.8)
    assert "names" not in rise
    plain, drawn = Path(rise["jpeg"]), Path(rise["jpeg_boxes"])
    assert drawn == plain.with_name(f"{plain.stem}-boxes.jpg")
    for path in (plain, drawn):
        with av.open(str(path)) as c:
            assert next(c.decode(video=0)).width == 160
    with av.open(str(drawn)) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    edge = rgb[30:32, 60:100].reshape(-1, 3)  # the box's top edge (JPEG blurs its colour)
    assert (edge[:, 0] > 150).all() and (edge[:, 0] - edge[:, 1] > 100).all(), edge

    # Labels and names gained while on: updates, never more than one a second.
    started = time.monotonic()
    for i in range(30):
        steer(p.cfg, {"labels": ["cat", f"dog{i}"], "names": ["Ann"]})
        time.sleep(0.1)
    spent = time.monotonic() - started
    updates = [m for m in listener.events() if m.get("update")]
    assert updates, listener.events()
    assert all("detection" not in u for u in updates)
    assert len(updates) <= spent / 1.0 + 1
    first = updates[0]
    assert first["labels"][0] == "cat" and first["names"] == ["Ann"]
    assert isinstance(first["time"], float)
    steer(p.cfg, False)
    wait_for(listener, lambda m: m.get("detection") is False and "h264" not in m)
    assert edges(listener) == [True, False]

    run.stop()
    with Catalog.open(tmp_path / "pancake.db") as c:
        event = c.event_at("cam", rise["time"])
        assert event is not None and event.fall is not None
        assert event.labels[0] == "cat" and "dog0" in event.labels and event.names == ("Ann",)
        assert event.boxes == (tuple(box),) and event.score == 0.8
        assert event.boxes_snapshot == drawn and event.snapshot == plain


def test_a_bool_detect_still_gives_a_plain_edge(tmp_path: Path, listener: Listener,
                                                run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image", "--record-detection", "edge",
                  str(tmp_path))
    steer(p.cfg, True)
    rise = wait_for(listener, lambda m: m.get("detection") is True and "h264" not in m)
    assert set(rise) == {"detection", "time", "jpeg"}  # the original's message, as it was
    assert not list(tmp_path.glob("*-boxes.jpg"))


def test_detect_raising_counts_false_and_goes_on(tmp_path: Path, listener: Listener,
                                                 run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image,motion", "--detect-combine", "and",
                  "--detect-interval", "0.1")
    steer(p.cfg, RuntimeError("boom"))
    time.sleep(2)
    assert p.detector is not None and p.detector.errors >= 5
    assert edges(listener) == []
    steer(p.cfg, True)  # and testsrc2 moves: both say yes
    wait_for(listener, lambda m: m.get("detection") is True)
    rise = next(m for m in listener.events() if m.get("detection") is True)
    assert rise["labels"][0] == "motion" and rise["boxes"] and 0.5 <= rise["score"] <= 1


def test_disarmed_no_edges_and_a_detection_on_is_ended(tmp_path: Path, listener: Listener,
                                                       run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image", "--detect-interval", "0.1")
    steer(p.cfg, True)
    wait_for(listener, lambda m: m.get("detection") is True)
    p.set_armed(False)
    wait_for(listener, lambda m: m.get("detection") is False, timeout=5)
    p.trigger("doorbell", 5)  # ignored while disarmed
    time.sleep(1.5)
    assert edges(listener) == [True, False]
    p.set_armed(True)
    wait_for(listener, lambda m: len(edges(listener)) == 3, timeout=5)
    assert edges(listener) == [True, False, True]


def test_trigger_without_any_detector_and_extended(tmp_path: Path, listener: Listener,
                                                   run: Run) -> None:
    p = run.start(tmp_path, listener)
    p.hub.wait_newer(-1, timeout=10)
    t0 = time.monotonic()
    p.trigger("doorbell", 1.5)
    rise = wait_for(listener, lambda m: m.get("detection") is True, timeout=5)
    assert rise["labels"] == ["doorbell"]
    time.sleep(1.0)
    p.trigger("vibration", 1.5)  # extends it: one detection, both labels
    wait_for(listener, lambda m: m.get("update") is True, timeout=5)
    fall = wait_for(listener, lambda m: m.get("detection") is False, timeout=10)
    assert edges(listener) == [True, False]
    assert fall["time"] - rise["time"] >= 2.3  # 1 s + 1.5 s, not the first 1.5 s
    assert time.monotonic() - t0 < 8
    update = next(m for m in listener.events() if m.get("update"))
    assert update["labels"] == ["doorbell", "vibration"]


def h264_messages(listener: Listener) -> list[str]:
    return [str(m["h264"]) for m in listener.events() if "h264" in m]


def test_continuous_off_closes_the_file_and_on_starts_a_new_one(tmp_path: Path,
                                                                listener: Listener,
                                                                run: Run) -> None:
    p = run.start(tmp_path, listener, "--record-continuous", str(tmp_path))
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("*.h264")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    p.set_continuous(False)
    p.set_continuous(False)  # twice: nothing more happens
    wait_for(listener, lambda m: "h264" in m, timeout=5)
    first = list(tmp_path.glob("*.h264"))
    assert len(first) == 1 and h264_messages(listener) == [str(first[0])]
    size = first[0].stat().st_size
    time.sleep(2)
    assert list(tmp_path.glob("*.h264")) == first and first[0].stat().st_size == size
    p.set_continuous(True)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("*.h264"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    run.stop()
    files = sorted(tmp_path.glob("*.h264"))
    assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
    # The last file's message was sent as the pipeline stopped: the listener's thread may not
    # have read it yet.
    deadline = time.monotonic() + 5
    while len(h264_messages(listener)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(h264_messages(listener)) == [str(f) for f in files]


def test_motion_statistics_loaded_from_and_saved_to_the_catalog(tmp_path: Path,
                                                                listener: Listener,
                                                                run: Run) -> None:
    hours = [[700.0, 2.0, 1.0]] * 24  # warmed up: the bar is 2 + 3 x 1 = 5 % at every hour
    with Catalog.open(tmp_path / "pancake.db", owner=True) as c:
        c.set_learned("cam", "motion", json.dumps({"version": 1, "hours": hours}))
    p = run.start(tmp_path, listener, "--detect", "motion", "--detect-interval", "0.2",
                  catalog=True)
    deadline = time.monotonic() + 10
    detector = p.detector
    assert detector is not None and detector._cfg.motion is not None
    while detector._cfg.motion.threshold() != 5.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert detector._cfg.motion.threshold() == 5.0
    time.sleep(2)
    run.stop()
    with Catalog.open(tmp_path / "pancake.db") as c:
        saved = json.loads(c.learned("cam", "motion") or "{}")
    assert saved["version"] == 1
    now = time.localtime().tm_hour
    assert saved["hours"][now][0] > 700.0  # this hour learnt on from where it was
    assert next(h for i, h in enumerate(saved["hours"]) if i != now) == [700.0, 2.0, 1.0]


def test_damaged_statistics_are_a_log_line_and_a_fresh_start(
        tmp_path: Path, listener: Listener, run: Run, caplog: pytest.LogCaptureFixture) -> None:
    with Catalog.open(tmp_path / "pancake.db", owner=True) as c:
        c.set_learned("cam", "motion", "{not json")
    p = run.start(tmp_path, listener, "--detect", "motion", catalog=True)
    deadline = time.monotonic() + 10
    while "motion statistics in the catalog not used" not in caplog.text \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "learning afresh" in caplog.text
    assert p.detector is not None and p.detector.is_alive()
