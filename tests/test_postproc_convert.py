"""The converter: remux with true timing, moov first, damaged and empty inputs, catch-up list."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import raspberry_pancake.postproc.convert as convert_module
from raspberry_pancake.postproc.config import parse
from raspberry_pancake.postproc.convert import (
    Converter,
    ConvertSettings,
    Job,
    convert,
    pending,
    remove_stale_temporaries,
)
from raspberry_pancake.postproc.ledger import UNKNOWN_SETTLED
from raspberry_pancake.shared.remux import EmptyRecording, read_sidecar, remux
from tests.postproc_servers import (
    decoded_frames,
    frame_digests,
    h264_bytes,
    make_recording,
    mp4_packets,
    open_catalog,
    top_level_boxes,
    wait_for,
    write_sidecar,
)


def test_sidecar_sets_true_timing_and_moov_comes_first(tmp_path: Path) -> None:
    # Irregular capture times, as when the camera dropped frames.
    times = [0.0, 83.412, 166.8, 500.0, 583.333, 1400.25] + [1400.25 + 83.3 * i
                                                             for i in range(1, 19)]
    h264 = make_recording(tmp_path / "20240102-101530.h264", frames=24, times_ms=times)
    out = tmp_path / "out"
    out.mkdir()
    mp4 = convert(ConvertSettings(out, fps=12.0), Job(h264))
    assert mp4 == out / "20240102-101530.mp4"
    packets = mp4_packets(mp4)
    assert len(packets) == 24
    # The 90 kHz clock rounds to 11 µs; the sidecar has 1 µs steps.
    assert [t * 1000 for t, _, _ in packets] == pytest.approx(
        [round(t, 3) for t in times], abs=0.012)
    assert packets[0][1], "the first packet is the IDR"
    boxes = top_level_boxes(mp4)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert decoded_frames(mp4) == 24
    assert [p.name for p in out.iterdir()] == ["20240102-101530.mp4"], "no temporary left"


def test_no_sidecar_uses_fps_and_never_reencodes(tmp_path: Path) -> None:
    h264 = make_recording(tmp_path / "20240102-1015.h264", frames=30)
    out = tmp_path / "out"
    out.mkdir()
    mp4 = convert(ConvertSettings(out, fps=10.0), Job(h264))
    packets = mp4_packets(mp4)
    assert [round(t, 3) for t, _, _ in packets] == [round(i / 10, 3) for i in range(30)]
    # Remuxed, not re-encoded: every decoded picture is bit-identical to the raw stream's.
    assert frame_digests(mp4) == frame_digests(h264)


def test_event_sidecar_field_wins_over_the_file_beside(tmp_path: Path) -> None:
    h264 = make_recording(tmp_path / "a.h264", frames=12, times_ms=[i * 100.0 for i in range(12)])
    other = write_sidecar(tmp_path / "elsewhere.pts", [i * 250.0 for i in range(12)])
    out = tmp_path / "out"
    out.mkdir()
    mp4 = convert(ConvertSettings(out, fps=12.0), Job(h264, pts=other))
    assert mp4_packets(mp4)[-1][0] == pytest.approx(2.75, abs=0.001)


def test_short_sidecar_continues_at_fps(tmp_path: Path) -> None:
    h264 = make_recording(tmp_path / "a.h264", frames=12, times_ms=[0.0, 500.0, 1000.0])
    out = tmp_path / "out"
    out.mkdir()
    times = [t for t, _, _ in mp4_packets(convert(ConvertSettings(out, fps=4.0), Job(h264)))]
    assert times[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert times[3:5] == pytest.approx([1.25, 1.5])
    assert len(times) == 12


def test_read_sidecar_stops_at_garbage(tmp_path: Path) -> None:
    p = tmp_path / "x.pts"
    p.write_text("# timecode format v2\n0.000\n40.000\n\n80.5\nnot a number\n120\n")
    assert read_sidecar(p) == pytest.approx([0.0, 0.04, 0.0805])
    p.write_text("0.000\n40.000\n")
    assert read_sidecar(p) == []
    p.write_text("# timecode format v2\n0.000\n50.000\n40.000\n")
    assert read_sidecar(p) == pytest.approx([0.0, 0.05])


def test_truncated_file_converts_what_it_holds(tmp_path: Path) -> None:
    data = h264_bytes(36, keyint=12)
    h264 = tmp_path / "cut.h264"
    h264.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    out.mkdir()
    mp4 = convert(ConvertSettings(out, fps=12.0), Job(h264))
    n = decoded_frames(mp4)
    assert 12 <= n < 36


def test_damaged_start_skips_to_first_keyframe(tmp_path: Path) -> None:
    data = h264_bytes(36, keyint=12)
    h264 = tmp_path / "damaged.h264"
    # Lose the first 30 % (SPS/PPS, the first IDR and a few frames): what follows the next
    # keyframe still decodes, given parameter sets… which this stream repeats at each IDR.
    h264.write_bytes(b"\x00\x00\x01\x09\xff" * 7 + data[len(data) * 3 // 10:])
    out = tmp_path / "out"
    out.mkdir()
    mp4 = convert(ConvertSettings(out, fps=12.0), Job(h264))
    packets = mp4_packets(mp4)
    assert packets and packets[0][1], "starts on a keyframe"
    assert 0 < decoded_frames(mp4) < 36


def test_empty_and_garbage_files_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    empty = tmp_path / "empty.h264"
    empty.write_bytes(b"")
    with pytest.raises(EmptyRecording):
        convert(ConvertSettings(out, fps=12.0), Job(empty))
    junk = tmp_path / "junk.h264"
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(EmptyRecording):
        remux(junk, out / "junk.mp4", 12.0, None)
    with pytest.raises(EmptyRecording):
        convert(ConvertSettings(out, fps=12.0), Job(junk))
    assert list(out.iterdir()) == [] or [p.name for p in out.iterdir()] == ["junk.mp4"]
    assert not (out / "empty.mp4").exists()


def test_catch_up_list_and_stale_temporaries(tmp_path: Path) -> None:
    h = tmp_path / "h264"
    out = tmp_path / "mp4"
    h.mkdir()
    out.mkdir()
    catalog = open_catalog(tmp_path / "catalog.db")
    old = time.time() - 120

    def recording(name: str, closed: bool = True) -> int:
        (h / name).write_bytes(b"x")
        rid = catalog.recording_opened("cam", "continuous", h / name, old)
        if closed:
            catalog.recording_closed(rid, old + 1, 12)
        return rid

    done = recording("20240101-0000.h264")
    catalog.converted(done, out / "20240101-0000.mp4", 12, 1.0)  # its mp4 since deleted
    recording("20240101-0015.h264")
    recording("20240101-001507.h264", closed=False)  # pancake still writes it
    for name in ("20240101-0030.h264", "20240101-0045.h264"):  # never catalogued
        (h / name).write_bytes(b"x")
    os.utime(h / "20240101-0030.h264", (old, old))
    (h / "notes.txt").write_text("not a recording")
    (h / "link.h264").symlink_to(tmp_path / "elsewhere.h264")
    (out / ".20240101-0015.tmp.mp4").write_bytes(b"half")
    jobs = pending(catalog, [h])
    assert [j.h264.name for j in jobs] == ["20240101-0015.h264", "20240101-0030.h264"]
    assert all(j.catch_up for j in jobs)
    assert len(pending(catalog, [h], settled=0)) == 3, "the unknown file just written too"
    remove_stale_temporaries(out)
    assert list(out.iterdir()) == []


def test_converter_thread_takes_live_events_before_catch_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    backlog = [make_recording(tmp_path / f"old{i}.h264", frames=6) for i in range(3)]
    live = make_recording(tmp_path / "live.h264", frames=6)
    done: list[str] = []
    stop = threading.Event()
    conv = Converter(ConvertSettings(out, fps=12.0), open_catalog(tmp_path / "catalog.db"), stop,
                     lambda job, rid, mp4: done.append(mp4.name))
    conv.catch_up([Job(p, catch_up=True) for p in backlog])
    conv.submit(Job(live, clip=True))
    conv.start()
    wait_for(lambda: len(done) == 4, 20)
    stop.set()
    assert conv.join(5)
    assert done[0] == "live.mp4"
    assert sorted(done[1:]) == ["old0.mp4", "old1.mp4", "old2.mp4"]


def test_full_inbox_drops_and_says_which_file(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    conv = Converter(ConvertSettings(tmp_path, fps=12.0), open_catalog(tmp_path / "catalog.db"),
                     stop, lambda j, r, m: None, inbox_size=2)
    assert conv.submit(Job(tmp_path / "a.h264"))
    assert conv.submit(Job(tmp_path / "b.h264"))
    assert not conv.submit(Job(tmp_path / "c.h264"))
    assert "c.h264" in caplog.text


def test_mp4box_converter_runs_the_originals_command_line(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """MP4Box is not packaged in Debian 12: a stand-in on PATH takes its command line, records
    it and writes the mp4, so that what is checked here is postproc's side of the call."""
    import json
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.json"
    stand_in = bin_dir / "MP4Box"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from pathlib import Path\n"
        "from raspberry_pancake.shared.remux import remux\n"
        "a = sys.argv[1:]\n"
        f"Path({str(calls)!r}).write_text(json.dumps(a))\n"
        "assert a[0] == '-quiet' and a[1] == '-fps' and a[3] == '-cat' and a[5] == '-new'\n"
        "remux(Path(a[4]), Path(a[6]), float(a[2]), None)\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "out"
    out.mkdir()
    cfg = parse(["ppp", "--convert", str(out), "15", "--converter", "mp4box"])
    assert cfg.mp4box == str(stand_in)
    h264 = make_recording(tmp_path / "20240102-1015.h264", frames=12)
    mp4 = convert(ConvertSettings(cfg.mp4_dir, cfg.fps, cfg.mp4box), Job(h264))
    args = json.loads(calls.read_text())
    assert args[:5] == ["-quiet", "-fps", "15", "-cat", str(h264)]
    assert args[5] == "-new" and Path(args[6]).parent == out and args[6].endswith(".mp4")
    assert Path(args[6]).name != mp4.name, "written under a temporary name, then renamed"
    assert [p.name for p in out.iterdir()] == ["20240102-1015.mp4"]
    assert decoded_frames(mp4) == 12


