"""The review pages: events and a day's recordings from the catalog, media served by catalog id only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import tornado.httputil
import tornado.iostream
import tornado.web

from raspberry_pancake.recorder.web.faces_page import Faces
from raspberry_pancake.recorder.web.handlers import Base, Login
from raspberry_pancake.shared.catalog import Catalog, CatalogError, Event, EventView, Recording
from raspberry_pancake.shared.faces import (
    EventFace,
    FaceStore,
    StoreError,
    check_name,
    read_event_faces,
)
from raspberry_pancake.shared.logs import RateLimiter
from raspberry_pancake.shared.playback import Piece, RemuxCache, Remuxing, cut
from raspberry_pancake.shared.remux import ConversionError, sidecar_for

log = logging.getLogger(__name__)
_limit = RateLimiter()
T = TypeVar("T")

PAGE = 50  # events per page of the list
MAX_PAGE = 200
LOG_LINES = 1000
CHUNK = 256 * 1024
# A remux that has not written its first bytes by then is answered from its end (or refused).
FIRST_BYTES = 10.0
# How often a stream that caught up with its growing file looks again.
GROW_POLL = 0.05
# A cut longer than this is refused: a day in one file is what the segments are for.
MAX_CUT = 3 * 3600.0
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FACE_CROP = re.compile(r"e(\d{1,12})-face-(\d{1,2})\.jpg")
MAX_BODY = 4096  # a JSON request here is a name
StoreOf = Callable[[str], FaceStore | None]  # a camera's faces store, None when it has none


def _no_store(camera: str) -> FaceStore | None:
    return None


class Refusal(Exception):
    """What the event's faces cannot do as asked: the HTTP status and one line."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class MediaFile:
    path: Path
    content_type: str
    download_name: str
    growing: Remuxing | None = None  # the remux still writing `path`, streamed as it grows


