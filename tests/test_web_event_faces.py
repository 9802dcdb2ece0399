"""An event's faces on the real pancake.py's review page: served by id, named, corrected, dropped."""

from __future__ import annotations

import http.client
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from conftest import Listener, Pancake, doc_screenshot, run_pancake, wait_page
from PIL import Image
from test_faces_recognition import still_video
from web_helpers import HOST, LISTENING, ROOT, Session, get, make_hash_file, wait_port

from raspberry_pancake.recorder.detect.faces import load_models
from raspberry_pancake.recorder.web import auth
from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.faces import UNKNOWN, FaceStore, SeenFace, read_event_faces

PHOTOS = ROOT / "tests" / "data" / "faces"
PASSWORD = "pancakes for breakfast"
STILL_SECONDS = 240.0  # longer than the file's tests: a file source that ends is reopened


@dataclass(frozen=True)
class Real:
    """A face cut from a real photo: the crop and the embedding the recorder would store."""

    crop: bytes
    embedding: tuple[float, ...]


def real_face(photo: str) -> Real:
    models = load_models()
    rgb = np.asarray(Image.open(PHOTOS / photo).convert("RGB"))
    face = models.find(rgb)[0]
    vec = models.embed(rgb, face)
    box = (round(face.x), round(face.y), round(face.x + face.w), round(face.y + face.h))
    out = io.BytesIO()
    Image.fromarray(rgb).crop(box).save(out, "JPEG", quality=90)
    return Real(out.getvalue(), tuple(float(v) for v in vec))


def small_crop(photo: str) -> bytes:
    """A face too small to recognise: the recorder keeps its crop, no embedding."""
    out = io.BytesIO()
    Image.open(PHOTOS / photo).convert("RGB").resize((30, 30)).save(out, "JPEG")
    return out.getvalue()


class Site(Session):
    """The pancake of this file: cameras front and back (each its own faces store), side (no
    faces), --login; a session with its XSRF token."""

    def __init__(self, p: Pancake, tmp: Path) -> None:
        super().__init__(p.port, PASSWORD, "/events")
        self.p = p
        self.tmp = tmp
        self.db = tmp / "pancake.db"
        self.stores = {"front": tmp / "faces-front", "back": tmp / "faces-back"}
        self._labels = 0

    def store(self, camera: str) -> FaceStore:
        return FaceStore(self.stores[camera])

    def event(self, camera: str, faces: list[SeenFace], names: list[str]) -> tuple[int, float]:
        """A real catalog event on `camera` (the page's own trigger), with `faces` in the
        camera's store as the recorder keeps them and `names` as the detector would say."""
        self._labels += 1
        label = f"visit{self._labels}"
        conn = http.client.HTTPConnection(HOST, self.p.port, timeout=20)
        try:
            conn.request("POST", "/api/trigger",
                         body=urlencode({"label": label, "seconds": "1", "camera": camera}),
                         headers={**self.headers,
                                  "Content-Type": "application/x-www-form-urlencoded"})
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
        finally:
            conn.close()
        deadline = time.monotonic() + 30
        while True:
            with Catalog.open(self.db) as c:
                found = [v.event for v in c.event_views(camera) if label in v.event.labels
                         and v.event.fall is not None]
                if found:
                    eid, rise = found[0].id, found[0].rise
                    c.set_event_names(eid, names)
                    break
            assert time.monotonic() < deadline, self.p.log()[-3000:]
            time.sleep(0.2)
        if faces:
            self.store(camera).add_event_faces(camera, rise, faces)
        return eid, rise

    def names(self, eid: int) -> tuple[str, ...]:
        with Catalog.open(self.db) as c:
            event = c.event(eid)
        assert event is not None
        return event.names


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("evfaces")
    hashed = make_hash_file(tmp, auth.hash_password(PASSWORD.encode()))
    config = tmp / "cameras.toml"
    # A still of a face-free photo: the face detector runs and finds nobody, so the only
    # faces of an event are the ones a test gives it (testsrc's patterns fool BlazeFace).
    still = still_video(tmp / "coffee.mp4", "coffee.jpg", seconds=STILL_SECONDS, fps=5)
    cams = "".join(
        f'[camera.{name}]\ntitle = "{title}"\nfps = 5\n' + (
            f'source = "{still}"\nresolution = [640, 480]\ndetect = "faces"\n'
            f'faces = "{tmp / ("faces-" + name)}"\n' if name != "side" else
            'source = "testsrc"\nresolution = [160, 120]\n')
        for name, title in (("front", "Front door"), ("back", "Back door"), ("side", "Side")))
    config.write_text(f'catalog = "{tmp / "pancake.db"}"\nlogin = "{hashed}"\n' + cams)
    p = Pancake(["--config", str(config)], tmp)
    try:
        p.wait_for(LISTENING, 60)
        wait_port(p.port, 20)
        yield Site(p, tmp)
        rc, _ = p.stop()
        assert rc == 0, p.log()[-3000:]
        assert "Traceback" not in p.log(), p.log()[-3000:]
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture(scope="module")
def obama() -> Real:
    return real_face("obama-1.jpg")


