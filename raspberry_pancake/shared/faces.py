"""The known-people store: names, face embeddings and the crops they came from (biometric data)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pwd
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raspberry_pancake.shared.statedir import state_dir

__all__ = ["DIR_MODE", "FILE_MODE", "INDEX", "UNKNOWN", "Face", "FaceStore", "Person", "StoreError",
           "check_name", "default_dir", "read_people"]

INDEX = "people.json"
CROPS = "crops"
LOCK = ".lock"
FORMAT = 1
UNKNOWN = "unknown"  # what a face nobody enrolled is called (DESIGN.md "Messages")
MAX_NAME = 64
# Face embeddings say who someone is: nobody but the owner reads them (issue 13).
DIR_MODE = 0o700
FILE_MODE = 0o600


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


def _write_atomic(path: Path, data: bytes) -> None:
    """The new file under a temporary name, flushed, then renamed over the old one: a reader
    (pancake) sees the old store or the new one, never half of one, even after a power cut."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
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

    def _ensure(self) -> None:
        self.check_owner()
        for d in (self.directory, self.directory / CROPS):
            d.mkdir(mode=DIR_MODE, parents=d is self.directory, exist_ok=True)
            if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
                d.chmod(DIR_MODE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Person]]:
        """The people as they are now, held against other writers until the block ends."""
        self._ensure()
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            people, _ = read_people(self.directory)
            yield people
        finally:
            os.close(fd)

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
            fid = secrets.token_hex(8)
            crop = f"{CROPS}/{fid}.jpg"
            _write_atomic(self.directory / crop, crop_jpeg)
            face = Face(fid, vec, crop, source, time.time())
            key = name.casefold()
            for i, p in enumerate(people):
                if p.name.casefold() == key:
                    people[i] = Person(p.name, (*p.faces, face))
                    break
            else:
                people.append(Person(name, (face,)))
            self._save(people)
            return next(p for p in people if p.name.casefold() == key)

    def remove(self, name: str) -> Person:
        """Drops the person, their embeddings and crops. StoreError if nobody has that name."""
        with self._locked() as people:
            person = self._get(people, name)
            self._save([p for p in people if p is not person])
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
            return renamed

    def move_face(self, face_id: str, name: str) -> Person:
        """A face enrolled under the wrong name goes to NAME (made if new); a person left
        with no face is removed. Returns NAME's person."""
        name = check_name(name)
        with self._locked() as people:
            face, owner = self._face(people, face_id)
            rest = [p if p is not owner else Person(p.name, tuple(f for f in p.faces
                                                                   if f is not face))
                    for p in people]
            rest = [p for p in rest if p.faces]
            key = name.casefold()
            for i, p in enumerate(rest):
                if p.name.casefold() == key:
                    rest[i] = Person(p.name, (*p.faces, face))
                    break
            else:
                rest.append(Person(name, (face,)))
            self._save(rest)
            return next(p for p in rest if p.name.casefold() == key)

    def remove_face(self, face_id: str) -> Person:
        """Drops one face (and its crop); a person left with no face is removed. Returns the
        person it belonged to, as they were."""
        with self._locked() as people:
            face, owner = self._face(people, face_id)
            rest = [p if p is not owner else Person(p.name, tuple(f for f in p.faces
                                                                   if f is not face))
                    for p in people]
            self._save([p for p in rest if p.faces])
        self._unlink_crop(face.crop)
        return owner

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
