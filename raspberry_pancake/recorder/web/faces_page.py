"""The Faces page: each store's known people with their crops, rename, remove, and "add from camera"."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.control import _Api, _json_error
from raspberry_pancake.recorder.web.handlers import Base
from raspberry_pancake.recorder.web.live import Live
from raspberry_pancake.shared.catalog import Catalog, CatalogError
from raspberry_pancake.shared.faces import FaceStore, StoreError
from raspberry_pancake.shared.logs import RateLimiter

__all__ = ["CatalogRunner", "Faces", "StoreInfo", "faces_routes", "make_faces"]
T = TypeVar("T")

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


class CatalogRunner(Protocol):
    """The catalog and the threads it is used on (the review pages' Review)."""

    def catalog(self) -> Catalog: ...

    async def run(self, work: Callable[[], T]) -> T: ...


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """One faces store and the cameras (names and titles, in camera order) that read it."""

    directory: Path
    cameras: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return "Store used by " + ", ".join(title for _, title in self.cameras)


class Faces:
    """What the page's handlers share: the stores (each the one its cameras read) and the
    looks. The embeddings of a look stay here: the browser names a face by its number, so no
    client can put an embedding of its own into the store."""

    def __init__(self, states: list[RecorderState], catalog: CatalogRunner | None = None) -> None:
        # Cameras may each have their own --faces: one store per directory, in camera order.
        found: dict[Path, list[tuple[str, str]]] = {}
        for s in states:
            if s.cfg.faces_dir is not None:
                found.setdefault(s.cfg.faces_dir, []).append((s.name, s.title))
        self.stores = [StoreInfo(d, tuple(cams)) for d, cams in found.items()]
        self._of_camera = {name: d for d, cams in found.items() for name, _ in cams}
        self.catalog = catalog  # the events' names follow a rename or a removal
        self._lock = threading.Lock()  # guards _looks (the loop and the executor's threads)
        self._looks: dict[str, _Look] = {}

    @property
    def directory(self) -> Path | None:
        """The first store's directory (None: no camera searches faces)."""
        return self.stores[0].directory if self.stores else None

    def store(self, index: int = 0) -> FaceStore | None:
        """The store numbered `index` on the page (in camera order), or None."""
        return FaceStore(self.stores[index].directory) if 0 <= index < len(self.stores) else None

    def store_of(self, camera: str) -> FaceStore | None:
        """The store the camera reads (and its events' faces are in), or None."""
        directory = self._of_camera.get(camera)
        return FaceStore(directory) if directory is not None else None

    async def names_follow(self, store: FaceStore, old: str, new: str | None) -> None:
        """Every catalogued event of the cameras reading `store` that names `old` names `new`
        instead (None: nobody), so past events stop naming a person removed from the store;
        another store's cameras may know another person of that name. A catalog that cannot
        be written now is logged: the store's change stands."""
        runner = self.catalog
        if runner is None:
            return
        cameras = [name for info in self.stores if info.directory == store.directory
                   for name, _ in info.cameras]
        try:
            changed = await runner.run(lambda: runner.catalog().replace_name(old, new, cameras))
        except CatalogError as exc:
            _limiter.log(log, logging.WARNING, "faces-catalog",
                         "faces page: the events' names could not follow: %s", exc)
            return
        log.info("faces page: %d event(s) %s", changed, "renamed" if new else "no longer name them")

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

    def store(self, doc: dict[str, Any] | None = None) -> FaceStore | None:
        """The store asked for (`store`: its number on the page, in the body `doc` or the
        query; the first when omitted), or None having answered 409 (no camera searches
        faces) or 404 (no such store)."""
        if not self.faces.stores:
            _json_error(self, 409, "no camera searches faces (start pancake with --detect faces)")
            return None
        raw: Any = doc.get("store", 0) if doc is not None else self.get_argument("store", "0")
        try:
            index = int(raw) if not isinstance(raw, bool) and isinstance(raw, int | str) else -1
        except ValueError:
            index = -1
        store = self.faces.store(index)
        if store is None:
            _json_error(self, 404, f"no faces store {raw!r}: the page has {len(self.faces.stores)}")
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

    def posted(self, *keys: str) -> tuple[dict[str, Any], list[str]] | None:
        """A POST's JSON object and the strings under `keys`, or None having answered
        (refused: 401/403; not a JSON object, or a key that is not a string: 400)."""
        if self.refused():
            return None
        doc = self.body()
        if doc is None:
            return None
        values = []
        for key in keys:
            value = self.text(doc, key)
            if value is None:
                return None
            values.append(value)
        return doc, values

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
        numbers = {name: i for i, info in enumerate(self.faces.stores) for name, _ in info.cameras}
        cameras = [(n, each.state.title, numbers.get(n, 0))
                   for n, each in self.lives.items() if each.state.faces_in_view is not None]
        self.render("faces.html", login=self.login is not None, cameras=cameras,
                    store=bool(self.faces.stores),
                    stores=[(i, info.label) for i, info in enumerate(self.faces.stores)])


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
        got = self.posted("name", "new")
        if got is None or (store := self.store(got[0])) is None:
            return
        old, new = got[1]
        person = await self.change("rename", store.rename, old, new)
        if person is not None:
            log.info("faces page: %d face(s) renamed from the page", len(person.faces))
            # The catalog compares names as the store does (case-insensitively).
            await self.faces.names_follow(store, old, person.name)
            self.finish({"name": person.name, "faces": len(person.faces)})


class RemoveHandler(_FacesBase):
    """POST /api/faces/remove {"name": NAME} (XSRF): the person, their embeddings, crops."""

    async def post(self) -> None:
        got = self.posted("name")
        if got is None or (store := self.store(got[0])) is None:
            return
        (name,) = got[1]
        person = await self.change("remove", store.remove, name)
        if person is not None:
            # No name in the log: who is enrolled is the user's business, not the journal's.
            log.info("faces page: a person removed (%d face(s))", len(person.faces))
            await self.faces.names_follow(store, person.name, None)
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
        got = self.posted("name")
        if got is None:
            return
        doc, (name,) = got
        token, index = doc.get("look"), doc.get("face")
        look = self.faces.look(token) if isinstance(token, str) else None
        if look is None:
            _json_error(self, 404, "that picture is gone: look again")
            return
        # The store the look's camera reads, whichever store the page shows: it is that
        # camera that must recognise them.
        store = self.faces.store_of(look.camera)
        if store is None:
            _json_error(self, 409, f"{look.camera} does not search faces (--detect faces)")
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


def make_faces(lives: dict[str, Live], catalog: CatalogRunner | None = None) -> Faces:
    return Faces(_states(lives), catalog)
