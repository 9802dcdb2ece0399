"""The Faces page on the real pancake.py (--detect faces on a still of a real photo): people
listed, added from the camera, renamed, removed; the add-from-camera flow in Chromium."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Listener, Pancake, doc_screenshot, wait_page
from test_faces_recognition import still_video
from web_helpers import HOST, LISTENING, ROOT, Session, get, make_hash_file, wait_port

from raspberry_pancake.recorder.web import auth
from raspberry_pancake.shared.faces import FaceStore

ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "pancakes for breakfast"


class Site(Session):
    def __init__(self, pancake: Pancake, store: Path, listener: Listener, tmp: Path) -> None:
        super().__init__(pancake.port, PASSWORD, "/faces")
        self.p = pancake
        self.store = store
        self.listener = listener
        self.tmp = tmp


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One pancake for the file (the models take seconds to load): --login, --detect faces
    on a still of Obama, an empty store."""
    tmp = tmp_path_factory.mktemp("facespage")
    clip = still_video(tmp / "still.mp4", "obama-2.jpg", seconds=2.0)
    store = tmp / "faces"
    hashed = make_hash_file(tmp, auth.hash_password(PASSWORD.encode()))
    listener = Listener()
    p = Pancake(["--source", str(clip), "--resolution", "640", "480", "--fps", "10",
                 "--detect", "faces", "--faces", str(store), "--detect-interval", "0.5",
                 "--login", str(hashed), "--emit", listener.name], tmp)
    try:
        p.wait_for(LISTENING, 40)
        wait_port(p.port, 20)
        yield Site(p, store, listener, tmp)
        rc, _ = p.stop()
        assert rc == 0, p.log()[-3000:]
        assert "Traceback" not in p.log(), p.log()[-3000:]
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
        listener.close()