@pytest.fixture(scope="module")
def biden() -> Real:
    return real_face("biden.jpg")


def seen(face: Real | None, name: str = UNKNOWN, probable: str = "",
         small: str = "cameraman.jpg") -> SeenFace:
    if face is None:
        return SeenFace((0.7, 0.1, 0.05, 0.05), name, probable, None, small_crop(small))
    return SeenFace((0.3, 0.2, 0.2, 0.3), name, probable, face.embedding, face.crop)


def only_face(store: FaceStore, name: str) -> tuple[float, ...]:
    person = store.find(name)
    assert person is not None and len(person.faces) == 1, store.people()
    return person.faces[0].embedding


def test_an_anonymous_client_gets_neither_crops_nor_changes(site: Site, obama: Real) -> None:
    eid, rise = site.event("front", [seen(obama)], [UNKNOWN])
    for path in (f"/api/events/{eid}/faces", f"/media/e{eid}-face-0.jpg"):
        assert get(site.p.port, path)[0] == 401, path
    status, _, _ = get(site.p.port, "/events")
    assert status == 302
    for path in (f"/api/events/{eid}/faces/0", f"/api/events/{eid}/faces/0/drop"):
        # Neither session nor XSRF token: refused before anything runs.
        status, answer = site.call("POST", path, {"name": "Anna"}, {})
        assert (status, answer) == (403, {"error": "XSRF token missing or wrong"}), path
        # An XSRF token of one's own is no session.
        mine = {"Cookie": f"_xsrf={site.token}", "X-XSRFToken": site.token}
        assert site.call("POST", path, {"name": "Anna"}, mine) == (
            401, {"error": "login required"}), path
        # The session without its XSRF token: 403.
        assert site.call("POST", path, {"name": "Anna"}, {"Cookie": site.session})[0] == 403
    # The review page's other changes answer a missing XSRF token the same way: one line
    # of JSON (the page shows it), not Tornado's HTML page.
    for method, path in (("DELETE", f"/api/events/{eid}"), ("POST", f"/api/events/{eid}/keep")):
        assert site.call(method, path, headers={"Cookie": site.session}) == (
            403, {"error": "XSRF token missing or wrong"}), path
    assert site.store("front").find("Anna") is None
    assert site.names(eid) == (UNKNOWN,)
    assert read_event_faces(site.stores["front"], "front", rise)  # nothing was deleted


