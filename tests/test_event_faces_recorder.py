"""The faces of each event, recorder side: stored per event, named on the photo, pruned with the event."""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image, ImageFont

from raspberry_pancake.recorder.detect.faces import (
    DEFAULT_MATCH,
    FaceConfig,
    FaceDetector,
    FaceResult,
)
from raspberry_pancake.recorder.detect.result import Detection, FaceTag, as_detection, combine
from raspberry_pancake.recorder.pipeline import LABEL_TEXT, draw_boxes
from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.faces import (
    UNKNOWN,
    FaceStore,
    SeenFace,
    event_key,
    read_event_faces,
)
from tests.conftest import Listener, Pancake, run_pancake, write_video
from tests.test_faces_recognition import PHOTOS, enrol, first_edge

W, H = 640, 480
CAMERA = "cam"  # the single-camera command line's name: what the catalog records


def pair(left: str = "obama-2.jpg", right: str = "biden.jpg") -> np.ndarray:
    """Two people side by side (Obama on the left, Biden on the right), 640x480, on grey."""
    a, b = (Image.open(PHOTOS / p).convert("RGB") for p in (left, right))
    a = a.resize((round(a.width * H / a.height), H))
    b = b.resize((round(b.width * H / b.height), H))
    both = Image.new("RGB", (a.width + b.width, H))
    both.paste(a, (0, 0))
    both.paste(b, (a.width, 0))
    both.thumbnail((W, H))
    frame = Image.new("RGB", (W, H), (40, 40, 40))
    frame.paste(both, ((W - both.width) // 2, (H - both.height) // 2))
    return np.asarray(frame)


def video(path: Path, frame: Callable[[int], np.ndarray], seconds: float = 4.0,
          fps: int = 10) -> Path:
    return write_video(path, (frame(i) for i in range(round(seconds * fps))), fps)


def with_moving_block(pic: np.ndarray) -> Callable[[int], np.ndarray]:
    """The still picture with a white block bouncing in its left grey band: motion that is
    not the faces (so --detect motion,faces searches faces, and motion brings its own box)."""
    def frame(i: int) -> np.ndarray:
        out = pic.copy()
        y = 40 + (i % 10) * 36
        out[y:y + 40, 10:60] = 255
        return out
    return frame


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store that knows Obama from one photo (obama-1.jpg), as Barack."""
    store = tmp_path_factory.mktemp("faces") / "faces"
    enrol(store, "Barack", "obama-1.jpg")
    return store


@pytest.fixture
def store(enrolled: Path, tmp_path: Path) -> Path:
    """A copy of the enrolled store of this test's own (events get written into it)."""
    return Path(shutil.copytree(enrolled, tmp_path / "faces"))


def pancake(pancakes: list[Pancake], tmp_path: Path, clip: Path, store: Path,
            listener: Listener, *extra: str) -> Pancake:
    (tmp_path / "clips").mkdir(exist_ok=True)
    return run_pancake(pancakes, [
        "--source", str(clip), "--resolution", str(W), str(H), "--fps", "10",
        "--detect", "faces", "--faces", str(store), "--detect-interval", "0.5",
        "--record-detection", "edge", str(tmp_path / "clips"), "--catalog",
        str(tmp_path / "catalog.db"), "--emit", listener.name, *extra], tmp_path)


def wait_event_faces(store: Path, p: Pancake, n: int, timeout: float = 40.0) -> None:
    """Until some event of the camera has stored `n` faces (or pancake ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.proc.poll() is None:
        for index in (store / "events" / CAMERA).glob("*.json"):
            if len(read_event_faces(store, CAMERA, int(index.stem) / 1000)) >= n:
                return
        time.sleep(0.2)


def catalog_events(path: Path) -> list[Any]:
    with Catalog.open(path) as catalog:
        return catalog.events_since(0)


# -- the label drawn over each face's box ----------------------------------------------------

def band_width(rgb: np.ndarray, box: tuple[float, float, float, float]) -> int:
    """How far the label's band (the box colour) reaches right of the box's left edge, a few
    rows above the box's top (0: no band there)."""
    h, w = rgb.shape[:2]
    x0, y0 = int(box[0] * w), int(box[1] * h)
    row = rgb[max(0, y0 - 4), :].astype(int)
    red = (row[:, 0] > 190) & (row[:, 1] < 120) & (row[:, 2] < 90)
    x = x0 + 1  # past the box's own vertical line, if the band is not there
    width = 0
    while x + width < w and red[x + width:x + width + 3].any():
        width += 1
    return width


def whites_above(rgb: np.ndarray, box: tuple[float, float, float, float]) -> int:
    """Near-white pixels in the band's rows above the box: the label's letters."""
    h, w = rgb.shape[:2]
    x0, y0 = int(box[0] * w), int(box[1] * h)
    size = h // LABEL_TEXT
    region = rgb[max(0, y0 - 2 * size):y0, x0:min(w, x0 + 4 * size)].astype(int)
    return int(((region > 200).all(axis=2)).sum())


def label_width(text: str, h: int = H) -> int:
    """The band the pipeline draws for `text` (its font, its padding), in pixels."""
    size = max(12, h // LABEL_TEXT)
    left, _, right, _ = ImageFont.load_default(size=size).getbbox(text)
    return round(right - left) + 2 * max(2, size // 6)


def test_each_faces_name_is_written_over_its_box_and_motion_boxes_have_none() -> None:
    pic = pair()
    frame = av.VideoFrame.from_ndarray(pic, format="rgb24")
    obama, biden, motion = (0.2289, 0.2261, 0.2124, 0.2831), (0.6723, 0.0971, 0.1109, 0.1478), \
        (0.02, 0.7, 0.1, 0.2)
    faces = (FaceTag(obama, UNKNOWN, "Barack"), FaceTag(biden, UNKNOWN))
    drawn = draw_boxes(frame, (motion, obama, biden), faces).to_ndarray(format="rgb24")
    bare = draw_boxes(frame, (motion, obama, biden)).to_ndarray(format="rgb24")
    # "Barack?" for the probable match, "unknown" for the other: each band as wide as its word.
    assert abs(band_width(drawn, obama) - label_width("Barack?")) <= 3
    assert abs(band_width(drawn, biden) - label_width("unknown")) <= 3
    assert whites_above(drawn, obama) > 30 and whites_above(drawn, biden) > 30
    assert band_width(bare, obama) == 0 and band_width(bare, biden) == 0
    # Nothing written over the motion box (in the band of grey above it: no letters).
    assert band_width(drawn, motion) == 0
    named = draw_boxes(frame, (obama,), (FaceTag(obama, "Barack"),)).to_ndarray(format="rgb24")
    assert abs(band_width(named, obama) - label_width("Barack")) <= 3
    # Legible on a phone: the letters grow with the picture.
    big = av.VideoFrame.from_ndarray(np.asarray(Image.fromarray(pic).resize((1280, 960))),
                                     format="rgb24")
    wide = draw_boxes(big, (obama,), (FaceTag(obama, "Barack"),)).to_ndarray(format="rgb24")
    assert band_width(wide, obama) > 1.7 * band_width(named, obama)


def test_a_label_at_the_top_of_the_picture_goes_inside_its_box() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 40, np.uint8), format="rgb24")
    top = (0.9, 0.0, 0.1, 0.3)  # at the top right corner: no room above, none to the right
    drawn = draw_boxes(frame, (), (FaceTag(top, "Anna"),)).to_ndarray(format="rgb24")
    inside = drawn[4:H // LABEL_TEXT, W - label_width("Anna"):W].astype(int)
    assert ((inside > 200).all(axis=2)).sum() > 20  # the letters, shifted left into the frame


# -- the pairing of box, name and probable name, through combine() ---------------------------

def test_combining_with_motion_keeps_each_faces_box_name_and_probable_together() -> None:
    faces = FaceResult(True, ("face",), ("unknown", "Barack"), ((0.6, 0.1, 0.1, 0.1),
                                                                (0.2, 0.2, 0.2, 0.3)),
                       0.9, (FaceTag((0.6, 0.1, 0.1, 0.1), UNKNOWN, "Joe"),
                             FaceTag((0.2, 0.2, 0.2, 0.3), "Barack")),
                       probable=("Joe", ""))
    motion = Detection(True, ("motion",), (), ((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 0.4, 0.4)), 0.3)
    both = combine([as_detection(motion), as_detection(faces)])
    # The message's fields as before: motion's boxes first, then the faces'.
    assert both.labels == ("motion", "face") and both.names == ("unknown", "Barack")
    assert both.boxes[:2] == motion.boxes and len(both.boxes) == 4
    assert both.faces == faces.faces
    assert [f.label for f in both.faces] == ["Joe?", "Barack"]
    # A later look adds its faces; the same face seen again is not repeated.
    later = combine([both, as_detection(FaceResult(True, ("face",), ("Barack",),
                                                   ((0.2, 0.2, 0.2, 0.3),), 0.8,
                                                   (FaceTag((0.2, 0.2, 0.2, 0.3), "Barack"),)))])
    assert later.faces == faces.faces


def test_only_the_face_detectors_tags_are_taken_and_as_a_message_would_carry_them() -> None:
    odd = as_detection({"detected": True, "faces": [{"box": [0, 0, 1, 1], "name": "x"}, 3,
                                                    FaceTag((0.5, 0.5, 0.8, 0.8), " Anna\n ")]})
    assert odd.faces == (FaceTag((0.5, 0.5, 0.5, 0.5), "Anna"),)
    assert as_detection({"detected": True, "faces": 5}).faces == ()


# -- which faces an event stores, and what that costs -----------------------------------------

@pytest.fixture(scope="module")
def detector(enrolled: Path) -> FaceDetector:
    return FaceDetector(FaceConfig(enrolled, DEFAULT_MATCH))


def count_embeddings(det: FaceDetector, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each embedding the detector's models compute."""
    embeds: list[int] = []
    real = det.models.embed

    def counted(rgb: Any, face: Any) -> Any:
        embeds.append(1)
        return real(rgb, face)
    monkeypatch.setattr(det.models, "embed", counted)
    return embeds


def test_an_event_stores_each_face_once_and_a_newcomer_when_it_appears(
        detector: FaceDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    embeds = count_embeddings(detector, monkeypatch)
    pic = pair()
    assert detector(pic)
    looked = len(embeds)  # someone is enrolled: the look embeds the faces to name them
    first = detector.event_faces(100.0)
    assert sorted(f.name for f in first) == ["Barack", UNKNOWN]
    assert all(f.embedding is not None and len(f.embedding) == 128 for f in first)
    assert all(f.crop_jpeg[:2] == b"\xff\xd8" for f in first)
    assert len(embeds) == looked  # the embeddings were there: none computed again
    # The same people again: nothing new for this event.
    assert detector(pic) and detector.event_faces(100.0) == []
    # Both moved (the picture mirrored): Biden is embedded again, and is the unknown it has.
    moved = pair("obama-2.jpg", "biden.jpg")[:, ::-1].copy()
    assert detector(moved) and detector.event_faces(100.0) == []
    # Someone else comes in beside Obama: a new unknown, stored.
    new = detector(pair("obama-2.jpg", "cameraman.jpg"))
    assert new and UNKNOWN in new.names
    assert [f.name for f in detector.event_faces(100.0)] == [UNKNOWN]
    # A new event stores its own faces.
    assert detector(pic) and len(detector.event_faces(200.0)) == 2


def test_a_named_face_later_seen_as_unknown_is_not_stored_again(store: Path) -> None:
    det = FaceDetector(FaceConfig(store, DEFAULT_MATCH))
    pic = pair()
    assert sorted(f.name for f in (det(pic), det.event_faces(5.0))[1]) == ["Barack", UNKNOWN]
    # Barack is no longer recognised (removed from the store), and both faces are where there
    # was none (the picture mirrored): he is the face the event has as Barack, not a stranger.
    FaceStore(store).remove("Barack")
    assert det.reload(force=True) and det.known == 0
    found = det(pic[:, ::-1].copy())
    assert found.names == (UNKNOWN, UNKNOWN)
    assert det.event_faces(5.0) == []


def test_with_nobody_enrolled_only_the_faces_stored_are_embedded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    det = FaceDetector(FaceConfig(tmp_path / "empty", DEFAULT_MATCH))
    embeds = count_embeddings(det, monkeypatch)
    pic = pair()
    for _ in range(3):
        assert det(pic).names == (UNKNOWN, UNKNOWN)
    assert embeds == []  # looking costs no embedding
    seen = det.event_faces(1.0)
    assert len(seen) == 2 and all(f.embedding is not None for f in seen)
    assert len(embeds) == 2
    for _ in range(3):  # the same faces at later looks: tracked, not embedded again
        assert det(pic) and det.event_faces(1.0) == []
    assert len(embeds) == 2


# -- through the real pancake ------------------------------------------------------------------

@pytest.mark.slow
def test_an_event_stores_the_faces_it_saw_and_its_photo_names_them(
        store: Path, tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    clip = video(tmp_path / "pair.mp4", lambda _i: pair())
    p = pancake(pancakes, tmp_path, clip, store, listener)
    edge = first_edge(p, listener, 40)
    wait_event_faces(store, p, 2)
    rc, _ = p.stop()
    assert edge is not None, p.log()[-3000:]
    assert rc == 0 and "Traceback" not in p.log(), p.log()[-3000:]
    events = catalog_events(tmp_path / "catalog.db")
    assert events, p.log()[-3000:]
    event = events[0]
    faces = read_event_faces(store, CAMERA, event.rise)  # found from the catalog's event
    assert sorted(f.name for f in faces) == ["Barack", UNKNOWN], p.log()[-3000:]
    assert (store / "events" / CAMERA / f"{event_key(event.rise)}.json").is_file()
    assert abs(event.rise - edge["time"]) < 0.001
    barack = next(f for f in faces if f.name == "Barack")
    other = next(f for f in faces if f.name == UNKNOWN)
    assert barack.box[0] < 0.5 < other.box[0]  # each name with its own face's box
    for f in faces:
        assert f.embedding is not None and len(f.embedding) == 128
        assert f.box in [tuple(b) for b in edge["boxes"]]
        crop = store / "events" / CAMERA / f.crop
        assert crop.read_bytes()[:2] == b"\xff\xd8"
        assert stat.S_IMODE(crop.stat().st_mode) == 0o600
        assert FaceStore(store).event_crop(CAMERA, event.rise, f.index) == crop.read_bytes()
    # The photo with the boxes writes each face's name over it; the plain one has none.
    drawn = np.asarray(Image.open(edge["jpeg_boxes"]).convert("RGB"))
    plain = np.asarray(Image.open(edge["jpeg"]).convert("RGB"))
    assert abs(band_width(drawn, barack.box) - label_width("Barack")) <= 4
    assert abs(band_width(drawn, other.box) - label_width("unknown")) <= 4
    assert whites_above(drawn, barack.box) > whites_above(plain, barack.box) + 30


@pytest.mark.slow
def test_with_motion_and_faces_each_stored_face_keeps_its_own_name(
        store: Path, tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    clip = video(tmp_path / "moving.mp4", with_moving_block(pair()), seconds=6)
    p = pancake(pancakes, tmp_path, clip, store, listener, "--detect", "motion,faces")
    wait_event_faces(store, p, 2, timeout=60)
    rc, _ = p.stop()
    assert rc == 0 and "Traceback" not in p.log(), p.log()[-3000:]
    events = catalog_events(tmp_path / "catalog.db")
    faced = [e for e in events if read_event_faces(store, CAMERA, e.rise)]
    assert faced, (events, p.log()[-3000:])
    event = faced[0]
    faces = read_event_faces(store, CAMERA, event.rise)
    assert sorted(f.name for f in faces) == ["Barack", UNKNOWN]
    barack = next(f for f in faces if f.name == "Barack")
    other = next(f for f in faces if f.name == UNKNOWN)
    assert barack.box[0] < 0.5 < other.box[0], faces
    assert "motion" in event.labels and "face" in event.labels
    # The motion block's box is in the event, and is not among the faces.
    assert all(f.box[0] > 0.1 for f in faces)
    assert any(b[0] < 0.1 for b in event.boxes), event.boxes


@pytest.mark.slow
def test_a_store_that_cannot_be_written_is_a_logged_line_and_recording_goes_on(
        store: Path, tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    (store / "events").write_text("not a directory")  # every event write fails
    clip = video(tmp_path / "pair.mp4", lambda _i: pair())
    p = pancake(pancakes, tmp_path, clip, store, listener)
    edge = first_edge(p, listener, 40)
    assert edge is not None, p.log()[-3000:]
    p.wait_for("the faces of this event not stored", 20)
    time.sleep(1.5)  # more looks at the same faces: the detector and the recording go on
    alive = p.proc.poll() is None
    rc, _ = p.stop()
    assert alive and rc == 0, p.log()[-3000:]
    assert "Traceback" not in p.log()
    assert p.log().count("the faces of this event not stored") == 1  # one line, not a flood
    # The clip around the edge is being recorded, and the detection went on.
    assert list((tmp_path / "clips").glob("*.h264")), p.log()[-3000:]
    assert not [e for e in listener.events() if e.get("detection") is False]


@pytest.mark.slow
def test_the_faces_of_events_the_catalog_no_longer_has_are_pruned(
        store: Path, tmp_path: Path, listener: Listener, pancakes: list[Pancake]) -> None:
    day_ago = time.time() - 86400
    kept, gone, other = day_ago, day_ago + 60, day_ago + 120
    with Catalog.open(tmp_path / "catalog.db", owner=True) as catalog:
        catalog.event_rose(CAMERA, kept, ["face"], ["Barack"])
    seen = SeenFace((0.1, 0.1, 0.2, 0.2), "Barack", "", tuple([0.0] * 128), b"\xff\xd8x")
    faces = FaceStore(store)
    for rise in (kept, gone):
        faces.add_event_faces(CAMERA, rise, [seen])
    faces.add_event_faces("back", other, [seen])  # a camera this pancake does not run
    clip = video(tmp_path / "coffee.mp4", lambda _i: np.asarray(
        Image.open(PHOTOS / "coffee.jpg").convert("RGB").resize((W, H))), seconds=2)
    p = pancake(pancakes, tmp_path, clip, store, listener)
    p.wait_for("faces of 1 deleted event(s) removed", 40)
    rc, took = p.stop()
    assert rc == 0 and "Traceback" not in p.log(), p.log()[-3000:]
    assert took < 8  # the pruning thread, waiting for its next hour, does not hold the exit
    assert len(read_event_faces(store, CAMERA, kept)) == 1
    assert read_event_faces(store, CAMERA, gone) == []
    assert not list((store / "events" / CAMERA).glob(f"{event_key(gone)}*"))
    assert len(read_event_faces(store, "back", other)) == 1
