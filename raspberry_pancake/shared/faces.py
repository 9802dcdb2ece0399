"""The known-people store: names, face embeddings and the crops they came from (biometric data)."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raspberry_pancake.shared.statedir import state_dir

__all__ = ["DIR_MODE", "FILE_MODE", "INDEX", "MAX_EVENT_FACES", "UNKNOWN", "EventFace", "Face",
           "FaceStore", "Person", "SeenFace", "StoreError", "check_name", "default_dir",
           "event_key", "read_event_faces", "read_people"]

INDEX = "people.json"
CROPS = "crops"
# The faces seen during each event, with their crops and embeddings (so a face can be named
# from the event): events/<camera>/<rise in ms>.json and <rise in ms>-<index>.jpg beside it.
EVENTS = "events"
MAX_EVENT_FACES = 16  # a crowd at the door is not 200 crops: the first 16 faces an event saw
LOCK = ".lock"
FORMAT = 1
UNKNOWN = "unknown"  # what a face nobody enrolled is called (DESIGN.md "Messages")
MAX_NAME = 64
# Face embeddings say who someone is: nobody but the owner reads them (issue 13).
DIR_MODE = 0o700
FILE_MODE = 0o600


_CAMERA = re.compile(r"[a-z0-9_-]{1,32}")  # DESIGN.md "Names"; the path part must be safe


class StoreError(Exception):
    """The store cannot be used as asked: one line for the user."""


@dataclass(frozen=True, slots=True)
class Face:
    """One enrolled face: its embedding, the crop it came from, and where the photo was."""

    id: str
    embedding: tuple[float, ...]
    crop: str  # relative to the store: crops/<id>.jpg
    source: str
    added: float


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    faces: tuple[Face, ...]


@dataclass(frozen=True, slots=True)
class SeenFace:
    """A face the detector saw during an event, as the recorder hands it to the store."""

    box: tuple[float, float, float, float]  # fractions of the frame, as messages carry them
    name: str  # as recognised: a person's name or "unknown"
    probable: str  # a probable match's name (shown as NAME?) or ""
    embedding: tuple[float, ...] | None  # None: too small to recognise (and to enrol)
    crop_jpeg: bytes


@dataclass(frozen=True, slots=True)
class EventFace:
    """A face of an event as stored: what it was recognised as, what the user said it is."""

    index: int
    box: tuple[float, float, float, float]
    name: str  # now: the recognised name, or the one the user gave ("unknown" if dropped)
    probable: str
    embedding: tuple[float, ...] | None
    crop: str  # file name beside the event's index, "" when it was deleted
    named: bool  # the user named (or dropped) it from the event; else the detector's guess
    face: str | None  # the store's face this one became, when the user named it
    seen: float


def event_key(rise: float) -> str:
    """An event's files are named by its rise in whole milliseconds (the catalog keeps the
    same epoch float the edge message carries)."""
    return str(round(rise * 1000))


def default_dir(state: Path | None = None) -> Path:
    """faces/ in the state directory (DESIGN.md "State")."""
    return state_dir(state) / "faces"


def check_name(name: str) -> str:
    """The name as stored, or StoreError: 1-64 characters, no control characters, not
    `unknown`, not ending in `?` (captions write a probable match as `NAME?`)."""
    # The rule a message's words follow (detect/result.py): printable, one space between words;
    # refused rather than mended, so the name shown is the name typed.
    if any(not c.isprintable() and c != " " for c in name):
        raise StoreError(f"{name!r}: a name has no control or invisible characters")
    name = " ".join(name.split())
    if not name:
        raise StoreError("a name needs at least one character")
    if len(name) > MAX_NAME:
        raise StoreError(f"a name has at most {MAX_NAME} characters ({len(name)} given)")
    if name.casefold() == UNKNOWN:
        raise StoreError(f"{UNKNOWN!r} is reserved: it is what a face nobody enrolled is called")
    if name.endswith("?"):
        raise StoreError(f"{name!r}: a name does not end in '?' (captions write a probable "
                         "match as NAME?)")
    return name


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _embedding(value: Any) -> tuple[float, ...] | None:
    if not isinstance(value, list) or not value:
        return None
    try:
        vec = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vec if all(math.isfinite(v) for v in vec) else None


def _parse(raw: bytes) -> list[Person]:
    """The index as people; StoreError when it is not ours or not JSON. Entries that are
    malformed are skipped: one bad face must not blind the camera to everyone else."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{INDEX} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("people"), list):
        raise StoreError(f"{INDEX} is not a faces store")
    if isinstance(doc.get("format"), int) and doc["format"] > FORMAT:
        raise StoreError(f"{INDEX} is from a newer version (format {doc['format']})")
    people: list[Person] = []
    for p in doc["people"]:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        faces = []
        for f in p.get("faces") or ():
            if not isinstance(f, dict):
                continue
            vec = _embedding(f.get("embedding"))
            fid = f.get("id")
            if vec is None or not isinstance(fid, str):
                continue
            added = f.get("added")
            faces.append(Face(fid, vec, str(f.get("crop") or ""), str(f.get("source") or ""),
                              float(added) if isinstance(added, int | float) else 0.0))
        people.append(Person(p["name"], tuple(faces)))
    return people


