"""The converter opens only regular files: a FIFO named like a recording or a sidecar is skipped."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from raspberry_pancake.postproc.convert import Converter, ConvertSettings, Job, convert
from raspberry_pancake.shared.remux import ConversionError
from tests.postproc_servers import make_recording, mp4_packets, open_catalog, wait_for

# Bounds a user would notice: a conversion of a few frames takes well under a second.
PATIENCE = 30.0


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to; on the way out a writer opens and closes it, so that a reader
    stuck in open() (the fault tested) is let go instead of pinning the test process."""
    os.mkfifo(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `target` on a thread for at most PATIENCE s: a hang fails the test, not the run."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(target())
        except Exception as exc:  # handed to the test to look at
            box.append(exc)

    t = threading.Thread(target=run, name="test-convert", daemon=True)
    t.start()
    t.join(PATIENCE)
    return t, box


def test_converter_skips_a_fifo_named_like_a_recording(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    out = tmp_path / "out"
    out.mkdir()
    real = make_recording(tmp_path / "20240102-101600.h264", frames=6)
    done: list[str] = []
    stop = threading.Event()
    conv = Converter(ConvertSettings(out, fps=12.0), open_catalog(tmp_path / "catalog.db"),
                     stop, lambda job, rid, mp4: done.append(mp4.name))
    with fifo(tmp_path / "20240102-101530.h264") as pipe:
        conv.submit(Job(pipe))
        conv.submit(Job(real))
        conv.start()
        try:
            wait_for(lambda: done, PATIENCE)
        finally:
            stop.set()
            joined = conv.join(PATIENCE)
    assert joined
    assert done == ["20240102-101600.mp4"]
    assert "20240102-101530.h264: not converted: not a regular file (a FIFO)" in caplog.text


def test_a_fifo_sidecar_is_ignored_with_a_line(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    out = tmp_path / "out"
    out.mkdir()
    h264 = make_recording(tmp_path / "20240102-101530.h264", frames=6)
    with fifo(tmp_path / "20240102-101530.pts"), fifo(tmp_path / "elsewhere.pts") as other:
        for job in (Job(h264), Job(h264, pts=other)):
            (out / "20240102-101530.mp4").unlink(missing_ok=True)
            t, box = in_thread(partial(convert, ConvertSettings(out, fps=10.0), job))
            assert not t.is_alive(), "convert() hung on a FIFO sidecar"
            assert box == [out / "20240102-101530.mp4"]
    # Timed by fps, as without a sidecar.
    assert [round(t, 3) for t, _, _ in mp4_packets(out / "20240102-101530.mp4")] == \
        [round(i / 10, 3) for i in range(6)]
    assert "20240102-101530.pts: sidecar ignored, timing by fps: not a regular file (a FIFO)" \
        in caplog.text


def test_convert_refuses_a_fifo_recording(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with fifo(tmp_path / "20240102-101530.h264") as pipe:
        t, box = in_thread(lambda: convert(ConvertSettings(out, fps=10.0), Job(pipe)))
    assert not t.is_alive()
    assert len(box) == 1 and isinstance(box[0], ConversionError)
    assert str(box[0]) == "not a regular file (a FIFO)"
    assert list(out.iterdir()) == []
