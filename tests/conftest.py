"""Shared test helpers: free ports, the real pancake.py daemon, an abstract-socket listener."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In CI (`CI` set, as .ci/run does) a skip is a failure: a run that skipped the disk-full,
# wrong-uid, upload or browser tests for want of tmpfs, root, sshd or chromium is not green.
NO_SKIPS = bool(os.environ.get("CI"))


def _skip_is_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI allows no skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _skip_is_failure(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _skip_is_failure(outcome.get_result())  # type: ignore[attr-defined]


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str, why_not: str = "") -> Iterator[Path]:
    """A real small filesystem (tmpfs of `size`, e.g. "8m") mounted at `mnt` for the test;
    skips the test, saying why, where mounting is not allowed."""
    mnt.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
                    + (f"; {why_not}" if why_not else ""))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Listener:
    """A post-processor stand-in for pancake's events: a real abstract datagram socket that
    records every message with its arrival time (time.time())."""

    def __init__(self) -> None:
        self.name = f"pancake-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.raw.append(data)
            self.messages.append((time.time(), json.loads(data)))

    def events(self) -> list[dict[str, Any]]:
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    li = Listener()
    yield li
    li.close()


class Pancake:
    """The real pancake.py, run as a separate process with its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = cwd / f"pancake-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        # Its state (login revocations) in the test's directory, never the real home's.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(cwd / "state"),
                    **(env or {})}
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "pancake.py"), "--port", str(self.port),
             "--bind", "127.0.0.1", *args],
            cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send `sig`; return the exit code and how long the exit took."""
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc, time.monotonic() - t

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"pancake exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}")


# Screenshots: every run writes them under tests/artifacts/ (ignored by git) to look at; the
# README's pictures in docs/ are rewritten only when asked, so a test run leaves the tree clean.
ARTIFACTS_DIR = ROOT / "tests" / "artifacts"
DOCS_DIR = ROOT / "docs"
DOC_SHOTS_ENV = "PANCAKE_DOC_SHOTS"


def doc_screenshot(page: Any, name: str, **kw: Any) -> Path:
    """Screenshot `page` (a Playwright page; `kw` as page.screenshot's) into
    tests/artifacts/NAME, and into docs/NAME too when PANCAKE_DOC_SHOTS=1. One capture, so
    both files hold the same picture. Returns the artifact's path."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"{name!r}: a screenshot is named by a plain file name")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    artifact = ARTIFACTS_DIR / name
    data: bytes = page.screenshot(path=str(artifact), **kw)
    if os.environ.get(DOC_SHOTS_ENV) == "1":
        DOCS_DIR.mkdir(exist_ok=True)
        (DOCS_DIR / name).write_bytes(data)
    return artifact


def write_video(path: Path, frames: Iterable[Any], fps: int) -> Path:
    """An H.264 file (its container from the name: .mp4, .mkv …) of RGB frames (HxWx3 uint8
    arrays, all one size), one frame every 1/fps: what a camera's recording of them is."""
    from fractions import Fraction

    import av  # only the tests that make videos pay for it

    with av.open(str(path), "w") as out:
        stream: Any = None
        for i, rgb in enumerate(frames):
            if stream is None:
                stream = out.add_stream("libx264", rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = Fraction(1, fps)
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        if stream is None:
            raise ValueError("write_video: no frames")
        out.mux(stream.encode(None))
    return path


def wait_page(page: Any, condition: Callable[[], Any] | str, timeout: float = 15.0) -> None:
    """Until `condition()` is true, or the JS expression `condition` is in the page; polled
    from here every 0.1 s. Not page.wait_for_function: it evaluates its predicate with eval()
    when the first try is false, and the pages' CSP rightly forbids that (the test then
    fails only when the page is slow)."""
    check: Callable[[], Any] = ((lambda: page.evaluate(f"() => Boolean({condition})"))
                                if isinstance(condition, str) else condition)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not get there in {timeout:g} s: {condition}")
        page.wait_for_timeout(100)


# Debian's chromium, which Playwright drives (make test installs both); one per test file.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium for the page tests of one file (its pages, contexts are theirs)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make test installs it (apt)")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def pancakes() -> Iterator[list[Pancake]]:
    """Collects the daemons a test starts, and kills any still running at the end."""
    started: list[Pancake] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def run_pancake(pancakes: list[Pancake], args: list[str], cwd: Path,
                env: dict[str, str] | None = None) -> Pancake:
    p = Pancake(args, cwd, env)
    pancakes.append(p)
    return p


def schedule_customize(path: Path, windows: list[tuple[float, float]], t0: float,
                       image: bool = False, size: tuple[int, int] | None = None,
                       body: str = "") -> Path:
    """A customize.py whose detect() is True inside the given windows (seconds after t0).
    With `size`, detect(bytes) raises unless it gets exactly w*h*3 bytes of RGB."""
    arg = "rgb" if image else ""
    check = ""
    if size is not None:
        check = (f"    if len(rgb) != {size[0] * size[1] * 3}:\n"
                 f"        raise ValueError(f'got {{len(rgb)}} bytes')\n")
    path.write_text(
        "import time\n"
        f"T0 = {t0!r}\n"
        f"WINDOWS = {windows!r}\n"
        f"def detect({arg}):\n"
        f"{check}{body}"
        "    t = time.time() - T0\n"
        "    return any(a <= t < b for a, b in WINDOWS)\n")
    return path


@pytest.fixture
def ftpd(tmp_path: Path) -> Iterator[Any]:
    """A real FTP server (pyftpdlib) on loopback, user `cam`, password FTP_PASSWORD."""
    from tests.postproc_servers import FTP_PASSWORD, FtpServer

    server = FtpServer(tmp_path / "ftproot", password=FTP_PASSWORD)
    try:
        yield server
    finally:
        server.stop()