def test_an_events_face_is_named_corrected_and_dropped_over_http(
        site: Site, obama: Real, biden: Real) -> None:
    eid, rise = site.event("front", [seen(obama), seen(None)], [UNKNOWN])
    status, body = site.call("GET", f"/api/events/{eid}/faces")
    assert status == 200 and body["store"] is True, body
    assert [(f["index"], f["name"], f["enrol"], f["crop"]) for f in body["faces"]] == [
        (0, UNKNOWN, True, f"/media/e{eid}-face-0.jpg"),
        (1, UNKNOWN, False, f"/media/e{eid}-face-1.jpg")]
    assert "embedding" not in json.dumps(body)  # no embedding leaves the server
    status, jpeg = site.call("GET", f"/media/e{eid}-face-0.jpg")
    assert status == 200 and jpeg == obama.crop
    assert site.call("GET", f"/media/e{eid}-face-7.jpg")[0] == 404
    assert site.call("GET", "/media/e999999-face-0.jpg")[0] == 404

    # Refused, one line each, the store untouched.
    for path, body_, raw, code, said in (
            (f"/api/events/{eid}/faces/1", {"name": "Anna"}, None, 409, "too small"),
            (f"/api/events/{eid}/faces/7", {"name": "Anna"}, None, 404, "no face 7"),
            ("/api/events/999999/faces/0", {"name": "Anna"}, None, 404, "no such event"),
            ("/api/events/999999/faces/0/drop", None, b"", 404, "no such event"),
            (f"/api/events/{eid}/faces/0", {"name": "Unknown"}, None, 400, "reserved"),
            (f"/api/events/{eid}/faces/0", {"name": "Anna?"}, None, 400, "'?'"),
            (f"/api/events/{eid}/faces/0", {"name": 5}, None, 400, "JSON object"),
            (f"/api/events/{eid}/faces/0", None, b"[1]", 400, "JSON object"),
            (f"/api/events/{eid}/faces/0", None, b"{", 400, "JSON object")):
        status, answer = site.call("POST", path, body_, raw=raw)
        assert status == code and said in answer["error"], (path, body_, raw, status, answer)
        assert set(answer) == {"error"} and "\n" not in answer["error"]
    assert site.store("front").people() == []

    # "This is Anna": Anna is made with that face's embedding; the event names her (and
    # still "unknown": its other face is nobody known).
    status, answer = site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Anna"})
    assert status == 200, answer
    assert answer["face"]["name"] == "Anna" and answer["face"]["named"] is True
    assert answer["names"] == [UNKNOWN, "Anna"] and site.names(eid) == (UNKNOWN, "Anna")
    assert only_face(site.store("front"), "Anna") == pytest.approx(obama.embedding, abs=1e-6)
    assert site.store("back").people() == []  # the camera's own store only
    # Wrong: it is Bea. The embedding moves; the event stops naming Anna.
    status, answer = site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Bea"})
    assert status == 200 and answer["names"] == [UNKNOWN, "Bea"], answer
    assert site.store("front").find("Anna") is None
    assert only_face(site.store("front"), "Bea") == pytest.approx(obama.embedding, abs=1e-6)
    # Not Bea either: dropped from the store, the event names nobody but "unknown".
    status, answer = site.call("POST", f"/api/events/{eid}/faces/0/drop", raw=b"")
    assert status == 200 and answer["face"]["name"] == UNKNOWN, answer
    assert site.names(eid) == (UNKNOWN,) and site.store("front").people() == []

    # A recognised face wrongly named: "Not Joe" drops the name from the event.
    other, _ = site.event("front", [seen(biden, "Joe")], ["Joe"])
    status, answer = site.call("POST", f"/api/events/{other}/faces/0/drop", raw=b"")
    assert status == 200 and answer["names"] == [UNKNOWN], answer

    # Deleting the event deletes its faces: crops and embeddings.
    assert site.call("DELETE", f"/api/events/{eid}") == (200, {"deleted": eid})
    assert read_event_faces(site.stores["front"], "front", rise) == []
    key = str(round(rise * 1000))
    assert not list((site.stores["front"] / "events" / "front").glob(f"{key}*"))
    assert site.call("GET", f"/media/e{eid}-face-0.jpg")[0] == 404


def test_a_camera_without_faces_says_so(site: Site) -> None:
    eid, _ = site.event("side", [], [])
    assert site.call("GET", f"/api/events/{eid}/faces") == (200, {
        "event": eid, "camera": "side", "store": False, "faces": [], "people": []})
    status, answer = site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Anna"})
    assert status == 409 and "side keeps no faces" in answer["error"], answer