class Review:
    """What the review pages read and change: the catalog (on their own threads, never the
    loop's), the directories whose files may be served, the remux cache."""

    def __init__(self, catalog: Path, record_dirs: Sequence[Path], fps: Callable[[str], float],
                 cache_dir: Path | None = None) -> None:
        self.catalog_path = catalog
        self.record_dirs = tuple(os.path.abspath(d) for d in record_dirs)
        self.fps = fps  # a camera's frame rate: times a recording whose sidecar is short
        # One cache per catalog: its keys are the catalog's ids, which another catalog reuses.
        tag = hashlib.sha256(os.path.abspath(catalog).encode()).hexdigest()[:12]
        cache = cache_dir or Path(tempfile.gettempdir()) / f"pancake-review-{os.getuid()}-{tag}"
        self.cache = RemuxCache(cache)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                          thread_name_prefix="review")
        self._catalog: Catalog | None = None
        # One correction of an event's faces at a time: each recomputes the event's names
        # from what the store and the catalog said before it (the pool has two threads).
        self._correcting = threading.Lock()

    def catalog(self) -> Catalog:
        """The catalog, opened on first use (pancake may still be making it at start)."""
        if self._catalog is None:
            self._catalog = Catalog.open(self.catalog_path)
        return self._catalog

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    def close(self) -> None:
        self.cache.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._catalog is not None:
            self._catalog.close()

    def servable(self, path: Path, suffixes: tuple[str, ...]) -> bool:
        """A regular file (not a link) directly inside a record directory, of the right kind."""
        text = os.path.abspath(path)
        if os.path.dirname(text) not in self.record_dirs or path.suffix not in suffixes:
            return False
        try:
            return stat.S_ISREG(os.lstat(text).st_mode)
        except OSError:
            return False

    # ---- media, by catalog id

    def recording_media(self, rid: int) -> MediaFile | None:
        """The recording's mp4: postproc's when it made one, else the cached remux, or the
        remux under way (started now if needed) to stream while it grows."""
        c = self.catalog()
        rec = c.recording(rid)
        if rec is None or rec.deleted:
            return None
        name = rec.path.stem + ".mp4"
        conv = c.conversion_of(rid)
        if conv is not None and conv.mp4.suffix == ".mp4":
            try:
                if stat.S_ISREG(os.lstat(conv.mp4).st_mode):
                    return MediaFile(conv.mp4, "video/mp4", name)
            except OSError:
                pass  # retention removed it: play the h264
        if not self.servable(rec.path, (".h264",)):
            return None
        got = self.cache.begin(f"r{rid}", rec.path, self.fps(rec.camera))
        if isinstance(got, Path):
            return MediaFile(got, "video/mp4", name)
        got.started(FIRST_BYTES)  # an unplayable recording raises here, before any answer
        return MediaFile(got.out, "video/mp4", name, got)

    def snapshot_media(self, eid: int, boxes: bool) -> MediaFile | None:
        event = self.catalog().event(eid)
        if event is None:
            return None
        path = event.boxes_snapshot if boxes else event.snapshot
        if path is None or not self.servable(path, (".jpg",)):
            return None
        return MediaFile(path, "image/jpeg", path.name)

    def cut_media(self, camera: str, t0: float, t1: float) -> MediaFile | None:
        recs = [r for r in self.catalog().recordings_between(camera, t0, t1, "continuous")
                if self.servable(r.path, (".h264",))]
        if not recs:
            return None
        key = f"cut-{camera}-{t0:.3f}-{t1:.3f}"
        out = self.cache.directory / f"{key}.mp4"
        self.cache.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not out.exists():
            fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".mp4",
                                       dir=self.cache.directory)
            os.close(fd)
            try:
                cut([Piece(r.path, r.start, self.fps(camera)) for r in recs], t0, t1, Path(tmp))
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        name = dt.datetime.fromtimestamp(t0).strftime(f"{camera}-%Y%m%d-%H%M%S.mp4")
        return MediaFile(out, "video/mp4", name)

    # ---- changes

    def keep_event(self, eid: int, kept: bool) -> str:
        """Keep (or release) the event's clip; "" when done, else why not."""
        c = self.catalog()
        event = c.event(eid)
        if event is None:
            return "no such event"
        if event.clip is None:
            return "the event has no clip of its own"
        c.set_kept(event.clip, kept)
        return ""

    def delete_event(self, eid: int, store_of: StoreOf = _no_store) -> str:
        """Remove the event's clip (h264, sidecar, mp4), snapshots and faces (crops and
        embeddings, from its camera's store); "" when done, else why not. A kept clip, or one
        still being written, is not deleted."""
        c = self.catalog()
        event = c.event(eid)
        if event is None:
            return "no such event"
        paths: list[Path] = [p for p in (event.snapshot, event.boxes_snapshot) if p is not None]
        rec = c.recording(event.clip) if event.clip is not None else None
        if rec is not None:
            if rec.kept:
                return "the clip is kept: release it first"
            if not rec.closed:
                return "the clip is still being recorded"
            paths += [rec.path, sidecar_for(rec.path)]
        store = store_of(event.camera)
        if store is not None:
            # First: biometric data must not outlive the event the user deleted, so if it
            # cannot go, nothing goes and the user is told.
            try:
                store.forget_event(event.camera, event.rise)
            except (StoreError, OSError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.error("review: event %d's faces cannot be deleted: %s", eid, text)
                return f"the event's faces cannot be deleted: {text}"
        for path in paths:
            if self.servable(path, (".jpg", ".h264", ".pts")):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            if path.suffix == ".h264":
                c.mark_deleted(path)
        if rec is not None:
            conv = c.conversion_of(rec.id)
            if conv is not None:
                try:
                    if stat.S_ISREG(os.lstat(conv.mp4).st_mode):
                        conv.mp4.unlink()
                except FileNotFoundError:
                    pass
                c.mark_deleted(conv.mp4)
        c.forget_event(eid)
        c.log("review", f"event {eid} deleted from the page", event.camera)
        return ""

    # ---- the faces an event saw

    def _event(self, eid: int) -> Event:
        event = self.catalog().event(eid)
        if event is None:
            raise Refusal(404, "no such event")
        return event

    def event_faces(self, eid: int, store_of: StoreOf) -> dict[str, Any]:
        """The event's faces (and the known people's names, to pick from) from the store of
        the event's camera; Refusal 404 for no such event."""
        event = self._event(eid)
        store = store_of(event.camera)
        if store is None:
            return {"event": eid, "camera": event.camera, "store": False, "faces": [],
                    "people": []}
        try:
            faces = read_event_faces(store.directory, event.camera, event.rise)
            people = sorted((p.name for p in store.people()), key=str.casefold)
        except StoreError as exc:
            raise Refusal(500, f"the faces store cannot be read: {exc}") from None
        return {"event": eid, "camera": event.camera, "store": True,
                "faces": [_face_json(eid, f) for f in faces], "people": people}

    def face_crop(self, eid: int, index: int, store_of: StoreOf) -> bytes | None:
        """Face `index`'s crop of the event, found by the catalog's event (never by a path a
        client gave); None when there is none."""
        event = self.catalog().event(eid)
        store = store_of(event.camera) if event is not None else None
        if event is None or store is None:
            return None
        try:
            return store.event_crop(event.camera, event.rise, index)
        except StoreError:
            return None

    def correct_face(self, eid: int, index: int, name: str | None,
                     store_of: StoreOf) -> dict[str, Any]:
        """"This is NAME" (`name`) or "not them" (None) for the event's face `index`: the
        store moves the embedding, and the catalog's names for the event follow (the old
        name goes unless another of its faces still has it; the new one comes). Refusal for
        what cannot be done; OSError when the store cannot be written."""
        if name is not None:
            try:
                name = check_name(name)
            except StoreError as exc:
                raise Refusal(400, str(exc)) from None
        with self._correcting:
            return self._correct_face(eid, index, name, store_of)

    def _correct_face(self, eid: int, index: int, name: str | None,
                      store_of: StoreOf) -> dict[str, Any]:
        c = self.catalog()
        event = self._event(eid)
        store = store_of(event.camera)
        if store is None:
            raise Refusal(409, f"{event.camera} keeps no faces (start pancake with --detect faces)")
        try:
            faces = read_event_faces(store.directory, event.camera, event.rise)
            before = next((f for f in faces if f.index == index), None)
            if before is None:
                raise Refusal(404, f"event {eid} has no face {index}")
            if name is not None and before.embedding is None:
                raise Refusal(409, "this face was too small to recognise, so it cannot be "
                                   "enrolled: add a closer picture of them instead")
            after = (store.name_event_face(event.camera, event.rise, index, name)
                     if name is not None else
                     store.drop_event_face(event.camera, event.rise, index))
        except StoreError as exc:
            raise Refusal(409, str(exc)) from None
        names = names_after(event.names, faces, before, after)
        c.set_event_names(eid, names)
        return {"face": _face_json(eid, after), "names": names}


# ---------------------------------------------------------------- JSON shapes


def _said(face: EventFace) -> set[str]:
    """The words a face gives an event's names (casefolded): its name, a probable NAME?."""
    words = {face.name.casefold()}
    if face.probable and not face.named:
        words.add(face.probable.casefold() + "?")
    return words


def names_after(names: Sequence[str], faces: Sequence[EventFace], before: EventFace,
                after: EventFace) -> list[str]:
    """The event's names once `before` became `after`: what only that face said goes (the
    detector's name, "unknown", a probable NAME?), its new name comes; the rest (other
    faces, names of faces the store did not keep) stays."""
    others: set[str] = set()
    for f in faces:
        if f.index != before.index:
            others |= _said(f)
    gone = _said(before) - others
    kept = [n for n in names if n.casefold() not in gone]
    if after.name.casefold() not in {n.casefold() for n in kept}:
        kept.append(after.name)
    return kept


def _face_json(eid: int, f: EventFace) -> dict[str, Any]:
    # A probable match is only a guess until the user names (or drops) the face.
    return {"index": f.index, "name": f.name, "probable": "" if f.named else f.probable,
            "named": f.named, "enrol": f.embedding is not None,
            "box": [round(v, 4) for v in f.box],
            "crop": f"/media/e{eid}-face-{f.index}.jpg" if f.crop else None}


def _local(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def _event_json(view: EventView) -> dict[str, Any]:
    e: Event = view.event
    snapshot = f"/media/e{e.id}.jpg" if e.snapshot is not None else None
    return {
        "id": e.id, "camera": e.camera, "rise": e.rise, "fall": e.fall,
        "when": _local(e.rise),
        "duration": None if e.fall is None else round(e.fall - e.rise, 1),
        "labels": list(e.labels), "names": list(e.names), "score": e.score,
        "boxes": [list(b) for b in e.boxes],
        "snapshot": snapshot,
        "thumbnail": f"/media/e{e.id}-boxes.jpg" if e.boxes_snapshot is not None else snapshot,
        "clip": e.clip, "video": None if e.clip is None or view.clip_deleted
        else f"/media/r{e.clip}.mp4",
        "converted": view.mp4 is not None, "uploaded": view.uploaded,
        "alerted": list(view.alerted), "kept": view.kept,
    }


def _recording_json(r: Recording) -> dict[str, Any]:
    return {"id": r.id, "kind": r.kind, "start": r.start,
            "end": r.end if r.end is not None else time.time(), "open": not r.closed,
            "kept": r.kept, "name": r.path.name, "video": f"/media/r{r.id}.mp4"}


def day_bounds(text: str | None) -> tuple[float, float, str]:
    """Local midnight to midnight of YYYY-MM-DD (today when empty); ValueError if not a day."""
    if not text:
        day = dt.date.today()
    elif _DAY.match(text):
        day = dt.date.fromisoformat(text)
    else:
        raise ValueError(text)
    start = dt.datetime.combine(day, dt.time())
    end = start + dt.timedelta(days=1)
    return start.timestamp(), end.timestamp(), day.isoformat()


# ---------------------------------------------------------------- handlers


class ReviewBase(Base):
    def initialize(self, review: Review, login: Login | None, tls: bool,  # type: ignore[override]
                   faces: Faces | None = None, **_: Any) -> None:
        self.review = review
        self.login = login
        self.tls = tls
        self.faces = faces

    def store_of(self, camera: str) -> FaceStore | None:
        """The store of the camera's faces (each camera may have its own --faces)."""
        return self.faces.store_of(camera) if self.faces is not None else None

    def check_xsrf_cookie(self) -> None:
        """A POST or DELETE without the XSRF token: 403 in one line of JSON (the page shows
        it), logged at most every 10 s, instead of Tornado's HTML page."""
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            _limit.log(log, logging.INFO, "review-xsrf", "%s %s without a valid XSRF token "
                       "from %s", self.request.method, self.request.path, self.request.remote_ip)
            self.set_header("Cache-Control", "no-store")
            self.set_status(403)
            self.finish({"error": "XSRF token missing or wrong"})
            raise tornado.web.Finish() from None

    def refuse(self) -> bool:
        """Answer 401 (an API or a media file) unless the session is valid; True if refused."""
        self.set_header("Cache-Control", "no-store")
        if self.current_user is not None:
            return False
        self.set_status(401)
        self.finish({"error": "login required"})
        return True

    async def catalog_call(self, work: Callable[[], T]) -> T | None:
        """work() on the review threads; a catalog that cannot be read is a 503."""
        try:
            return await self.review.run(work)
        except CatalogError as exc:
            _limit.log(log, logging.WARNING, "review-catalog", "review: %s", exc)
            self.set_status(503)
            self.finish({"error": "the catalog cannot be read now"})
            return None


class ReviewPage(ReviewBase):
    """GET /events and /recordings: the pages; their data comes from the APIs below."""

    def initialize(self, review: Review, login: Login | None, tls: bool,  # type: ignore[override]
                   template: str = "events.html", faces: Faces | None = None,
                   **_: Any) -> None:
        super().initialize(review, login, tls, faces)
        self.template = template

    async def get(self) -> None:
        if self.current_user is None:
            self.redirect("/login?next=" + quote(self.request.uri or "/", safe=""))
            return
        self.set_header("Cache-Control", "no-store")
        cameras = await self.catalog_call(lambda: self.review.catalog().cameras())
        if cameras is None:
            return
        self.render(self.template, cameras=cameras, login=self.login is not None)


class EventsApi(ReviewBase):
    """GET /api/events?camera=&label=&day=YYYY-MM-DD&before=RISE:ID&limit=N → a page of
    events, newest first (`q` is `label`'s other name: a label or a name, any case)."""

    async def get(self) -> None:
        if self.refuse():
            return
        camera = self.get_argument("camera", "") or None
        word = (self.get_argument("label", "") or self.get_argument("q", "")).strip() or None
        t0 = t1 = None
        before = None
        try:
            limit = int(self.get_argument("limit", str(PAGE)))
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError(limit)
            if self.get_argument("day", ""):
                t0, t1, _ = day_bounds(self.get_argument("day"))
            if self.get_argument("before", ""):
                rise, _, eid = self.get_argument("before").partition(":")
                before = (float(rise), int(eid))
        except ValueError:
            self.set_status(400)
            self.finish({"error": f"day is YYYY-MM-DD, before is RISE:ID, limit 1..{MAX_PAGE}"})
            return
        views = await self.catalog_call(lambda: self.review.catalog().event_views(
            camera, word, t0, t1, before, limit))
        if views is None:
            return
        last = views[-1].event if len(views) == limit else None
        self.finish({"events": [_event_json(v) for v in views],
                     "next": f"{last.rise!r}:{last.id}" if last else None})


class EventApi(ReviewBase):
    """GET /api/events/ID: one event; DELETE /api/events/ID (XSRF token): remove its clip,
    snapshots and row."""

    async def get(self, eid: str) -> None:
        if self.refuse():
            return
        views = await self.catalog_call(lambda: self.review.catalog().event_views(
            ident=int(eid), limit=1))
        if views is None:
            return
        if not views:
            self.set_status(404)
            self.finish({"error": "no such event"})
            return
        self.finish(_event_json(views[0]))

    async def delete(self, eid: str) -> None:
        if self.refuse():
            return
        why = await self.catalog_call(lambda: self.review.delete_event(int(eid), self.store_of))
        if why is None:  # the catalog could not be read: answered
            return
        if why:
            self.set_status(404 if why == "no such event" else 409)
            self.finish({"error": why})
            return
        self.finish({"deleted": int(eid)})


class DayApi(ReviewBase):
    """GET /api/recordings?camera=&day=YYYY-MM-DD → a camera's recordings and events of that
    day (today when omitted; the first camera the catalog knows when `camera` is not one)."""

    async def get(self) -> None:
        if self.refuse():
            return
        camera = self.get_argument("camera", "")
        try:
            t0, t1, day = day_bounds(self.get_argument("day", ""))
        except ValueError:
            self.set_status(400)
            self.finish({"error": "day is YYYY-MM-DD"})
            return

        def read() -> dict[str, Any]:
            c = self.review.catalog()
            cams = c.cameras()
            name = camera if camera in cams else (cams[0] if cams else "cam")
            recs = c.recordings_between(name, t0, t1)
            views = c.event_views(name, None, t0, t1, None, 2000)
            return {"camera": name, "cameras": cams, "day": day, "start": t0, "end": t1,
                    "now": time.time(),
                    "recordings": [_recording_json(r) for r in recs],
                    "events": [_event_json(v) for v in reversed(views)]}
        answer = await self.catalog_call(read)
        if answer is not None:
            self.finish(answer)


class LogApi(ReviewBase):
    """GET /api/log?q= → the newest event-log lines, oldest first."""

    async def get(self) -> None:
        if self.refuse():
            return
        word = self.get_argument("q", "").strip().lower()
        lines = await self.catalog_call(lambda: self.review.catalog().log_lines(LOG_LINES))
        if lines is None:
            return
        self.finish({"lines": [{"time": ln.time, "when": _local(ln.time), "camera": ln.camera,
                                "kind": ln.kind, "text": ln.text} for ln in lines
                               if not word or word in ln.text.lower() or word in ln.kind
                               or word == (ln.camera or "")]})


class KeepApi(ReviewBase):
    """POST /api/events/ID/keep (kept=1|0, XSRF token): protect the event's clip from every
    retention rule, or release it."""

    async def post(self, eid: str) -> None:
        if self.refuse():
            return
        kept = self.get_argument("kept", "1") not in ("0", "false", "")
        done = await self.catalog_call(lambda: self.review.keep_event(int(eid), kept))
        if done is None:
            return
        if done:
            self.set_status(404 if done == "no such event" else 409)
            self.finish({"error": done})
            return
        self.finish({"kept": kept})


class _FaceBase(ReviewBase):
    """The event's faces: refusals and store errors answered in one line of JSON."""

    async def faces_call(self, what: str, work: Callable[[], T]) -> T | None:
        """work() on the review threads; None having answered its refusal (one line), 503
        for the catalog, 500 for a store that cannot be written."""
        try:
            return await self.catalog_call(work)
        except Refusal as exc:
            _limit.log(log, logging.INFO, f"review-face-{exc.status}", "review: %s refused: %s",
                       what, exc.text)
            self.set_status(exc.status)
            self.finish({"error": exc.text})
        except OSError as exc:
            log.error("review: %s failed: %s", what, exc.strerror or exc)
            self.set_status(500)
            self.finish({"error": f"the faces store cannot be written: {exc.strerror or exc}"})
        return None


class EventFacesApi(_FaceBase):
    """GET /api/events/ID/faces: {faces: [{index, name, probable, named, enrol, box, crop}],
    people: [NAME…], store: bool} from the store of the event's camera."""

    async def get(self, eid: str) -> None:
        if self.refuse():
            return
        answer = await self.faces_call("faces", lambda: self.review.event_faces(
            int(eid), self.store_of))
        if answer is not None:
            self.finish(answer)


class EventFaceApi(_FaceBase):
    """POST /api/events/ID/faces/N {"name": NAME} (XSRF): "this is NAME" (a new name makes a
    new person; a face named before moves); POST …/faces/N/drop: "not them". Answers the
    face and the event's names as they now are."""

    async def post(self, eid: str, index: str, drop: str | None = None) -> None:
        if self.refuse():
            return
        name: str | None = None
        if not drop:
            raw = self.request.body or b""
            try:
                doc = json.loads(raw) if len(raw) <= MAX_BODY else None
            except (ValueError, UnicodeDecodeError):
                doc = None
            if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
                self.set_status(400)
                self.finish({"error": 'a JSON object with a name, e.g. {"name": "Anna"}'})
                return
            name = doc["name"]
        answer = await self.faces_call("naming a face", lambda: self.review.correct_face(
            int(eid), int(index), name, self.store_of))
        if answer is not None:
            # No name in the log: who is who is the user's business, not the journal's.
            log.info("review: event %s face %s %s from the page", eid, index,
                     "dropped" if drop else "named")
            self.finish(answer)


class MediaHandler(ReviewBase):
    """GET /media/rID.mp4, /media/eID.jpg, /media/eID-boxes.jpg, /media/eID-face-N.jpg (face N
    of the event, from its camera's faces store), /media/cut.mp4?camera=&from=&to=: files by
    catalog id only, with byte ranges so that the video element can seek."""

    async def get(self, what: str) -> None:
        await self._serve(what, include_body=True)

    async def head(self, what: str) -> None:
        await self._serve(what, include_body=False)

    async def _serve(self, what: str, include_body: bool) -> None:
        if self.refuse():
            return
        face = _FACE_CROP.fullmatch(what)
        if face is not None:
            await self._face(int(face.group(1)), int(face.group(2)), include_body)
            return
        find = self._finder(what)
        if find is None:
            raise tornado.web.HTTPError(404)
        try:
            media = await self.review.run(find)
        except ConversionError as exc:
            _limit.log(log, logging.INFO, "review-remux", "review: not playable: %s", exc)
            media = None
        except CatalogError as exc:
            _limit.log(log, logging.WARNING, "review-catalog", "review: %s", exc)
            raise tornado.web.HTTPError(503) from None
        if media is None:
            raise tornado.web.HTTPError(404)
        await self._send(media, include_body)

    async def _face(self, eid: int, index: int, include_body: bool) -> None:
        try:
            data = await self.review.run(lambda: self.review.face_crop(eid, index, self.store_of))
        except CatalogError as exc:
            _limit.log(log, logging.WARNING, "review-catalog", "review: %s", exc)
            raise tornado.web.HTTPError(503) from None
        if data is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "image/jpeg")
        # Biometric data: kept by no cache at all (a removed person's face must not linger).
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Length", str(len(data)))
        self.finish(data if include_body else None)

    def _finder(self, what: str) -> Callable[[], MediaFile | None] | None:
        r = self.review
        if what == "cut.mp4":
            try:
                t0 = float(self.get_argument("from"))
                t1 = float(self.get_argument("to"))
            except (ValueError, tornado.web.MissingArgumentError):
                return None
            camera = self.get_argument("camera", "cam")
            if not 0 < t1 - t0 <= MAX_CUT:
                return None
            return lambda: r.cut_media(camera, t0, t1)
        match = re.fullmatch(r"(r|e)(\d{1,12})(-boxes)?\.(mp4|jpg)", what)
        if match is None:
            return None
        kind, ident, boxes, ext = match.groups()
        if kind == "r" and ext == "mp4" and not boxes:
            return lambda: r.recording_media(int(ident))
        if kind == "e" and ext == "jpg":
            return lambda: r.snapshot_media(int(ident), bool(boxes))
        return None

    async def _send(self, media: MediaFile, include_body: bool) -> None:
        growing = media.growing
        if growing is not None and not growing.done:
            # Chromium opens a video with "bytes=0-": the whole file, which is what the stream
            # is. Any other range is a seek, which needs the final offsets and the length:
            # it waits for the remux (a second or two) and is answered from the cache, as is a
            # HEAD (which would else say "no length").
            asked = self.request.headers.get("Range", "").replace(" ", "")
            if include_body and asked in ("", "bytes=0-"):
                await self._stream(media, growing)
                return
            while not growing.done:
                await asyncio.sleep(GROW_POLL)
            if growing.error is not None:
                _limit.log(log, logging.INFO, "review-remux", "review: not playable: %s",
                           growing.error)
                raise tornado.web.HTTPError(404)
        try:
            size = os.stat(media.path).st_size
        except OSError:
            raise tornado.web.HTTPError(404) from None
        self.set_header("Content-Type", media.content_type)
        self.set_header("Accept-Ranges", "bytes")
        # Private: a shared cache must never keep what needs a login.
        self.set_header("Cache-Control", "private, max-age=60")
        if self.get_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="{media.download_name}"')
        start, end = 0, size
        header = self.request.headers.get("Range")
        if header:
            parsed = tornado.httputil._parse_request_range(header)
            if parsed is None:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            a, b = parsed
            if a is not None and a < 0:
                a += size
            start = max(0, a or 0)
            end = min(size, b if b is not None else size)
            if start >= end:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{size}")
                self.finish()
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Length", str(end - start))
        if not include_body:
            self.finish()
            return
        with media.path.open("rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                want = min(CHUNK, end - pos)
                chunk = await self.review.run(functools.partial(f.read, want))
                if not chunk:
                    break
                pos += len(chunk)
                self.write(chunk)
                try:
                    await self.flush()
                except tornado.iostream.StreamClosedError:
                    return  # the player seeked elsewhere: a normal end
        self.finish()

    async def _stream(self, media: MediaFile, growing: Remuxing) -> None:
        """The remux's file as it grows: 200 without a length (chunked), read off the loop;
        not rangeable (those bytes are not cached: later requests get the whole file)."""
        self.set_header("Content-Type", media.content_type)
        self.set_header("Accept-Ranges", "none")
        self.set_header("Cache-Control", "private, no-store")
        if self.get_argument("download", ""):
            self.set_header("Content-Disposition", f'attachment; filename="{media.download_name}"')
        try:
            f = await self.review.run(growing.reader)
        except (ConversionError, OSError) as exc:
            _limit.log(log, logging.INFO, "review-remux", "review: not playable: %s", exc)
            raise tornado.web.HTTPError(404) from None
        with f:
            while True:
                ended = growing.done  # read before: everything written by then is read below
                chunk = await self.review.run(functools.partial(f.read, CHUNK))
                if chunk:
                    self.write(chunk)
                    try:
                        await self.flush()
                    except tornado.iostream.StreamClosedError:
                        return  # the player went elsewhere: a normal end
                elif ended:
                    break
                else:
                    await asyncio.sleep(GROW_POLL)
        if growing.error is not None:
            # Part of a file already went out: close without the last chunk, so the client
            # sees a cut answer rather than a whole, shorter file.
            _limit.log(log, logging.WARNING, "review-remux", "review: remux failed midway: %s",
                       growing.error)
            self.request.connection.close()  # type: ignore[union-attr]
            return
        self.finish()


def routes(review: Review, login: Login | None, tls: bool,
           faces: Faces | None = None) -> list[tuple[str, type, dict[str, Any]]]:
    """The review part of the app, for app.make_app; `faces`: the cameras' faces stores."""
    deps: dict[str, Any] = {"review": review, "login": login, "tls": tls, "faces": faces}
    return [
        (r"/events", ReviewPage, {**deps, "template": "events.html"}),
        (r"/recordings", ReviewPage, {**deps, "template": "recordings.html"}),
        (r"/api/events", EventsApi, deps),
        (r"/api/events/(\d{1,12})", EventApi, deps),
        (r"/api/events/(\d{1,12})/keep", KeepApi, deps),
        (r"/api/events/(\d{1,12})/faces", EventFacesApi, deps),
        (r"/api/events/(\d{1,12})/faces/(\d{1,2})(/drop)?", EventFaceApi, deps),
        (r"/api/recordings", DayApi, deps),
        (r"/api/log", LogApi, deps),
        (r"/media/([A-Za-z0-9._-]{1,40})", MediaHandler, deps),
    ]