def read_people(directory: Path) -> tuple[list[Person], tuple[int, int, int] | None]:
    """Everyone in the store and the index's identity (inode, mtime, size) to notice changes
    by; ([], None) when there is no store yet. Reading needs no lock: writes replace the
    index whole. Raises StoreError (unreadable, damaged)."""
    path = directory / INDEX
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read()
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _parse(raw), (st.st_ino, st.st_mtime_ns, st.st_size)


def _event_dir(directory: Path, camera: str) -> Path:
    if not _CAMERA.fullmatch(camera):
        raise StoreError(f"{camera!r} is not a camera name")
    return directory / EVENTS / camera


def _box4(value: Any) -> tuple[float, float, float, float] | None:
    try:
        x, y, w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y, w, h) if all(math.isfinite(v) for v in (x, y, w, h)) else None


def _parse_event(raw: bytes) -> list[EventFace]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []  # a damaged event's faces are lost, not the page
    out = []
    for f in doc.get("faces") or () if isinstance(doc, dict) else ():
        if not isinstance(f, dict) or not isinstance(f.get("index"), int):
            continue
        box = _box4(f.get("box"))
        if box is None or not isinstance(f.get("name"), str):
            continue
        face = f.get("face")
        seen = f.get("seen")
        out.append(EventFace(f["index"], box, f["name"], str(f.get("probable") or ""),
                             _embedding(f.get("embedding")), str(f.get("crop") or ""),
                             bool(f.get("named")), face if isinstance(face, str) else None,
                             float(seen) if isinstance(seen, int | float) else 0.0))
    return out


def read_event_faces(directory: Path, camera: str, rise: float) -> list[EventFace]:
    """The faces an event saw, in the order seen; [] when it saw none (or they were deleted).
    Needs no lock: writes replace the file whole."""
    path = _event_dir(directory, camera) / f"{event_key(rise)}.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        return _parse_event(fh.read())


def _event_doc(faces: Sequence[EventFace]) -> bytes:
    return json.dumps({"format": FORMAT, "faces": [
        {"index": f.index, "box": list(f.box), "name": f.name, "probable": f.probable,
         "embedding": None if f.embedding is None else [round(v, 7) for v in f.embedding],
         "crop": f.crop, "named": f.named, "face": f.face, "seen": f.seen}
        for f in faces]}, ensure_ascii=False).encode()