def test_each_camera_has_its_store_and_the_catalog_follows_the_faces_page(
        site: Site, obama: Real) -> None:
    eid, _ = site.event("back", [seen(obama)], [UNKNOWN])
    status, answer = site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Cleo"})
    assert status == 200 and answer["names"] == ["Cleo"], answer
    assert site.store("back").find("Cleo") is not None
    assert site.store("front").find("Cleo") is None
    # The Faces page manages both stores: front's first (camera order), then back's.
    status, _, page = get(site.p.port, "/faces", {"Cookie": site.session})
    assert status == 200
    html = page.decode()
    assert '<select id="store"' in html and "Store used by Front door" in html
    picker = html.split('id="store"')[1].split("</select>")[0]
    assert "Store used by Back door" in picker and "Side" not in picker
    assert site.call("GET", "/api/faces?store=1")[1]["people"][0]["name"] == "Cleo"
    assert "Cleo" not in json.dumps(site.call("GET", "/api/faces?store=0")[1])
    status, answer = site.call("GET", "/api/faces?store=2")
    assert status == 404 and "no faces store" in answer["error"]
    face_id = site.store("back").people()[0].faces[0].id
    assert site.call("GET", f"/api/faces/crops/{face_id}.jpg?store=1")[1] == obama.crop
    # Renamed on the Faces page: past events name her so.
    assert site.call("POST", "/api/faces/rename", {"name": "cleo", "new": "Dora", "store": 1}) \
        == (200, {"name": "Dora", "faces": 1})
    assert site.names(eid) == ("Dora",)
    # Asked of the wrong store: refused, nothing changes.
    status, answer = site.call("POST", "/api/faces/remove", {"name": "Dora", "store": 0})
    assert status == 400 and "nobody called" in answer["error"]
    assert site.names(eid) == ("Dora",)
    # Removed: past events stop naming her; her event faces go with her. Another Dora, of
    # the cameras reading the other store, is another person: her events keep her name.
    other, _ = site.event("front", [seen(obama, "Dora")], ["Dora"])
    assert site.call("POST", "/api/faces/remove", {"name": "Dora", "store": 1}) == \
        (200, {"removed": "Dora", "faces": 1})
    assert site.names(eid) == ()
    assert site.names(other) == ("Dora",)
    assert site.call("GET", f"/media/e{eid}-face-0.jpg")[0] == 404


def test_naming_from_the_event_in_chromium(site: Site, browser: Any, obama: Real,
                                          biden: Real) -> None:
    eid, _ = site.event("front", [seen(obama), seen(biden, probable="Joe"), seen(None)],
                        [UNKNOWN])
    base = f"http://{HOST}:{site.p.port}"
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/events")
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/events")
    page.click(f'#events .card[data-id="{eid}"]')
    page.wait_for_selector("#p-faces:not([hidden]) #p-face-list li.eface")
    faces = page.locator("#p-face-list li.eface")
    assert faces.count() == 3
    assert [faces.nth(i).locator(".fname").inner_text() for i in range(3)] == [
        "unknown", "Joe?", "unknown"]
    assert faces.nth(2).locator("input").count() == 0  # too small to name
    wait_page(page, "[...document.querySelectorAll('#p-face-list img.crop')]"
                           ".every(i => i.naturalWidth > 0)")

    first = '#p-face-list li.eface[data-index="0"]'
    page.fill(f"{first} input", "Anna")
    page.click(f"{first} .fsave")
    page.wait_for_selector(f'{first} .fname:text-is("Anna")')
    page.wait_for_selector('#p-chips .chip[data-word="Anna"]')
    assert only_face(site.store("front"), "Anna") == pytest.approx(obama.embedding, abs=1e-6)
    assert site.names(eid) == (UNKNOWN, "Anna")
    assert "Anna" in page.inner_text("#p-face-msg")
    doc_screenshot(page, "events-faces.png")
    # Corrected: Bea.
    page.fill(f"{first} input", "Bea")
    page.click(f"{first} .fsave")
    page.wait_for_selector(f'{first} .fname:text-is("Bea")')
    assert site.store("front").find("Anna") is None
    assert only_face(site.store("front"), "Bea") == pytest.approx(obama.embedding, abs=1e-6)
    assert site.names(eid) == (UNKNOWN, "Bea")
    # Not Bea.
    page.click(f"{first} .fnot")
    page.wait_for_selector(f'{first} .fname:text-is("unknown")')
    assert site.store("front").find("Bea") is None
    assert site.names(eid) == (UNKNOWN,)
    # The card in the list says so too.
    page.click("#p-close")
    assert page.locator(f'#events .card[data-id="{eid}"] .chip[data-word="Bea"]').count() == 0
    assert errors == [], errors
    context.close()

    # A phone: the same event, named again, fits 390 px without sideways scrolling.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(base + "/events")
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/events")
    page.click(f'#events .card[data-id="{eid}"]')
    page.wait_for_selector("#p-faces:not([hidden]) #p-face-list li.eface")
    page.fill(f"{first} input", "Anna")
    page.click(f"{first} .fsave")
    page.wait_for_selector(f'{first} .fname:text-is("Anna")')
    page.locator("#p-faces").scroll_into_view_if_needed()
    wide = page.evaluate("document.getElementById('player').scrollWidth")
    assert wide <= 390, wide
    doc_screenshot(page, "events-faces-phone.png")
    phone.close()
    assert site.store("front").find("Anna") is not None


