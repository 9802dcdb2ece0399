"""pancake's command line as the real daemon reads it: customize.py run once, camera passwords hidden."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Pancake, free_port, run_pancake
from streams import StreamHandler, StreamServer
from web_helpers import get_json


def test_customize_py_is_executed_once(tmp_path: Path, pancakes: list[Pancake]) -> None:
    """Its side effects (a GPIO pin opened, a model loaded) must not happen twice."""
    runs = tmp_path / "runs.txt"
    custom = tmp_path / "customize.py"
    custom.write_text(f"with open({str(runs)!r}, 'a') as f:\n    f.write('loaded\\n')\n\n"
                      "def detect():\n    return False\n")
    p = run_pancake(pancakes, ["--source", "testsrc", "--detect", "no-image",
                               "--customize", str(custom)], tmp_path)
    p.wait_for("first frame captured")
    rc, _ = p.stop()
    assert rc == 0, p.log()
    assert runs.read_text().splitlines() == ["loaded"]


def test_log_file_in_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--source", "testsrc",
                           "--port", str(free_port()), "--bind", "127.0.0.1",
                           "--log", str(tmp_path / "no/such/dir/x.log")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancake.py: error: --log: "), done.stderr
    assert "no/such/dir/x.log" in lines[0]


# --- the camera URL's password: never in the process listing, the log or /status ---

USER, PASSWORD = "admin", "p@ss:w0rd"  # '@' and ':' inside the password on purpose
FRAGMENTS = ("p@ss", "ss:w0rd", "w0rd")  # no part of it may show, nor its tail after the '@'


class AuthHandler(StreamHandler):
    """The loopback camera, behind HTTP Basic authentication: a frame reaching pancake proves
    that the password it read from a file or the environment reached FFmpeg intact."""

    def do_GET(self) -> None:
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != want:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.authorized += 1  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def camera() -> Iterator[StreamServer]:
    server = StreamServer(free_port(), fps=10)
    server.authorized = 0  # type: ignore[attr-defined]
    server.RequestHandlerClass = AuthHandler
    yield server
    server.stop()


def camera_url(server: StreamServer) -> tuple[str, str]:
    """The URL with its credentials, and as pancake may show it."""
    port = server.server_address[1]
    return (f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/live.ts",
            f"url:http://***@127.0.0.1:{port}/live.ts")


def assert_no_password(text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, text


def run_and_check(pancakes: list[Pancake], tmp_path: Path, camera: StreamServer,
                  source: str, env: dict[str, str] | None = None) -> str:
    """pancake on `source` until it shows a frame; its command line, /status and log hold no
    password. Returns its log."""
    _, shown = camera_url(camera)
    p = run_pancake(pancakes, ["--source", source], tmp_path, env)
    p.wait_for("first frame captured", timeout=30)
    cmdline = Path(f"/proc/{p.proc.pid}/cmdline").read_bytes().decode()
    status = get_json(p.port, "/status")
    rc, _ = p.stop()
    text = p.log()
    assert rc == 0, text
    assert camera.authorized >= 1  # type: ignore[attr-defined]
    assert_no_password(cmdline)
    assert status["source"] == shown
    assert shown in text  # the source is named, redacted, in the start line
    assert_no_password(text)
    return text


def test_source_from_a_file_keeps_the_password_out_of_sight(
        tmp_path: Path, pancakes: list[Pancake], camera: StreamServer) -> None:
    url, _ = camera_url(camera)
    secret = tmp_path / "camera-url"
    secret.write_text(url + "\n")
    secret.chmod(0o600)
    text = run_and_check(pancakes, tmp_path, camera, f"@{secret}")
    assert f"source read from file {secret}" in text
    assert "`ps` shows" not in text


def test_source_from_the_environment_keeps_the_password_out_of_sight(
        tmp_path: Path, pancakes: list[Pancake], camera: StreamServer) -> None:
    url, _ = camera_url(camera)
    text = run_and_check(pancakes, tmp_path, camera, "env:PANCAKE_TEST_SOURCE",
                            {"PANCAKE_TEST_SOURCE": url})
    assert "source read from environment PANCAKE_TEST_SOURCE" in text
    assert "`ps` shows" not in text


def test_literal_url_still_works_and_warns_once_without_the_password(
        tmp_path: Path, pancakes: list[Pancake], camera: StreamServer) -> None:
    url, shown = camera_url(camera)
    p = run_pancake(pancakes, ["--source", url], tmp_path)
    p.wait_for("first frame captured", timeout=30)
    status = get_json(p.port, "/status")
    rc, _ = p.stop()
    text = p.log()
    assert rc == 0, text
    assert status["source"] == shown
    assert text.count("`ps` shows") == 1, text
    assert_no_password(text)


def pancake_cli(*args: str, env: dict[str, str | None] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """pancake.py run to its exit; `env` adds variables, or removes those given as None."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "pancake.py"), "--port", str(free_port()),
                           "--bind", "127.0.0.1", *args], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in environ.items() if v is not None})


def test_unreachable_camera_error_hides_the_whole_password(tmp_path: Path) -> None:
    """FFmpeg's error quotes the URL; a password with '@' in it once showed its tail."""
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/live.ts"  # nobody listens there
    secret = tmp_path / "camera-url"
    secret.write_text(url)
    for source in (url, f"@{secret}"):
        done = pancake_cli("--source", source)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pancake.py: error: source url:http://***@")
        assert_no_password(done.stdout + done.stderr)


@pytest.mark.parametrize(("source", "env", "says"), [
    ("@/nonexistent/camera-url", None, "--source: cannot read secret file '/nonexistent/camera-url'"),
    ("env:PANCAKE_TEST_UNSET", {"PANCAKE_TEST_UNSET": None},
     "--source: environment variable PANCAKE_TEST_UNSET is not set"),
    ("env:PANCAKE_TEST_EMPTY", {"PANCAKE_TEST_EMPTY": ""}, "is not set or empty"),
    ("", None, "--source: empty"),
])
def test_unreadable_source_is_one_line_and_exit_2(source: str, env: dict[str, str | None] | None,
                                                  says: str) -> None:
    done = pancake_cli("--source", source, env=env)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pancake.py: error: "), done.stderr
    assert says in lines[0], lines[0]


def test_an_empty_secret_file_names_the_file_not_a_value(tmp_path: Path) -> None:
    secret = tmp_path / "camera-url"
    secret.write_text("\n")
    done = pancake_cli("--source", f"@{secret}")
    assert done.returncode == 2
    assert done.stderr.strip() == f"pancake.py: error: --source: secret file {str(secret)!r} is empty"