def _write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """The new file under a temporary name, flushed, then renamed over the old one: a reader
    (pancake) sees the old store or the new one, never half of one, even after a power cut.
    Not durable: no fsync (an event's faces, written while the camera records, are worth
    less than the SD card's time)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if not durable:
        return
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FaceStore:
    """The store for writing (util/faces.py, later the page): every change takes the lock,
    re-reads the index, and replaces it atomically. Refuses a store the user does not own,
    since files written by another user would be unreadable to pancake (0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # -- ownership ---------------------------------------------------------------------------

    def check_owner(self) -> None:
        """StoreError naming the user to run as when the store (or, before it exists, the
        state directory it goes in) belongs to someone else."""
        me = os.geteuid()
        target = self.directory
        try:
            st = target.lstat()
        except FileNotFoundError:
            target = target.parent
            try:
                st = target.stat()
            except FileNotFoundError:
                return  # made from scratch below: ours
            # A shared sticky directory (/tmp) belongs to root but anyone may make theirs in it.
            if st.st_mode & stat.S_ISVTX:
                return
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{target} is a symbolic link: give the real directory with --faces")
        if st.st_uid != me:
            owner = _owner(st.st_uid)
            raise StoreError(f"{target} belongs to {owner}: run this as that user "
                             f"(sudo -u {owner} …)")

    def _ensure(self, *more: Path) -> None:
        self.check_owner()
        for d in (self.directory, self.directory / CROPS, *more):
            d.mkdir(mode=DIR_MODE, parents=d is self.directory, exist_ok=True)
            if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
                d.chmod(DIR_MODE)

    @contextlib.contextmanager
    def _lock(self, *more: Path) -> Iterator[None]:
        """Held against other writers (util/faces.py, the page, the recorder) until the block
        ends. One lock for people and events: naming a face from an event changes both."""
        self._ensure(*more)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Person]]:
        """The people as they are now, held against other writers until the block ends."""
        with self._lock():
            yield read_people(self.directory)[0]

    def _save(self, people: Sequence[Person]) -> None:
        doc = {"format": FORMAT, "people": [
            {"name": p.name, "faces": [
                {"id": f.id, "embedding": [round(v, 7) for v in f.embedding], "crop": f.crop,
                 "source": f.source, "added": f.added} for f in p.faces]}
            for p in people]}
        _write_atomic(self.directory / INDEX, json.dumps(doc, ensure_ascii=False).encode())

    # -- reading ---------------------------------------------------------------------------

    def people(self) -> list[Person]:
        return read_people(self.directory)[0]

    def find(self, name: str) -> Person | None:
        """The person of that name, case-insensitively (Anna and anna are one person)."""
        key = name.strip().casefold()
        return next((p for p in self.people() if p.name.casefold() == key), None)

    def crop(self, face_id: str) -> bytes | None:
        """The JPEG crop a face came from, found by the face's id in the index (never by a
        path someone gave: the page serves these); None when there is no such face or crop."""
        for p in self.people():
            for f in p.faces:
                if f.id == face_id:
                    rel = self._own_crop(f.crop)
                    if rel is None:
                        return None
                    try:
                        fd = os.open(self.directory / rel, os.O_RDONLY | os.O_NOFOLLOW)
                    except OSError:
                        return None
                    with os.fdopen(fd, "rb") as fh:
                        return fh.read()
        return None

    # -- writing ---------------------------------------------------------------------------

    def add(self, name: str, embedding: Sequence[float], crop_jpeg: bytes, source: str) -> Person:
        """One more face for NAME (a new person if nobody has that name): the crop is written
        first, so the index never points at a missing file. Returns the person as stored."""
        name = check_name(name)
        vec = tuple(float(v) for v in embedding)
        if not vec or not all(math.isfinite(v) for v in vec):
            raise StoreError("the face's embedding is not a finite vector")
        with self._locked() as people:
            face = self._new_face(vec, crop_jpeg, source)
            people = _with_face(people, name, face)
            self._save(people)
            return _named(people, name)

    def _new_face(self, vec: tuple[float, ...], crop_jpeg: bytes, source: str) -> Face:
        fid = secrets.token_hex(8)
        crop = f"{CROPS}/{fid}.jpg"
        _write_atomic(self.directory / crop, crop_jpeg)
        return Face(fid, vec, crop, source, time.time())

    def remove(self, name: str) -> Person:
        """Drops the person, their embeddings and crops, and the faces of past events they
        were recognised as or named as. StoreError if nobody has that name."""
        with self._locked() as people:
            person = self._get(people, name)
            self._save([p for p in people if p is not person])
            self._rewrite_events(lambda f: None if f.name.casefold() == person.name.casefold()
                                 else f)
        for f in person.faces:
            self._unlink_crop(f.crop)
        return person

    def rename(self, old: str, new: str) -> Person:
        new = check_name(new)
        with self._locked() as people:
            person = self._get(people, old)
            other = next((p for p in people if p.name.casefold() == new.casefold()), None)
            if other is not None and other is not person:
                raise StoreError(f"{other.name!r} is already in the store (remove it first, or "
                                 f"add {person.name}'s photos to it)")
            renamed = Person(new, person.faces)
            self._save([renamed if p is person else p for p in people])
            key = person.name.casefold()
            self._rewrite_events(lambda f: dataclasses.replace(f, name=new) if f.name.casefold() == key
                                 else f)
            return renamed

    def move_face(self, face_id: str, name: str) -> Person:
        """A face enrolled under the wrong name goes to NAME (made if new); a person left
        with no face is removed. Returns NAME's person."""
        name = check_name(name)
        with self._locked() as people:
            face, _ = self._face(people, face_id)
            rest = _with_face(_without_face(people, face), name, face)
            self._save(rest)
            return _named(rest, name)

    def remove_face(self, face_id: str) -> Person:
        """Drops one face (and its crop); a person left with no face is removed. Returns the
        person it belonged to, as they were."""
        with self._locked() as people:
            face, owner = self._face(people, face_id)
            self._save(_without_face(people, face))
        self._unlink_crop(face.crop)
        return owner

    # -- the faces of events (written by the recorder, named from the page) ----------------

    def add_event_faces(self, camera: str, rise: float,
                        seen: Sequence[SeenFace]) -> list[EventFace]:
        """Faces seen during the event that rose at `rise`, after those it has (at most
        MAX_EVENT_FACES in all); crops first, then the event's index. Returns its faces."""
        directory = _event_dir(self.directory, camera)
        key = event_key(rise)
        with self._lock(directory.parent, directory):
            faces = read_event_faces(self.directory, camera, rise)
            start = max((f.index for f in faces), default=-1) + 1
            now = time.time()
            for i, s in enumerate(seen[:max(0, MAX_EVENT_FACES - len(faces))]):
                crop = f"{key}-{start + i}.jpg"
                _write_atomic(directory / crop, s.crop_jpeg, durable=False)
                faces.append(EventFace(start + i, s.box, s.name, s.probable, s.embedding, crop,
                                       False, None, now))
            _write_atomic(directory / f"{key}.json", _event_doc(faces), durable=False)
            return faces

    def event_crop(self, camera: str, rise: float, index: int) -> bytes | None:
        """An event face's crop, found by the event and the face's index (never by a path a
        client gave); None when there is none."""
        for f in read_event_faces(self.directory, camera, rise):
            if f.index == index and _own_event_crop(f.crop, event_key(rise)):
                try:
                    fd = os.open(_event_dir(self.directory, camera) / f.crop,
                                 os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    return None
                with os.fdopen(fd, "rb") as fh:
                    return fh.read()
        return None

    def name_event_face(self, camera: str, rise: float, index: int, name: str) -> EventFace:
        """"This is NAME": the event's face joins NAME's faces (NAME made if new), or moves
        there if it was already named from this event as someone else. StoreError when the
        face was too small to recognise (it has no embedding) or is not there."""
        name = check_name(name)
        key = event_key(rise)
        directory = _event_dir(self.directory, camera)
        with self._lock():
            faces = read_event_faces(self.directory, camera, rise)
            face = _event_face(faces, index)
            if face.embedding is None:
                raise StoreError("this face was too small to recognise, so it cannot be "
                                 "enrolled: add a closer picture of them instead")
            people = read_people(self.directory)[0]
            stored = next((f for p in people for f in p.faces if f.id == face.face), None)
            if stored is None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rise))
                stored = self._new_face(face.embedding, self.event_crop(camera, rise, index) or b"",
                                        f"event {camera} {when}")
            else:
                people = _without_face(people, stored)
            people = _with_face(people, name, stored)
            self._save(people)
            named = dataclasses.replace(face, name=_named(people, name).name, named=True, face=stored.id)
            faces = [named if f is face else f for f in faces]
            _write_atomic(directory / f"{key}.json", _event_doc(faces), durable=False)
            return named

    def drop_event_face(self, camera: str, rise: float, index: int) -> EventFace:
        """"This is nobody I know": the face is called unknown, and the embedding it gave
        the store (if it was named from this event) is dropped again."""
        key = event_key(rise)
        directory = _event_dir(self.directory, camera)
        gone: Face | None = None
        with self._lock():
            faces = read_event_faces(self.directory, camera, rise)
            face = _event_face(faces, index)
            people = read_people(self.directory)[0]
            gone = next((f for p in people for f in p.faces if f.id == face.face), None)
            if gone is not None:
                self._save(_without_face(people, gone))
            dropped = dataclasses.replace(face, name=UNKNOWN, named=True, face=None)
            faces = [dropped if f is face else f for f in faces]
            _write_atomic(directory / f"{key}.json", _event_doc(faces), durable=False)
        if gone is not None:
            self._unlink_crop(gone.crop)
        return dropped

    def forget_event(self, camera: str, rise: float) -> None:
        """The event was deleted: its faces' crops and embeddings go too (what the user
        enrolled from it stays: that is a copy in the store)."""
        directory = _event_dir(self.directory, camera)
        with self._lock():
            self._forget_event(directory, event_key(rise))

    def prune_events(self, keep: Callable[[str, float], bool]) -> int:
        """Deletes the faces of events `keep(camera, rise)` says are gone (the catalog no
        longer has them: retention deleted their clips). Returns how many events. The
        catalog is asked before the lock is taken: one query per event must not hold up the
        recorder writing a new event's faces, nor the page."""
        root = self.directory / EVENTS
        if not root.is_dir():
            return 0
        gone = [(cam, index.stem) for cam in sorted(root.iterdir())
                if _CAMERA.fullmatch(cam.name) and cam.is_dir()
                for index in sorted(cam.glob("*.json"))
                if index.stem.isdigit() and not keep(cam.name, int(index.stem) / 1000)]
        if gone:
            with self._lock():
                for cam, key in gone:
                    self._forget_event(cam, key)
        return len(gone)

    def _forget_event(self, directory: Path, key: str) -> None:
        for path in directory.glob(f"{key}-*.jpg"):
            if _own_event_crop(path.name, key):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{key}.json").unlink()

    def _rewrite_events(self, change: Callable[[EventFace], EventFace | None]) -> None:
        """Every event's faces through `change` (None: the face and its crop go). Called
        with the lock held."""
        root = self.directory / EVENTS
        if not root.is_dir():
            return
        for cam in root.iterdir():
            if not _CAMERA.fullmatch(cam.name) or not cam.is_dir():
                continue
            for index in cam.glob("*.json"):
                if not index.stem.isdigit():
                    continue
                faces = read_event_faces(self.directory, cam.name, int(index.stem) / 1000)
                kept: list[EventFace] = []
                for f in faces:
                    new = change(f)
                    if new is None:
                        if _own_event_crop(f.crop, index.stem):
                            with contextlib.suppress(FileNotFoundError):
                                (cam / f.crop).unlink()
                    else:
                        kept.append(new)
                if kept != faces:
                    _write_atomic(index, _event_doc(kept), durable=False)

    @staticmethod
    def _face(people: Sequence[Person], face_id: str) -> tuple[Face, Person]:
        for p in people:
            for f in p.faces:
                if f.id == face_id:
                    return f, p
        raise StoreError(f"no face {face_id!r} in the store")

    @staticmethod
    def _get(people: Sequence[Person], name: str) -> Person:
        key = name.strip().casefold()
        for p in people:
            if p.name.casefold() == key:
                return p
        raise StoreError(f"nobody called {name.strip()!r} in the store")

    @staticmethod
    def _own_crop(crop: str) -> Path | None:
        """crops/<name>.jpg as a relative path, or None: a hand-edited index must make us
        neither read (the page serves crops) nor delete other files."""
        rel = Path(crop)
        if (rel.parent != Path(CROPS) or not rel.name.endswith(".jpg") or "/" in rel.name
                or rel.name.startswith(".")):
            return None
        return rel

    def _unlink_crop(self, crop: str) -> None:
        rel = self._own_crop(crop)
        if rel is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.directory / rel).unlink()