def test_a_face_the_recorder_saw_is_named_from_its_event(
        tmp_path: Path, pancakes: list[Pancake]) -> None:
    """End to end: pancake --detect faces on a still of Obama stores the event's face itself;
    named from the page, the same pancake recognises him with no restart."""
    clip = still_video(tmp_path / "still.mp4", "obama-2.jpg", seconds=60.0, fps=10)
    store, db = tmp_path / "faces", tmp_path / "pancake.db"
    hashed = make_hash_file(tmp_path, auth.hash_password(PASSWORD.encode()))
    listener = Listener()
    try:
        p = run_pancake(pancakes, [
            "--source", str(clip), "--resolution", "640", "480", "--fps", "10",
            "--detect", "faces", "--faces", str(store), "--catalog", str(db),
            "--login", str(hashed), "--emit", listener.name], tmp_path)
        p.wait_for(LISTENING, 60)
        wait_port(p.port, 20)
        site = Site(p, tmp_path)
        site.db = db
        deadline = time.monotonic() + 60
        while True:
            with Catalog.open(db) as c:
                views = c.event_views("cam")
            faces = (read_event_faces(store, "cam", views[0].event.rise) if views else [])
            if faces and faces[0].embedding is not None:
                break
            assert time.monotonic() < deadline and p.proc.poll() is None, p.log()[-3000:]
            time.sleep(0.3)
        eid = views[0].event.id
        assert UNKNOWN in views[0].event.names, views[0].event
        status, body = site.call("GET", f"/api/events/{eid}/faces")
        assert status == 200 and body["faces"][0]["name"] == UNKNOWN, body
        assert body["faces"][0]["enrol"] is True
        status, jpeg = site.call("GET", body["faces"][0]["crop"])
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        before = len(listener.events())
        status, answer = site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Barack"})
        assert status == 200 and "Barack" in answer["names"], answer
        assert only_face(FaceStore(store), "Barack") == pytest.approx(faces[0].embedding, abs=1e-6)
        # The running detector now knows him: a later message names Barack.
        deadline = time.monotonic() + 40
        while not any("Barack" in m.get("names", ()) for m in listener.events()[before:]):
            assert time.monotonic() < deadline and p.proc.poll() is None, (
                listener.events()[-5:], p.log()[-3000:])
            time.sleep(0.2)
        assert "Barack" in site.names(eid)
        rc, _ = p.stop()
        assert rc == 0 and "Traceback" not in p.log(), p.log()[-3000:]
    finally:
        listener.close()


def test_the_faces_page_manages_each_store_in_chromium(site: Site, browser: Any,
                                                       obama: Real) -> None:
    eid, _ = site.event("back", [seen(obama)], [UNKNOWN])
    assert site.call("POST", f"/api/events/{eid}/faces/0", {"name": "Erin"})[0] == 200
    base = f"http://{HOST}:{site.p.port}"
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/faces")
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/faces")
    # Front's store first: Erin is not in it; "add from camera" offers front only.
    wait_page(page, "!document.getElementById('none').hidden"
                           " || document.querySelectorAll('#people .person').length > 0")
    assert "Erin" not in page.inner_text("#people")
    visible = "[...document.querySelectorAll('#camera option')].filter(o => !o.hidden).map(o => o.value)"
    assert page.evaluate(visible) == ["front"]
    page.select_option("#store", "1")
    page.wait_for_selector("#people .person:has-text('Erin')")
    assert page.evaluate(visible) == ["back"]
    assert page.input_value("#camera") == "back"
    wait_page(page, "[...document.querySelectorAll('#people img')]"
                           ".every(i => i.naturalWidth > 0)")
    doc_screenshot(page, "faces-stores.png", full_page=True)
    # Renamed here: the event on the back door names her so.
    page.once("dialog", lambda d: d.accept("Fay"))
    page.click("#people .person .rename")
    page.wait_for_selector("#people .person:has-text('Fay')")
    assert site.names(eid) == ("Fay",)
    page.once("dialog", lambda d: d.accept())
    page.click("#people .person .remove")
    page.wait_for_selector("#none:not([hidden])")
    assert site.names(eid) == () and site.store("back").people() == []
    assert errors == [], errors
    context.close()
