"""The live page in Debian's chromium (Playwright), against the real pancake.py on loopback."""

from __future__ import annotations

from pathlib import Path

from conftest import Pancake, wait_page
from web_helpers import HOST, ROOT, Proxy, make_hash_file, start_pancake

from raspberry_pancake.recorder.web import auth

ARTIFACTS = ROOT / "tests" / "artifacts"
PASSWORD = "pancakes for breakfast"



def test_live_page_logs_in_shows_moving_frames_and_logs_out(
        browser: object, tmp_path: Path, pancakes: list[Pancake]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    hash_file = make_hash_file(tmp_path, auth.hash_password(PASSWORD.encode()))
    flags = ["--login", str(hash_file), "--resolution", "640", "480", "--fps", "15"]
    daemon = start_pancake(pancakes, flags, tmp_path)
    if True:  # one block, as the test read before
        base = f"http://{HOST}:{daemon.port}"
        context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        page = context.new_page()
        other = context.new_page()  # a second tab of the same session
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        page.goto(base + "/")
        assert page.url.startswith(base + "/login"), page.url
        page.fill("#password", "not the password")
        page.click("#submit")
        page.wait_for_selector("#error")
        assert "Wrong password" in page.inner_text("#error")
        page.screenshot(path=str(ARTIFACTS / "login.png"))
        errors.clear()  # the refused POST (401) is logged by chromium as a console error

        page.fill("#password", PASSWORD)
        page.click("#submit")
        page.wait_for_url(base + "/")
        # Frames arrive and are shown: the counter rises and the image changes.
        # (Polled from here: the page's CSP rightly forbids the eval wait_for_function needs.)
        wait_page(page, lambda: int(page.inner_text("#frames")) >= 3)
        first_seq = page.get_attribute("#frame", "data-seq")
        first_src = page.get_attribute("#frame", "src")
        wait_page(page, lambda: int(page.inner_text("#frames")) >= 8
              and page.get_attribute("#frame", "data-seq") != first_seq)
        assert page.get_attribute("#frame", "src") != first_src
        frames = int(page.inner_text("#frames"))
        assert frames >= 8
        age = int(page.inner_text("#age"))
        assert 0 <= age < 5000
        assert float(page.inner_text("#fps")) > 0
        assert page.inner_text("#source") == "testsrc"
        assert page.inner_text("#clock")[:2] == "20"
        assert page.inner_text("#viewers") == "1"
        # One camera: the page as before, plus its state badge with the frame's age.
        wait_page(page, lambda: page.inner_text("#badge").startswith("LIVE "))
        assert page.inner_text("#badge").endswith(" s")
        natural = page.evaluate(
            "[document.getElementById('frame').naturalWidth, document.getElementById('frame').naturalHeight]")
        assert natural == [640, 480]
        _fits(page, 1280, 800)
        page.screenshot(path=str(ARTIFACTS / "live-desktop.png"))

        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        _fits(page, 390, 844)
        page.screenshot(path=str(ARTIFACTS / "live-phone.png"))

        # Recording and detection indicators start off (no recording, no detect()).
        assert "on" not in (page.get_attribute("#rec", "class") or "").split()
        assert "on" not in (page.get_attribute("#detect", "class") or "").split()

        # A second tab of the same session watches too; logging out in the first closes its
        # websocket, and it goes to the login page by itself.
        other.goto(base + "/")
        wait_page(other, lambda: int(other.inner_text("#frames")) >= 2)
        page.click("#logout")
        # The logout's redirect, or the page's own move once its socket is closed: either.
        page.wait_for_url(base + "/login*")
        other.wait_for_url(base + "/login*", timeout=10_000)
        page.goto(base + "/")
        assert page.url.startswith(base + "/login"), "still logged in after logging out"
        assert errors == [], errors
        context.close()


def test_the_page_recovers_from_a_stall_by_itself(
        browser: object, tmp_path: Path, pancakes: list[Pancake]) -> None:
    """A lost ack: the page asks again on the same socket. A connection that hangs without
    closing: the page says so, then opens a new one. No reload, nobody clicks anything."""
    daemon = start_pancake(pancakes, ["--fps", "15"], tmp_path)
    with Proxy(daemon.port) as proxy:
        context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"http://{HOST}:{proxy.port}/")

        def frames() -> int:
            return int(page.inner_text("#frames"))

        def said() -> list[str]:
            return page.evaluate("window.connSaid")  # type: ignore[no-any-return]

        wait_page(page, lambda: frames() >= 5)
        # Everything the connection line says, in order (evaluate is not subject to the CSP).
        page.evaluate("""window.connSaid = [];
            new MutationObserver(() => window.connSaid.push(document.getElementById('conn')
              .textContent)).observe(document.getElementById('conn'),
              {childList: true, characterData: true, subtree: true});""")
        # 1. The next ack is lost: the server waits for it for ever; the page acks again.
        connections = proxy.accepted
        proxy.drop_next_from_client()
        wait_page(page, lambda: any("asking again" in t for t in said()), 15)
        stalled_at = frames()
        wait_page(page, lambda: frames() >= stalled_at + 5, 15)
        assert proxy.accepted == connections, "acking again should have been enough"
        # 2. The connection hangs (nothing closes it): the page gives up on it and reconnects.
        page.evaluate("window.connSaid = []")
        proxy.freeze()
        wait_page(page, lambda: any("no picture" in t for t in said()), 10)
        page.screenshot(path=str(ARTIFACTS / "live-stalled.png"))
        frozen_at = frames()
        wait_page(page, lambda: frames() >= frozen_at + 5, 30)
        assert any("reconnecting" in t for t in said()), said()
        assert proxy.accepted > connections, "the page did not open a new connection"
        assert page.inner_text("#conn") == "live"
        context.close()



def _fits(page: object, width: int, height: int) -> None:
    """The image is inside the window, not cropped and not scrolled off."""
    box = page.locator("#frame").bounding_box()  # type: ignore[attr-defined]
    assert box is not None
    assert box["x"] >= 0 and box["y"] >= 0
    assert box["x"] + box["width"] <= width + 1 and box["y"] + box["height"] <= height + 1
    scroll = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")  # type: ignore[attr-defined]
    assert scroll[0] <= width and scroll[1] <= height, f"the page scrolls: {scroll}"
    # object-fit: contain — the picture itself is drawn at 4:3 inside that box.
    assert min(box["width"], box["height"]) > 100