def _with_face(people: Sequence[Person], name: str, face: Face) -> list[Person]:
    """People with FACE added to NAME's faces (a new person when nobody has that name)."""
    key = name.casefold()
    out = list(people)
    for i, p in enumerate(out):
        if p.name.casefold() == key:
            out[i] = Person(p.name, (*p.faces, face))
            return out
    out.append(Person(name, (face,)))
    return out


def _without_face(people: Sequence[Person], face: Face) -> list[Person]:
    """People without FACE; a person left with no face is gone."""
    rest = [Person(p.name, tuple(f for f in p.faces if f.id != face.id)) for p in people]
    return [p for p in rest if p.faces]


def _named(people: Sequence[Person], name: str) -> Person:
    key = name.casefold()
    return next(p for p in people if p.name.casefold() == key)


def _event_face(faces: Sequence[EventFace], index: int) -> EventFace:
    face = next((f for f in faces if f.index == index), None)
    if face is None:
        raise StoreError(f"the event has no face {index}")
    return face


def _own_event_crop(name: str, key: str) -> bool:
    """KEY-N.jpg: the only files an event's faces may name (a hand-edited index must make
    us neither serve nor delete other files)."""
    stem, _, index = name.removesuffix(".jpg").rpartition("-")
    return name.endswith(".jpg") and stem == key and index.isdigit()
