"""pancake.py on testsrc → postproc.py: segments and clips become playable mp4s, uploaded, alerted."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from raspberry_pancake.postproc.upload.destination import date_dirs
from tests.postproc_servers import (
    PYTHON,
    ROOT,
    PostprocProcess,
    SshServer,
    bot_api,
    decoded_frames,
    free_port,
    sshd_available,
    top_level_boxes,
    wait_for,
    wait_socket,
)

TOKEN = "555:E2E-token"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd not installed")]


def _sidecar_frames(pts: Path) -> int:
    return sum(1 for line in pts.read_text().splitlines()[1:] if line.strip())


def test_pancake_to_postproc(tmp_path: Path) -> None:
    # One directory for segments and clips, as the original's examples: with a split that is
    # not whole minutes both are named YYYYMMDD-hhmmss, and pancake's -1, -2 suffixes keep
    # them apart only within one directory (their mp4s share --convert's directory).
    cont, mp4 = tmp_path / "h264", tmp_path / "mp4"
    for d in (cont, mp4):
        d.mkdir()
    flag = tmp_path / "detected"
    customize = tmp_path / "customize.py"
    customize.write_text("from pathlib import Path\n\n\n"
                         f"def detect() -> bool:\n    return Path({str(flag)!r}).exists()\n")
    name = f"pp-e2e-{uuid.uuid4().hex[:10]}"
    sshd = SshServer(tmp_path / "sshd")
    with bot_api() as api:
        post = PostprocProcess(
            [name, "--convert", str(mp4), "12", "--h264-dir", str(cont),
             "--upload-after-convert", "1",
             "--upload-scp", "root@127.0.0.1", str(sshd.port), str(sshd.remote / "cam"),
             "--known-hosts", str(sshd.known_hosts), "--ssh-key", str(sshd.client_key),
             "--notify-telegram", "env:PP_TOKEN", "42", "--telegram-api-url", api.base_url],
            tmp_path / "postproc.log", env={"PP_TOKEN": TOKEN})
        pancake_log = (tmp_path / "pancake.log").open("wb")
        pancake = subprocess.Popen(
            [PYTHON, str(ROOT / "pancake.py"), "--source", "testsrc", "--port", str(free_port()),
             "--bind", "127.0.0.1", "--fps", "12", "--record-continuous", str(cont), "--record-split", "3",
             "--record-detection", "edge", str(cont), "--detect", "no-image",
             "--customize", str(customize), "--emit", name],
            stdout=pancake_log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_socket(name)
            wait_for(lambda: list(cont.glob("*.h264")), 20)
            time.sleep(2.0)
            flag.touch()  # detect() turns True
            wait_for(api.edge_alerts, 15)
            time.sleep(3.0)
            flag.unlink()  # and False again
            wait_for(lambda: len(api.edge_alerts()) == 2, 15)
            time.sleep(2.0)
        finally:
            pancake.send_signal(signal.SIGTERM)
            pancake_code = pancake.wait(15)
            pancake_log.close()
        try:
            recordings = sorted(cont.glob("*.h264"))
            assert len(recordings) >= 4, recordings
            wait_for(lambda: all((mp4 / f"{r.stem}.mp4").exists() for r in recordings), 30)
            wait_for(lambda: api.calls_to("sendVideo"), 20)

            def uploaded(r: Path) -> Path:
                return sshd.remote / "cam" / Path(*date_dirs(r)) / f"{r.stem}.mp4"

            wait_for(lambda: all(uploaded(r).exists() for r in recordings), 30)
        finally:
            assert post.terminate() == 0
            sshd.stop()
    assert pancake_code == 0
    for r in recordings:
        out = mp4 / f"{r.stem}.mp4"
        boxes = top_level_boxes(out)
        assert boxes.index("moov") < boxes.index("mdat"), (out, boxes)
        frames = decoded_frames(out)
        assert frames > 0
        pts = r.with_suffix(".pts")
        if pts.exists():
            assert frames == _sidecar_frames(pts), out
        assert uploaded(r).read_bytes() == out.read_bytes()
    # pancake sends a snapshot with each edge: a photo with the text as its caption.
    texts = [c.fields.get("text") or c.fields["caption"] for c in api.edge_alerts()]
    assert texts[0].startswith("Detection at") and texts[1].startswith("Detection over")
    videos = [c.fields["caption"].split()[-1] for c in api.calls_to("sendVideo")]
    assert len(videos) == 1 and videos[0] in {f"{r.stem}.mp4" for r in recordings}
    clip = mp4 / videos[0]
    assert api.calls_to("sendVideo")[0].files["video"] == clip.stat().st_size
    # The clip spans the detection (about 3 s) plus pancake's margins either side.
    assert decoded_frames(clip) > 3 * 12
    assert TOKEN not in post.log_text()
