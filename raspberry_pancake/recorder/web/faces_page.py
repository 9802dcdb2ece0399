"""The Faces page: the known people with their crops, rename, remove, and "add from camera"."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.control import _Api, _json_error
from raspberry_pancake.recorder.web.handlers import Base
from raspberry_pancake.recorder.web.live import Live
from raspberry_pancake.shared.faces import FaceStore, StoreError
from raspberry_pancake.shared.logs import RateLimiter

__all__ = ["Faces", "faces_routes", "make_faces"]

log = logging.getLogger(__name__)
_limiter = RateLimiter()

# A look (the faces of one camera's frame) is kept this long for the user to name one, and
# only the newest few: each holds crops and embeddings (biometric data) in memory.
LOOK_TTL = 600.0
MAX_LOOKS = 8
MAX_BODY = 4096  # a JSON request here is a name or two


@dataclass
class _Look:
    camera: str
    at: float
    faces: list[dict[str, Any]] = field(default_factory=list)


class Faces:
    """What the page's handlers share: the store (the one the cameras read) and the looks.
    The embeddings of a look stay here: the browser names a face by its number, so no
    client can put an embedding of its own into the store."""

    def __init__(self, states: list[RecorderState]) -> None:
        dirs = [s.cfg.faces_dir for s in states if s.cfg.faces_dir is not None]
        self.directory: Path | None = dirs[0] if dirs else None
        self._lock = threading.Lock()  # guards _looks (the loop and the executor's threads)
        self._looks: dict[str, _Look] = {}

    @property
    def store(self) -> FaceStore | None:
        return FaceStore(self.directory) if self.directory is not None else None

    def keep(self, camera: str, faces: list[dict[str, Any]]) -> str:
        token = secrets.token_urlsafe(16)
        now = time.monotonic()
        with self._lock:
            self._looks = {k: v for k, v in self._looks.items() if now - v.at < LOOK_TTL}
            while len(self._looks) >= MAX_LOOKS:
                del self._looks[min(self._looks, key=lambda k: self._looks[k].at)]
            self._looks[token] = _Look(camera, now, faces)
        return token

    def look(self, token: str) -> _Look | None:
        with self._lock:
            look = self._looks.get(token)
            if look is None or time.monotonic() - look.at >= LOOK_TTL:
                return None
            return look


def _people(store: FaceStore) -> list[dict[str, Any]]:
    return [{"name": p.name, "faces": [{"id": f.id, "added": round(f.added, 3), "source": f.source}
                                       for f in p.faces]}
            for p in sorted(store.people(), key=lambda p: p.name.casefold())]


class _FacesBase(_Api):
    def initialize(self, faces: Faces, **deps: Any) -> None:  # type: ignore[override]
        super().initialize(**deps)
        self.faces = faces

    def store(self) -> FaceStore | None:
        """The store, or None having answered 409 (no camera searches faces)."""
        store = self.faces.store
        if store is None:
            _json_error(self, 409, "no camera searches faces (start pancake with --detect faces)")
        return store

    def body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None having answered 400."""
        raw = self.request.body or b""
        try:
            doc = json.loads(raw) if len(raw) <= MAX_BODY else None
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict):
            _json_error(self, 400, "a JSON object, e.g. {\"name\": \"Anna\"}")
            return None
        return doc

    def text(self, doc: dict[str, Any], key: str) -> str | None:
        value = doc.get(key)
        if not isinstance(value, str):
            _json_error(self, 400, f"{key}: a name")
            return None
        return value

    async def change(self, what: str, fn: Any, *args: Any) -> Any:
        """A store change off the loop (the lock, fsyncs); None having answered 400 (the
        reason, one line) or 500."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, fn, *args)
        except StoreError as exc:
            _limiter.log(log, logging.INFO, f"faces-{what}", "faces page: %s refused: %s", what, exc)
            _json_error(self, 400, str(exc))
        except OSError as exc:
            log.error("faces page: %s failed: %s", what, exc.strerror or exc)
            _json_error(self, 500, f"the store cannot be written: {exc.strerror or exc}")
        return None


class FacesPage(Base):
    """GET /faces (logged in): the people, and "add from camera"."""

    def initialize(self, faces: Faces, **deps: Any) -> None:  # type: ignore[override]
        super().initialize(**deps)
        self.faces = faces

    def get(self) -> None:
        if self.current_user is None:
            self.redirect("/login?next=" + quote(self.request.uri or "/faces", safe=""))
            return
        self.set_header("Cache-Control", "no-store")
        cameras = [(n, each.state.title) for n, each in self.lives.items()
                   if each.state.faces_in_view is not None]
        self.render("faces.html", login=self.login is not None, cameras=cameras,
                    store=self.faces.directory is not None)


class PeopleHandler(_FacesBase):
    """GET /api/faces: {"people": [{name, faces: [{id, added, source}]}]}, by name."""

    async def get(self) -> None:
        if self.refused():
            return
        store = self.store()
        if store is None:
            return
        people = await self.change("list", _people, store)
        if people is not None:
            self.finish({"people": people})


class CropHandler(_FacesBase):
    """GET /api/faces/crops/ID.jpg: a stored face's crop, found by its id in the index."""

    async def get(self, face_id: str) -> None:
        if self.refused():
            return
        store = self.store()
        if store is None:
            return
        data = await self.change("crop", store.crop, face_id)
        if self.get_status() >= 400:
            return
        if data is None:
            _json_error(self, 404, "no such face")
            return
        self.set_header("Content-Type", "image/jpeg")
        self.finish(data)


