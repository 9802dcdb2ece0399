"""The faces store's event faces: kept per event, named or dropped from it, gone with the person."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.faces import (
    MAX_EVENT_FACES,
    UNKNOWN,
    FaceStore,
    SeenFace,
    StoreError,
    read_event_faces,
)

RISE = 1764650000.123
VEC_A = tuple(0.01 * i for i in range(128))
VEC_B = tuple(-0.01 * i for i in range(128))


def seen(name: str = UNKNOWN, vec: tuple[float, ...] | None = VEC_A, crop: bytes = b"\xff\xd8a",
         probable: str = "") -> SeenFace:
    return SeenFace((0.1, 0.2, 0.3, 0.4), name, probable, vec, crop)


def test_an_events_faces_are_kept_in_order_privately(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add_event_faces("front", RISE, [seen(crop=b"one")])
    faces = store.add_event_faces("front", RISE, [seen("Anna", crop=b"two", probable="")])
    assert [(f.index, f.name, f.named) for f in faces] == [(0, UNKNOWN, False), (1, "Anna", False)]
    back = read_event_faces(store.directory, "front", RISE)
    assert [(f.index, f.box, f.name, f.crop) for f in back] == [
        (f.index, f.box, f.name, f.crop) for f in faces]
    assert back[1].embedding == pytest.approx(VEC_A)
    assert store.event_crop("front", RISE, 1) == b"two"
    assert store.event_crop("front", RISE, 7) is None
    assert read_event_faces(store.directory, "front", RISE + 1) == []
    for path in (store.directory / "events").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_an_event_keeps_at_most_so_many_faces(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    faces = store.add_event_faces("front", RISE, [seen()] * (MAX_EVENT_FACES + 3))
    assert len(faces) == MAX_EVENT_FACES
    assert len(store.add_event_faces("front", RISE, [seen()])) == MAX_EVENT_FACES


def test_a_camera_name_that_is_not_one_is_refused(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    with pytest.raises(StoreError):
        store.add_event_faces("../x", RISE, [seen()])


def test_naming_an_unknown_face_enrols_it_and_correcting_moves_it(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add_event_faces("front", RISE, [seen(crop=b"crop-a")])
    named = store.name_event_face("front", RISE, 0, "Anna")
    assert (named.name, named.named) == ("Anna", True)
    anna = store.find("anna")
    assert anna is not None and [f.id for f in anna.faces] == [named.face]
    assert anna.faces[0].embedding == pytest.approx(VEC_A)
    assert store.crop(anna.faces[0].id) == b"crop-a"  # a copy: the event may be deleted
    # Wrong: it is Bea. The same embedding moves; Anna, left with nothing, is gone.
    moved = store.name_event_face("front", RISE, 0, "Bea")
    assert moved.face == named.face
    assert store.find("Anna") is None
    bea = store.find("Bea")
    assert bea is not None and [f.id for f in bea.faces] == [named.face]
    # Not Bea either: dropped; the store forgets the embedding it had from this event.
    dropped = store.drop_event_face("front", RISE, 0)
    assert (dropped.name, dropped.face, dropped.named) == (UNKNOWN, None, True)
    assert store.people() == []


def test_a_face_too_small_to_recognise_cannot_be_named(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add_event_faces("front", RISE, [seen(vec=None)])
    with pytest.raises(StoreError, match="too small"):
        store.name_event_face("front", RISE, 0, "Anna")
    with pytest.raises(StoreError, match="no face 3"):
        store.name_event_face("front", RISE, 3, "Anna")
    assert store.people() == []


def test_removing_a_person_removes_the_faces_of_their_past_events(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add("Anna", VEC_A, b"enrolled", "photo.jpg")
    store.add_event_faces("front", RISE, [seen("Anna", crop=b"a"), seen(UNKNOWN, VEC_B, b"u")])
    store.add_event_faces("back", RISE + 60, [seen("anna", crop=b"a2")])
    crops = sorted(p.name for p in (store.directory / "events").rglob("*.jpg"))
    assert len(crops) == 3
    store.remove("Anna")
    assert [f.name for f in read_event_faces(store.directory, "front", RISE)] == [UNKNOWN]
    assert read_event_faces(store.directory, "back", RISE + 60) == []
    left = [p.name for p in (store.directory / "events").rglob("*.jpg")]
    assert left == [f"{round(RISE * 1000)}-1.jpg"]


def test_renaming_a_person_renames_their_event_faces(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add("Anna", VEC_A, b"enrolled", "photo.jpg")
    store.add_event_faces("front", RISE, [seen("Anna")])
    store.rename("anna", "Anne")
    assert [f.name for f in read_event_faces(store.directory, "front", RISE)] == ["Anne"]


def test_forgotten_and_pruned_events_take_their_faces(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    for i in range(3):
        store.add_event_faces("front", RISE + i, [seen()])
    store.forget_event("front", RISE)
    assert read_event_faces(store.directory, "front", RISE) == []
    assert store.prune_events(lambda camera, rise: abs(rise - (RISE + 1)) < 0.001) == 1
    assert len(read_event_faces(store.directory, "front", RISE + 1)) == 1
    assert read_event_faces(store.directory, "front", RISE + 2) == []
    assert sorted(p.name for p in (store.directory / "events" / "front").iterdir()) == [
        f"{round((RISE + 1) * 1000)}-0.jpg", f"{round((RISE + 1) * 1000)}.json"]


def test_a_hand_edited_event_index_serves_no_other_file(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    store.add_event_faces("front", RISE, [seen()])
    index = store.directory / "events" / "front" / f"{round(RISE * 1000)}.json"
    index.write_text(index.read_text().replace(f"{round(RISE * 1000)}-0.jpg", "../../people.json"))
    assert store.event_crop("front", RISE, 0) is None
    index.write_text("{not json")
    assert read_event_faces(store.directory, "front", RISE) == []


def test_the_catalog_follows_a_renamed_or_removed_person(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "catalog.sqlite", owner=True) as catalog:
        names_follow(catalog)


def names_follow(catalog: Catalog) -> None:
    a = catalog.event_rose("front", RISE, ["face"], ["Ärni", "unknown"])
    b = catalog.event_rose("front", RISE + 9, ["face"], ["Bea"])
    assert catalog.replace_name("ärni", "Arnie") == 1
    assert catalog.event_views()[-1].event.names == ("unknown", "Arnie")
    assert catalog.replace_name("arnie", None) == 1
    catalog.set_event_names(b, ["Cleo"])
    names = {v.event.id: v.event.names for v in catalog.event_views()}
    assert names == {a: ("unknown",), b: ("Cleo",)}