def named(site: Site, name: str, timeout: float, since: int = 0) -> list[dict[str, Any]]:
    """The messages naming `name`, from the `since`th on, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and site.p.proc.poll() is None:
        got = [e for e in site.listener.events()[since:] if name in e.get("names", ())]
        if got:
            return got
        time.sleep(0.1)
    return []


def test_without_a_session_the_page_and_its_api_are_refused(site: Site) -> None:
    status, headers, _ = get(site.p.port, "/faces")
    assert status == 302 and headers["location"] == "/login?next=%2Ffaces"
    for path in ("/api/faces", "/api/faces/crops/0123456789abcdef.jpg"):
        assert get(site.p.port, path)[0] == 401, path
    # A POST with neither session nor XSRF token: refused before anything runs.
    assert site.call("POST", "/api/cameras/cam/faces", {}, {})[0] == 403
    # The XSRF token alone (an attacker's own) is not a session.
    token = site.headers["X-XSRFToken"]
    no_session = {"Cookie": f"_xsrf={token}", "X-XSRFToken": token}
    for path, body in (("/api/cameras/cam/faces", {}), ("/api/faces/add", {"name": "x"}),
                       ("/api/faces/rename", {"name": "a", "new": "b"}),
                       ("/api/faces/remove", {"name": "a"})):
        status, answer = site.call("POST", path, body, no_session)
        assert (status, answer) == (401, {"error": "login required"}), path
    # With the session but no XSRF token: 403.
    assert site.call("POST", "/api/faces/remove", {"name": "a"},
                     {"Cookie": site.session})[0] == 403


def test_a_face_added_from_the_camera_is_stored_named_renamed_and_removed(site: Site) -> None:
    # Nobody known yet: the camera's face is unknown.
    assert named(site, "unknown", 40), site.p.log()[-3000:]
    assert site.call("GET", "/api/faces") == (200, {"people": []})
    status, look = site.call("POST", "/api/cameras/cam/faces", {})
    assert status == 200, look
    assert look["camera"] == "cam" and len(look["faces"]) == 1, look
    face = look["faces"][0]
    assert face["name"] == "unknown" and face["enrol"] is True
    x, y, w, h = face["box"]
    assert 0.2 < x < 0.8 and 0 <= y < 0.6 and 0.05 < w < 0.6 and 0.05 < h < 0.6, face
    status, crop = site.call("GET", face["crop"])
    assert status == 200 and crop[:2] == b"\xff\xd8"
    assert site.call("POST", "/api/cameras/nope/faces", {})[0] == 404

    # Refused with the reason: a reserved name, a face that is not in the look, a gone look.
    for body, code, said in (({"look": look["look"], "face": 0, "name": "Unknown"}, 400, "reserved"),
                             ({"look": look["look"], "face": 3, "name": "Barack"}, 400, "face:"),
                             ({"look": "x" * 22, "face": 0, "name": "Barack"}, 404, "look again"),
                             ([1, 2], 400, "JSON object")):
        status, answer = site.call("POST", "/api/faces/add", body)
        assert status == code and said in answer["error"], (body, status, answer)
    assert not (site.store / "people.json").exists()

    before = len(site.listener.events())
    status, answer = site.call("POST", "/api/faces/add",
                               {"look": look["look"], "face": 0, "name": "Barack"})
    assert (status, answer) == (200, {"name": "Barack", "faces": 1}), answer
    # Stored as the store keeps faces: private (biometric data), the crop beside the index.
    people = FaceStore(site.store).people()
    assert [p.name for p in people] == ["Barack"] and len(people[0].faces[0].embedding) == 128
    assert people[0].faces[0].source == "camera cam"
    assert stat.S_IMODE(site.store.stat().st_mode) == 0o700
    assert stat.S_IMODE((site.store / "people.json").stat().st_mode) == 0o600
    crop_file = site.store / people[0].faces[0].crop
    assert stat.S_IMODE(crop_file.stat().st_mode) == 0o600
    # The running pancake now names the face (an update of the same detection): no restart.
    assert named(site, "Barack", 30, before), (site.listener.events()[-5:], site.p.log()[-3000:])
    # A second look names the face too.
    status, again = site.call("POST", "/api/cameras/cam/faces", {})
    assert status == 200 and [f["name"] for f in again["faces"]] == ["Barack"], again

    status, listing = site.call("GET", "/api/faces")
    assert status == 200 and [p["name"] for p in listing["people"]] == ["Barack"]
    (stored,) = listing["people"][0]["faces"]
    assert set(stored) == {"id", "added", "source"}  # no embedding leaves the server
    status, jpeg = site.call("GET", f"/api/faces/crops/{stored['id']}.jpg")
    assert status == 200 and jpeg == crop_file.read_bytes()
    assert site.call("GET", "/api/faces/crops/0123456789abcdef.jpg")[0] == 404
    # Only ids of the index: a path in the URL is no route at all.
    assert site.call("GET", "/api/faces/crops/..%2Fpeople.json")[0] == 404

    assert site.call("POST", "/api/faces/rename", {"name": "barack", "new": "Obama"}) == \
        (200, {"name": "Obama", "faces": 1})
    status, answer = site.call("POST", "/api/faces/rename", {"name": "Nobody", "new": "X"})
    assert status == 400 and "nobody called" in answer["error"]
    assert [p.name for p in FaceStore(site.store).people()] == ["Obama"]
    status, answer = site.call("POST", "/api/faces/remove", {"name": "Obama"})
    assert (status, answer) == (200, {"removed": "Obama", "faces": 1})
    assert FaceStore(site.store).people() == [] and not crop_file.exists()
    assert site.call("GET", f"/api/faces/crops/{stored['id']}.jpg")[0] == 404
    # The page's own log lines name nobody (who is enrolled is nobody else's business).
    lines = [line for line in site.p.log().splitlines() if "faces_page" in line]
    assert len(lines) >= 3 and not [line for line in lines if "Obama" in line or "Barack" in line]


def test_add_from_camera_in_chromium(site: Site, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    base = f"http://{HOST}:{site.p.port}"
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/faces")
    assert page.url.startswith(base + "/login"), page.url
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/faces")
    page.wait_for_selector("#none:not([hidden])")
    page.click("#look")
    page.wait_for_selector("#found li.face")
    wait_page(page, "document.getElementById('picture').naturalWidth > 0")
    assert page.locator("#boxes .box").count() == 1
    assert "unknown" in page.locator("#boxes .box").inner_text()
    page.fill("#found input", "Barack")
    page.click("#found button.add")
    page.wait_for_selector("#people .person:has-text('Barack')")
    wait_page(page, "[...document.querySelectorAll('#people img')]"
                           ".every(i => i.naturalWidth > 0)")
    assert "Added to Barack" in page.inner_text("#message")
    assert [p.name for p in FaceStore(site.store).people()] == ["Barack"]
    page.click("#look")  # the same face again: now named in its box
    page.wait_for_selector("#boxes .box.known:has-text('Barack')")
    doc_screenshot(page, "faces.png", full_page=True)  # docs/ only with PANCAKE_DOC_SHOTS=1
    # Remove asks first: dismissed, nothing happens; accepted, the person is gone.
    page.once("dialog", lambda d: d.dismiss())
    page.click("#people .person .remove")
    assert [p.name for p in FaceStore(site.store).people()] == ["Barack"]
    page.once("dialog", lambda d: d.accept())
    page.click("#people .person .remove")
    page.wait_for_selector("#none:not([hidden])")
    assert FaceStore(site.store).people() == []
    assert errors == [], errors
    context.close()