def test_dropped_events_are_converted_by_a_rescan_while_running(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    recs = [make_recording(tmp_path / f"2020062{i}-1715.h264", frames=6) for i in range(5)]
    done: list[str] = []
    stop = threading.Event()
    catalog = open_catalog(tmp_path / "catalog.db")
    conv = Converter(ConvertSettings(out, fps=12.0), catalog, stop,
                     lambda job, rid, mp4: done.append(mp4.name),
                     inbox_size=1, rescan=lambda: pending(catalog, [tmp_path], settled=0))
    accepted = [conv.submit(Job(p)) for p in recs]
    assert accepted == [True, False, False, False, False]  # four dropped from the full inbox
    conv.start()
    wait_for(lambda: len(done) == 5, 20)  # no restart needed
    stop.set()
    assert conv.join(5)
    assert sorted(done) == sorted(p.with_suffix(".mp4").name for p in recs)


def test_rescan_leaves_files_still_being_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old = make_recording(tmp_path / "20200623-1700.h264", frames=6)
    os.utime(old, (time.time() - 120, time.time() - 120))
    make_recording(tmp_path / "20200623-1715.h264", frames=6)  # just written
    catalog = open_catalog(tmp_path / "catalog.db")
    assert [j.h264.name for j in pending(catalog, [tmp_path], settled=60)] == [old.name]
    assert len(pending(catalog, [tmp_path], settled=0)) == 2


# Another process (as the retention scripts are) makes settled recordings and deletes them
# again, as fast as it can: a directory listing keeps holding files that are gone by the time
# they are looked at.
_CHURN = """
import os, sys
names = [os.path.join(sys.argv[1], f"20240101-{i:06d}.h264") for i in range(200)]
while True:
    for n in names:
        open(n, "wb").close()
        os.utime(n, (1e9, 1e9))
    for n in names:
        os.unlink(n)
"""


@contextlib.contextmanager
def retention_racing(directory: Path) -> Iterator[None]:
    churn = subprocess.Popen([sys.executable, "-c", _CHURN, str(directory)])
    try:
        wait_for(lambda: any(directory.iterdir()), 10)
        yield
    finally:
        churn.kill()
        churn.wait(5)


@pytest.mark.parametrize("settled", [0.0, UNKNOWN_SETTLED], ids=["start", "rescan"])
def test_pending_while_retention_deletes_files(tmp_path: Path, settled: float) -> None:
    h, out = tmp_path / "h264", tmp_path / "mp4"
    h.mkdir()
    out.mkdir()
    seen = 0
    catalog = open_catalog(tmp_path / "catalog.db")
    with retention_racing(h):
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            seen += len(pending(catalog, [h], settled=settled))
    assert seen, "the listings held files"


def test_converter_survives_retention_racing_its_rescans(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "RESCAN_INTERVAL", 0.0)  # rescan whenever idle
    h, out = tmp_path / "h264", tmp_path / "mp4"
    h.mkdir()
    out.mkdir()
    rescans: list[int] = []
    catalog = open_catalog(tmp_path / "catalog.db")

    def rescan() -> list[Job]:
        jobs = pending(catalog, [h], settled=UNKNOWN_SETTLED)
        rescans.append(len(jobs))
        return jobs

    stop = threading.Event()
    conv = Converter(ConvertSettings(out, fps=12.0), catalog, stop, lambda job, rid, mp4: None,
                     rescan=rescan)
    with retention_racing(h):
        conv.start()
        try:
            wait_for(lambda: len(rescans) >= 200 or conv.join(0), 60)
            assert not conv.join(0), "the converter thread is still running"
        finally:
            stop.set()
    assert conv.join(5)
    assert any(rescans), "the rescans found files"


def test_camera_subfolders_convert_into_camera_mp4_folders(tmp_path: Path) -> None:
    """--h264-dir DIR covers DIR/NAME/ (pancake --config); each camera's mp4s go into
    MP4_DIR/NAME/, made as needed; the default camera's stay in MP4_DIR."""
    h, out = tmp_path / "h264", tmp_path / "mp4"
    (h / "front").mkdir(parents=True)
    (h / "Not A Camera").mkdir()
    out.mkdir()
    catalog = open_catalog(tmp_path / "catalog.db")
    # Never catalogued: the folder names the camera.
    make_recording(h / "front/20240101-0000.h264", frames=6, settled=True)
    make_recording(h / "20240101-0000.h264", frames=6, settled=True)
    make_recording(h / "Not A Camera/20240101-0000.h264", frames=6, settled=True)
    # Catalogued: the catalog names the camera, wherever the file is.
    back = make_recording(h / "20240101-0015.h264", frames=6)
    rid = catalog.recording_opened("back", "continuous", back, time.time() - 120)
    catalog.recording_closed(rid, time.time() - 119, 6)
    (out / "front").mkdir()
    (out / "front/.20240101-0000.tmp.mp4").write_bytes(b"half")
    remove_stale_temporaries(out)
    assert not (out / "front/.20240101-0000.tmp.mp4").exists()

    jobs = pending(catalog, [h])
    assert sorted((j.h264.relative_to(h).as_posix(), j.camera) for j in jobs) == [
        ("20240101-0000.h264", "cam"), ("20240101-0015.h264", "cam"),
        ("front/20240101-0000.h264", "front")]
    done: list[Path] = []
    stop = threading.Event()
    conv = Converter(ConvertSettings(out, fps=12.0), catalog, stop,
                     lambda job, r, mp4: done.append(mp4))
    conv.catch_up(jobs)
    conv.start()
    try:
        wait_for(lambda: len(done) == 3, 30)
    finally:
        stop.set()
        assert conv.join(5)
    assert sorted(p.relative_to(out).as_posix() for p in done) == [
        "20240101-0000.mp4", "back/20240101-0015.mp4", "front/20240101-0000.mp4"]
    assert all(decoded_frames(p) == 6 for p in done)
    rec = catalog.recording_at(h / "front/20240101-0000.h264")
    assert rec is not None and rec.camera == "front"
    lines = [(line.camera, line.kind) for line in catalog.log_lines(20)]
    assert ("front", "conversion") in lines and ("back", "conversion") in lines
