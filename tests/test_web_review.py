"""The review pages against the real pancake.py: events, a day's recordings, media by id, in Chromium."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
from av.video.frame import PictureType
from conftest import Pancake, doc_screenshot, schedule_customize, wait_page
from web_helpers import HOST, ROOT, make_hash_file, start_pancake

from raspberry_pancake.recorder.web import auth
from raspberry_pancake.shared.catalog import Catalog
from raspberry_pancake.shared.remux import SIDECAR_HEADER

ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "pancakes for breakfast"



def raw(port: int, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=20)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()



def test_events_and_recordings_are_reviewed_played_kept_and_deleted(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    seg_dir, clip_dir, db = tmp_path / "h264", tmp_path / "clips", tmp_path / "cat.db"
    seg_dir.mkdir()
    clip_dir.mkdir()
    hash_file = make_hash_file(tmp_path, auth.hash_password(PASSWORD.encode()))
    t0 = time.time() + 2.0
    # Two detections far enough apart for a clip each; 4-second segments around them.
    custom = schedule_customize(tmp_path / "customize.py", [(1.0, 2.5), (11.0, 12.0)], t0)
    daemon = start_pancake(pancakes, [
        "--login", str(hash_file), "--resolution", "320", "240", "--fps", "10",
        "--record-continuous", str(seg_dir), "--record-split", "4",
        "--record-detection", "edge", str(clip_dir), "--detect", "no-image",
        "--detect-interval", "0.2", "--customize", str(custom), "--catalog", str(db)], tmp_path)
    port = daemon.port
    base = f"http://{HOST}:{port}"

    # Nothing without the session: pages go to the login, data and media are refused.
    status, headers, _ = raw(port, "/events")
    assert status == 302 and headers["location"].startswith("/login"), (status, headers)
    for path in ("/api/events", "/api/events/1", "/api/recordings", "/api/log",
                 "/media/r1.mp4", "/media/e1.jpg"):
        assert raw(port, path)[0] == 401, path

    # Wait for both events' clips to be finished (each edge's pre/post roll) in the catalog.
    deadline = time.time() + 50
    while time.time() < deadline:
        with Catalog.open(db) as c:
            views = c.event_views()
            if len(views) == 2 and all(v.event.fall is not None and v.clip_path is not None
                                       and c.recording(v.event.clip or 0) is not None
                                       and c.recording(v.event.clip or 0).closed  # type: ignore[union-attr]
                                       for v in views):
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"two finished events not catalogued: {views}\n{daemon.log()}")

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(base + "/events")
    assert page.url.startswith(base + "/login"), page.url
    page.fill("#password", PASSWORD)
    page.click("#submit")
    page.wait_for_url(base + "/events")
    api = context.request

    # The list: newest first, with snapshots, labels and clips.
    body = api.get(base + "/api/events").json()
    events = body["events"]
    assert len(events) == 2 and body["next"] is None, body
    assert events[0]["rise"] > events[1]["rise"]
    for ev in events:
        assert ev["camera"] == "cam" and ev["labels"] and ev["video"], ev
        assert ev["duration"] is not None and ev["duration"] > 0
    newest, oldest = events

    # The snapshot and the clip, by id; a range request is answered with 206 and those bytes.
    snap = api.get(base + newest["snapshot"])
    assert snap.status == 200 and snap.headers["content-type"] == "image/jpeg"
    assert snap.body()[:2] == b"\xff\xd8"
    assert "private" in snap.headers["cache-control"]
    # The clip's first request may stream its remux as it is written (a clip this short is
    # usually remuxed before the answer starts); the next one is the cached file, the same
    # bytes, with its length and ranges.
    streamed = api.get(base + newest["video"])
    assert streamed.status == 200 and streamed.headers["content-type"] == "video/mp4"
    whole = api.get(base + newest["video"])
    assert whole.status == 200 and whole.headers["content-type"] == "video/mp4"
    data = whole.body()
    assert data == streamed.body()
    assert int(whole.headers["content-length"]) == len(data) and whole.headers[
        "accept-ranges"] == "bytes"
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(data)
    with av.open(str(mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 10  # the pre-roll and the event: playable
    part = api.get(base + newest["video"], headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.body() == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert api.get(base + newest["video"], headers={"Range": f"bytes={len(data) + 5}-"}).status == 416
    # Only ids: anything else is not found.
    for bad in ("/media/r999999.mp4", "/media/e999999.jpg", "/media/..%2Fcat.db",
                "/media/r1.h264", "/media/x.mp4", "/media/cut.mp4?camera=cam&from=1&to=0"):
        assert api.get(base + bad).status == 404, bad

    # Filters: a day with nothing, a word nobody said, a page of one; one event by id.
    assert api.get(base + "/api/events?day=2001-01-01").json()["events"] == []
    assert api.get(base + "/api/events?label=nobody").json()["events"] == []
    assert len(api.get(base + "/api/events?label=Detection").json()["events"]) == 2
    one = api.get(base + "/api/events?limit=1").json()
    assert [e["id"] for e in one["events"]] == [newest["id"]] and one["next"]
    rest = api.get(base + "/api/events?limit=1&before=" + one["next"]).json()
    assert [e["id"] for e in rest["events"]] == [oldest["id"]]
    assert api.get(base + f"/api/events/{oldest['id']}").json() == oldest
    assert api.get(base + "/api/events/999999").status == 404
    for bad in ("day=tomorrow", "limit=0", "before=x"):
        assert api.get(base + "/api/events?" + bad).status == 400, bad
    # A change without the page's XSRF token is refused.
    assert api.delete(base + f"/api/events/{oldest['id']}").status == 403

    # The page shows both cards; opening one plays its clip with the snapshot as the poster.
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 2
    page.screenshot(path=str(ARTIFACTS / "review-events-desktop.png"))
    doc_screenshot(page, "review-events.png")  # docs/ only when asked (PANCAKE_DOC_SHOTS=1)
    page.locator(".card").first.click()
    page.wait_for_selector("#player[open]")
    wait_page(page, lambda: page.evaluate(
        "document.getElementById('p-video').readyState >= 2 && "
        "document.getElementById('p-video').currentTime > 0.2"))
    assert page.get_attribute("#p-video", "poster") == newest["snapshot"]
    page.screenshot(path=str(ARTIFACTS / "review-player.png"))

    # Keep: the clip is protected in the catalog, and a kept clip is not deleted.
    page.click("#p-keep")
    wait_page(page, lambda: page.inner_text("#p-keep") == "Release")
    with Catalog.open(db) as c:
        rec = c.recording(newest["clip"])
        assert rec is not None and rec.kept
    page.on("dialog", lambda d: d.accept())  # the confirmation, then the refusal's alert
    page.click("#p-delete")
    page.wait_for_timeout(500)
    assert Path(rec.path).exists()
    page.keyboard.press("Escape")
    assert errors == ["Failed to load resource: the server responded with a status of 409 "
                      "(Conflict)"], errors
    errors.clear()

    # Delete the other one: files gone, catalog marked, the list shorter.
    cards = page.locator(".card")
    cards.nth(1).click()
    page.wait_for_selector("#player[open]")
    page.click("#p-delete")
    wait_page(page, lambda: page.locator(".card").count() == 1)
    with Catalog.open(db) as c:
        gone = c.recording(oldest["clip"])
        assert gone is not None and gone.deleted
        assert not gone.path.exists() and not gone.path.with_suffix(".pts").exists()
        lines = [ln.text for ln in c.log_lines(1000)]
        assert c.event(oldest["id"]) is None and len(c.event_views()) == 1
    assert f"event {oldest['id']} deleted from the page" in lines
    assert api.get(base + oldest["snapshot"]).status == 404

    # The log view: the recordings, detections and the deletion, newest first.
    page.click("#show-log")
    page.wait_for_selector("#lines li")
    text = page.inner_text("#lines")
    assert "deleted from the page" in text and "started (continuous)" in text, text

    # Phone size: the cards stack in one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("#show-events")
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "review-events-phone.png"))

    # The day: the continuous recordings on the timeline, events marked; a click plays from
    # that moment; the player goes on into the next segment by itself.
    day = api.get(base + "/api/recordings").json()
    recs = [r for r in day["recordings"] if r["kind"] == "continuous"]
    assert len(recs) >= 2, day
    assert all(day["start"] <= r["end"] and r["start"] < day["end"] for r in recs)
    assert len(day["events"]) == 1
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(base + "/recordings")
    page.wait_for_selector("#spans .span")
    first = min(recs, key=lambda r: r["start"])
    box = page.locator("#timeline").bounding_box()
    frac = (first["start"] + 1.0 - day["start"]) / (day["end"] - day["start"])
    page.mouse.click(box["x"] + frac * box["width"], box["y"] + box["height"] / 2)
    wait_page(page, lambda: page.evaluate("document.getElementById('video').currentTime > 0.3"))
    shown = page.inner_text("#file")
    assert shown.endswith(".h264"), shown
    # Seek to just before the end of that segment: playback crosses into the next file.
    page.evaluate("(() => { const v = document.getElementById('video'); "
                  "v.currentTime = Math.max(0, v.duration - 0.5); })()")
    wait_page(page, lambda: page.inner_text("#file") != shown, timeout=20)
    doc_screenshot(page, "review-recordings.png")

    # A range cut from consecutive segments: one mp4, remuxed, spanning the boundary.
    full = sorted((r for r in recs if not r["open"] and r["end"] - r["start"] > 3),
                  key=lambda r: r["start"])
    a, b = full[:2]
    assert b["start"] - a["end"] < 0.5, (a, b)  # consecutive
    cut = api.get(base + "/media/cut.mp4?" + "&".join(
        [f"camera={day['camera']}", f"from={a['end'] - 1.5:.3f}", f"to={b['start'] + 1.5:.3f}",
         "download=1"]))
    assert cut.status == 200, cut.status
    assert "attachment" in cut.headers["content-disposition"]
    out = tmp_path / "cut.mp4"
    out.write_bytes(cut.body())
    with av.open(str(out)) as c:
        frames = sum(1 for _ in c.decode(video=0))
    # 3 s at 10 fps, from the keyframe at or before the start (at most a second earlier).
    assert 28 <= frames <= 42, frames
    assert errors == [], errors
    context.close()

    # The kept clip survives retention that would delete every clip (the catalog says kept).
    subprocess.run([sys.executable, str(ROOT / "util" / "limit_files_by_number.py"),
                    str(clip_dir), "0", "--catalog", str(db)], check=True, cwd=tmp_path,
                   capture_output=True, timeout=60)
    assert Path(rec.path).exists() and Path(rec.path).with_suffix(".jpg").exists()
    rc, _ = daemon.stop()
    assert rc == 0 and "Traceback" not in daemon.log(), daemon.log()


def long_h264(path: Path, fps: int, repeats: int) -> int:
    """A long recording, fast: 10 s of lossless 320x240 (a keyframe a second, about 1 MB)
    written `repeats` times over (each copy starts at a keyframe and decodes on its own), and
    its sidecar. Returns the frame count."""
    one = path.with_suffix(".one")
    with av.open(str(one), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps), "bf": "0", "qp": "0"}
        with av.open(f"testsrc2=size=320x240:rate={fps}", format="lavfi") as src:
            for n, frame in enumerate(src.decode(video=0)):
                if n >= 10 * fps:
                    break
                frame.pict_type = PictureType.NONE
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = one.read_bytes()
    one.unlink()
    with path.open("wb") as f:
        for _ in range(repeats):
            f.write(data)
    frames = 10 * fps * repeats
    path.with_suffix(".pts").write_text(
        SIDECAR_HEADER + "\n" + "".join(f"{n * 1000 / fps:.3f}\n" for n in range(frames)))
    return frames


def test_a_long_remux_streams_from_its_first_fragment_and_the_cache_seeks(
        browser: Any, tmp_path: Path, pancakes: list[Pancake]) -> None:
    fps = 10
    rec, db = tmp_path / "h264", tmp_path / "cat.db"
    rec.mkdir()
    # 25 minutes, about 150 MB: its remux takes most of a second, where the first bytes need
    # a few milliseconds.
    frames = long_h264(rec / "20260101-1000.h264", fps, 150)
    os.link(rec / "20260101-1000.h264", rec / "20260101-1030.h264")
    os.link(rec / "20260101-1000.pts", rec / "20260101-1030.pts")
    with Catalog.open(db, owner=True) as c:
        rids = []
        for n, name in enumerate(("20260101-1000.h264", "20260101-1030.h264")):
            start = time.time() - 86400 + 1800 * n
            rid = c.recording_opened("cam", "continuous", rec / name, start)
            c.recording_closed(rid, start + frames / fps, frames)
            rids.append(rid)
    daemon = start_pancake(pancakes, [
        "--fps", str(fps), "--record-continuous", str(rec), "--catalog", str(db)],
        tmp_path, env={"TMPDIR": str(tmp_path)})
    port = daemon.port

    def cached(rid: int) -> list[Path]:
        return list(tmp_path.glob(f"pancake-review-*/r{rid}.mp4"))

    # The first request: answered while the remux runs (the cache has no file yet), chunked,
    # not rangeable; every frame of the recording decodes from what was streamed.
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.request("GET", f"/media/r{rids[0]}.mp4", headers={"Range": "bytes=0-"})
    r = conn.getresponse()
    first = r.read(64 * 1024)
    assert len(first) == 64 * 1024 and cached(rids[0]) == [], "the first bytes waited for the remux"
    headers = {k.lower(): v for k, v in r.getheaders()}
    assert r.status == 200 and headers["transfer-encoding"] == "chunked", (r.status, headers)
    assert "content-length" not in headers and headers["accept-ranges"] == "none"
    # Meanwhile a second player joins the same remux; a seek (a range past 0) and a HEAD wait
    # for the cache and are answered from it.
    joined = http.client.HTTPConnection(HOST, port, timeout=60)
    joined.request("GET", f"/media/r{rids[0]}.mp4")
    seek = http.client.HTTPConnection(HOST, port, timeout=60)
    seek.request("GET", f"/media/r{rids[0]}.mp4", headers={"Range": "bytes=1000-1999"})
    head = http.client.HTTPConnection(HOST, port, timeout=60)
    head.request("HEAD", f"/media/r{rids[0]}.mp4")
    streamed = tmp_path / "streamed.mp4"
    streamed.write_bytes(first + r.read())
    conn.close()
    other = joined.getresponse()
    assert other.status == 200 and other.getheader("Content-Length") is None
    assert other.read() == streamed.read_bytes()
    part = seek.getresponse()
    assert part.status == 206 and part.read() == streamed.read_bytes()[1000:2000]
    size = head.getresponse().getheader("Content-Length")
    assert size is not None and int(size) == streamed.stat().st_size
    for each in (joined, seek, head):
        each.close()
    with av.open(str(streamed)) as got:
        assert sum(1 for _ in got.decode(video=0)) == frames
    # Then the cache: the same bytes, with a length and byte ranges.
    assert len(cached(rids[0])) == 1
    status, headers, body = raw(port, f"/media/r{rids[0]}.mp4")
    assert status == 200 and int(headers["content-length"]) == len(body)
    assert body == streamed.read_bytes() and headers["accept-ranges"] == "bytes"
    status, headers, body = raw(port, f"/media/r{rids[0]}.mp4", {"Range": "bytes=1000-1999"})
    assert status == 206 and body == streamed.read_bytes()[1000:2000]

    # In Chromium: the other recording plays from the stream before its remux is done; once
    # cached, a fresh player seeks near the end of it (206 answers) and plays there.
    context = browser.new_context()
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda resp: statuses.append(resp.status)
            if "/media/" in resp.url else None)
    page.goto(f"http://{HOST}:{port}/events")
    page.evaluate("""(src) => { const v = document.createElement('video');
        v.id = 'probe'; v.muted = true; v.src = src; document.body.append(v);
        v.addEventListener('playing', () => { window.playingAt = Date.now(); }, {once: true});
        v.play(); }""", f"/media/r{rids[1]}.mp4")
    wait_page(page, lambda: page.evaluate("document.getElementById('probe').currentTime > 0.3"))
    deadline = time.monotonic() + 30
    while not cached(rids[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    done_at = cached(rids[1])[0].stat().st_mtime * 1000  # the remux's last write
    assert page.evaluate("window.playingAt") < done_at, "Chromium waited for the whole remux"
    assert statuses[0] == 200
    statuses.clear()
    page.evaluate("""(src) => { const v = document.getElementById('probe'); v.src = src;
        v.addEventListener('loadedmetadata', () => { v.currentTime = v.duration - 20; v.play(); },
        {once: true}); }""", f"/media/r{rids[1]}.mp4")
    duration = frames / fps
    wait_page(page, lambda: page.evaluate("document.getElementById('probe').currentTime")
          > duration - 19.5, timeout=30)
    assert abs(page.evaluate("document.getElementById('probe').duration") - duration) < 1
    assert 206 in statuses, statuses
    context.close()
    rc, _ = daemon.stop()
    assert rc == 0 and "Traceback" not in daemon.log(), daemon.log()