class RenameHandler(_FacesBase):
    """POST /api/faces/rename {"name": OLD, "new": NEW} (XSRF)."""

    async def post(self) -> None:
        if self.refused():
            return
        store, doc = self.store(), None
        if store is None or (doc := self.body()) is None:
            return
        old, new = self.text(doc, "name"), None
        if old is None or (new := self.text(doc, "new")) is None:
            return
        person = await self.change("rename", store.rename, old, new)
        if person is not None:
            log.info("faces page: %d face(s) renamed from the page", len(person.faces))
            self.finish({"name": person.name, "faces": len(person.faces)})


class RemoveHandler(_FacesBase):
    """POST /api/faces/remove {"name": NAME} (XSRF): the person, their embeddings, crops."""

    async def post(self) -> None:
        if self.refused():
            return
        store, doc = self.store(), None
        if store is None or (doc := self.body()) is None:
            return
        name = self.text(doc, "name")
        if name is None:
            return
        person = await self.change("remove", store.remove, name)
        if person is not None:
            # No name in the log: who is enrolled is the user's business, not the journal's.
            log.info("faces page: a person removed (%d face(s))", len(person.faces))
            self.finish({"removed": person.name, "faces": len(person.faces)})


class LookHandler(_FacesBase):
    """POST /api/cameras/NAME/faces (XSRF): the faces in the camera's newest frame,
    {look: TOKEN, faces: [{box, name, enrol: bool, crop: URL}]}, kept a while to be named."""

    async def post(self, name: str) -> None:
        if self.refused():
            return
        live = self.camera(name)
        if live is None:
            return
        hook = live.state.faces_in_view
        if hook is None:
            _json_error(self, 409, f"{name} does not search faces (--detect faces)")
            return
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(None, hook)
        except (ValueError, RuntimeError) as exc:  # the hook's one line; dlib's RuntimeError
            _limiter.log(log, logging.WARNING, "faces-look", "faces of %s not found: %s", name, exc)
            _json_error(self, 500, f"faces cannot be searched: {exc}")
            return
        token = self.faces.keep(name, found)
        self.finish({"camera": name, "look": token, "faces": [
            {"box": f["box"], "name": f["name"], "enrol": f["embedding"] is not None,
             "crop": f"/api/faces/looks/{token}/{i}.jpg"} for i, f in enumerate(found)]})


class LookCropHandler(_FacesBase):
    """GET /api/faces/looks/TOKEN/N.jpg: face N of a look."""

    def get(self, token: str, index: str) -> None:
        if self.refused():
            return
        look = self.faces.look(token)
        i = int(index)
        if look is None or i >= len(look.faces):
            _json_error(self, 404, "no such face: look again")
            return
        self.set_header("Content-Type", "image/jpeg")
        self.finish(look.faces[i]["crop"])


class AddHandler(_FacesBase):
    """POST /api/faces/add {"look": TOKEN, "face": N, "name": NAME} (XSRF): face N of the
    look joins NAME's faces (a new person if nobody has that name)."""

    async def post(self) -> None:
        if self.refused():
            return
        store, doc = self.store(), None
        if store is None or (doc := self.body()) is None:
            return
        name = self.text(doc, "name")
        if name is None:
            return
        token, index = doc.get("look"), doc.get("face")
        look = self.faces.look(token) if isinstance(token, str) else None
        if look is None:
            _json_error(self, 404, "that picture is gone: look again")
            return
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(look.faces):
            _json_error(self, 400, f"face: a number from 0 to {len(look.faces) - 1}")
            return
        face = look.faces[index]
        if face["embedding"] is None:
            _json_error(self, 400, "that face is too small to recognise: come closer, look again")
            return
        person = await self.change("add", store.add, name, face["embedding"], face["crop"],
                                   f"camera {look.camera}")
        if person is not None:
            log.info("faces page: a face added from camera %s (%d face(s) for that person)",
                     look.camera, len(person.faces))
            self.finish({"name": person.name, "faces": len(person.faces)})


def faces_routes(faces: Faces, deps: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The page's routes; `deps` what every handler of the app is given."""
    d = {**deps, "faces": faces}
    return [
        (r"/faces", FacesPage, d),
        (r"/api/faces", PeopleHandler, d),
        (r"/api/faces/crops/([0-9a-f]{16})\.jpg", CropHandler, d),
        (r"/api/faces/rename", RenameHandler, d),
        (r"/api/faces/remove", RemoveHandler, d),
        (r"/api/faces/add", AddHandler, d),
        (r"/api/faces/looks/([A-Za-z0-9_-]{22})/([0-9])\.jpg", LookCropHandler, d),
        (r"/api/cameras/([a-z0-9_-]{1,32})/faces", LookHandler, d),
    ]


def _states(lives: dict[str, Live]) -> list[RecorderState]:
    return [each.state for each in lives.values()]


def make_faces(lives: dict[str, Live]) -> Faces:
    return Faces(_states(lives))
