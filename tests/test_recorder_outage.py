"""A network camera that goes away and comes back: pancake reopens it with backoff, says so
once, and recording resumes in a new segment that decodes alone."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

from conftest import Pancake, free_port, run_pancake
from recordings import decode
from streams import StreamServer

FPS = 12


def health(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/health")
        state: str = json.loads(conn.getresponse().read())["cameras"]["cam"]["state"]
        return state
    finally:
        conn.close()


def test_camera_outage_resumes_in_new_segment(tmp_path: Path, pancakes: list[Pancake]) -> None:
    port = free_port()
    server = StreamServer(port, FPS)
    try:
        p = run_pancake(pancakes, ["--source", f"http://127.0.0.1:{port}/live.ts", "--fps",
                                   str(FPS), "--resolution", "320", "240",
                                   "--record-continuous", str(tmp_path)], tmp_path)
        p.wait_for("first frame captured", timeout=30)  # startup is slow on a loaded machine
        time.sleep(5)
        before = health(p.port)
        server.stop()  # the camera reboots
        # The source reports its failure and is reopened: "error" (until 5 s without frames
        # make it "offline"), as DESIGN.md "Health" says.
        seen = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen.append(health(p.port))
            time.sleep(0.1)
        server = StreamServer(port, FPS)
        p.wait_for("is back after", timeout=30)
        time.sleep(4)
        after = health(p.port)
        rc, _ = p.stop()
    finally:
        server.stop()
    log = p.log()
    assert rc == 0, log
    assert log.count("reopening with backoff") == 1, log  # one line for the whole outage
    assert (before, after) == ("live", "live") and "error" in seen, (before, seen, after)
    segs = sorted(tmp_path.glob("*.h264"))
    assert len(segs) >= 2, log
    recs = [decode(s, 0) for s in segs]
    assert all(r.first_is_key and r.frames == len(r.pts_ms) for r in recs)
    assert recs[0].frames >= 3 * FPS and recs[-1].frames >= 2 * FPS
