"""pancake and postproc on one catalog, both real: every recording pancake catalogues is
converted and uploaded exactly once, and a restart of both does neither again."""

from __future__ import annotations

import time
from pathlib import Path

from raspberry_pancake.shared.catalog import Catalog
from tests.conftest import Pancake, run_pancake
from tests.postproc_servers import FtpServer, decoded_frames, wait_for
from tests.test_postproc_catalog import REMOTE, Run, _label

BASE = ["--source", "testsrc", "--fps", "12", "--resolution", "160", "120"]



def remote_files(ftpd: FtpServer) -> list[str]:
    return sorted(p.name for p in (ftpd.root / REMOTE).rglob("*.mp4"))


def test_pancake_and_postproc_share_one_catalog(tmp_path: Path, ftpd: FtpServer,
                                                pancakes: list[Pancake]) -> None:
    h264, mp4, db = tmp_path / "h264", tmp_path / "mp4", tmp_path / "pancake.db"
    h264.mkdir()
    mp4.mkdir()
    for n in range(2):  # the second run: both restarted on the same files and catalog
        post = Run(tmp_path, h264, mp4, db, n, ftpd)
        try:
            p = run_pancake(pancakes, [*BASE, "--record-continuous", str(h264), "--record-split",
                                       "2", "--emit", post.name, "--catalog", str(db)], tmp_path)
            p.wait_for("first frame captured", 30)
            time.sleep(5.0)
            assert p.stop()[0] == 0, p.log()
            with Catalog.open(db) as c:
                recs = c.recordings("cam", 0, 2e9)
            assert recs and all(r.closed for r in recs), recs
            wanted = {Path(r.path).stem + ".mp4" for r in recs if r.frames}
            wait_for(lambda w=wanted: set(remote_files(ftpd)) >= w, 30)  # type: ignore[misc]
        finally:
            assert post.proc.terminate() == 0, post.log()
        with Catalog.open(db) as c:
            recs = c.recordings("cam", 0, 2e9)
            for r in recs:
                if not r.frames:
                    continue
                conv = c.conversion(r.id)
                assert conv is not None, r
                assert conv.frames == r.frames, (r, conv)
                if Path(conv.mp4).exists():
                    assert decoded_frames(Path(conv.mp4)) == r.frames, (r, conv)
                assert c.is_uploaded(r.id, _label(ftpd)), r
        # Retention stricter on mp4s than on h264s (the README's `h264 8 mp4 4`): the mp4s go,
        # the h264s stay. Before the catalog, the next start converted and sent them all again.
        for f in mp4.glob("*.mp4"):
            f.unlink()
    # Each file converted once and sent once over both runs: the second run's postproc found
    # the first run's recordings done in the catalog, although their mp4s were gone.
    texts = [(tmp_path / f"postproc-{n}.log").read_text() for n in range(2)]
    names = remote_files(ftpd)
    assert len(names) == len(set(names))
    assert names
    for name in names:
        assert sum(t.count(f"/{name[:-4]}.h264 -> ") for t in texts) == 1, name  # converted once
        assert sum(t.count(f": uploaded {name} ") for t in texts) == 1, name  # sent once
    assert "database is locked" not in "".join(texts)
