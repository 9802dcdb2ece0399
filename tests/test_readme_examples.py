"""README.md's promises checked: every flag of both parsers is documented, and its five examples
run as written (on testsrc, uploads pointed at SFTP and FTP servers on loopback)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from raspberry_pancake.postproc import config as postproc_config
from raspberry_pancake.postproc.upload.destination import date_dirs
from raspberry_pancake.recorder import config as recorder_config
from raspberry_pancake.recorder.web.auth import hash_password
from tests.postproc_servers import (
    PYTHON,
    ROOT,
    FtpServer,
    _keygen,
    decoded_frames,
    free_port,
    sshd_available,
    wait_for,
)

README = ROOT / "README.md"
# How long the test records: short segments so that several finish within seconds.
TEST_SPLIT = "2"
CONTINUOUS_NAME = re.compile(r"^\d{8}-\d{4}(-\d+)?$")
DETECTION_NAME = re.compile(r"^\d{8}-\d{6}(-\d+)?$")


# ---------------------------------------------------------------- reading the README

def section(text: str, title: str) -> str:
    """The body of the `## title…` section (up to the next `## ` heading)."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def table_flags(body: str) -> set[str]:
    """The flags or positionals named first in each row of the section's markdown table."""
    names = set()
    for line in body.splitlines():
        match = re.match(r"^\| `([-\w]+)", line)
        if match:
            names.add(match.group(1))
    return names


def parser_flags(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names.update(s for s in action.option_strings if s.startswith("--"))
        if not action.option_strings:
            names.add(action.dest)
    return names


def brace_expand(word: str) -> list[str]:
    """bash's `{a..b..step}` sequence, the one expansion the examples use; other words as is."""
    match = re.fullmatch(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}", word)
    if not match:
        # Any other expansion would need a real shell: refuse rather than run something else.
        assert not re.search(r"\{[^}]*(,|\.\.)[^}]*\}", word), f"unsupported expansion {word}"
        return [word]
    first, last = int(match[1]), int(match[2])
    step = abs(int(match[3] or 1)) * (1 if last >= first else -1)
    return [str(n) for n in range(first, last + step // abs(step), step)]


@dataclass
class Example:
    number: int
    pancake: list[str]
    postproc: list[str] | None


def commands(block: str) -> list[list[str]]:
    """The commands in a shell code block: continuation lines joined, words split and expanded."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        if line.strip():
            out.append([w for word in shlex.split(line) for w in brace_expand(word)])
    return out


def readme_examples(text: str) -> list[Example]:
    body = section(text, "Examples")
    examples = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", body, re.M | re.S):
        cmds = commands(block)
        if not cmds or cmds[0][:2] != ["python3", "pancake.py"]:
            continue
        assert len(cmds) <= 2, block
        post = None
        if len(cmds) == 2:
            assert cmds[1][:2] == ["python3", "postproc.py"], block
            post = cmds[1][2:]
        examples.append(Example(len(examples) + 1, cmds[0][2:], post))
    return examples


EXAMPLES = readme_examples(README.read_text())


# ---------------------------------------------------------------- the flags are all there

@pytest.mark.parametrize(("title", "parser"), [
    ("pancake.py", recorder_config.build_parser()),
    ("postproc.py", postproc_config.build_parser()),
])
def test_readme_documents_every_flag_and_only_real_ones(title: str, parser: object) -> None:
    documented = table_flags(section(README.read_text(), title))
    real = parser_flags(parser)
    assert real - documented == set(), f"flags of {title} missing from README.md"
    assert documented - real == set(), f"README.md documents flags {title} does not have"


def test_flag_check_notices_a_missing_flag() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port")
    parser.add_argument("--brand-new")
    documented = table_flags("| `--port 8000` | 8000 | the port |\n")
    assert parser_flags(parser) - documented == {"--brand-new"}


def test_readme_has_the_five_examples_with_placeholder_hosts() -> None:
    assert [e.number for e in EXAMPLES] == [1, 2, 3, 4, 5]
    assert [e.postproc is not None for e in EXAMPLES] == [False, True, True, True, True]
    # Every postproc is told where pancake records: catch-up at start, no path outside it.
    for e in EXAMPLES:
        if e.postproc is not None:
            assert flag_values(e.postproc, "--h264-dir") == [["h264"]], e.number
    text = README.read_text()
    # Never a LAN address in what people copy: hosts are placeholders.
    assert not re.search(r"\b(192\.168|10\.\d+|172\.(1[6-9]|2\d|3[01]))\.\d+\.\d+", text)
    hosts = {e.postproc[i + 1] for e in EXAMPLES if e.postproc
             for i, w in enumerate(e.postproc) if w in ("--upload-scp", "--upload-ftp")}
    assert all(h.rpartition("@")[2].endswith(".example") for h in hosts), hosts
    # The 2020 example's {5..59..15} is kept and means what bash makes of it.
    minutes = EXAMPLES[4].postproc
    assert minutes is not None
    i = minutes.index("--upload-minutes")
    assert minutes[i + 1:i + 5] == ["5", "20", "35", "50"]


def test_brace_expansion_matches_bash() -> None:
    for word in ("{5..59..15}", "{1..3}", "{3..1}", "{0..10..5}", "plain", "a.b"):
        bash = subprocess.run(["bash", "-c", f"echo {word}"], capture_output=True, text=True,
                              check=True).stdout.split()
        assert brace_expand(word) == bash, word


# ---------------------------------------------------------------- loopback servers

class LoopbackSftp:
    """OpenSSH's sshd on 127.0.0.1 whose SFTP sessions start in `home`, so that a relative
    remote_dir such as `bak/cam1` lands there, as it would in a user's home directory."""

    def __init__(self, base: Path, client_pub: Path, known_hosts: Path) -> None:
        base.mkdir(parents=True)
        self.base = base
        host_key = base / "host_ed25519"
        _keygen(host_key)
        self.home = base / "home"
        self.home.mkdir()
        self.port = free_port()
        kind, key = host_key.with_suffix(".pub").read_text().split()[:2]
        with known_hosts.open("a") as f:
            f.write(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        config = base / "sshd_config"
        config.write_text("\n".join([
            f"HostKey {host_key}",
            "ListenAddress 127.0.0.1",
            f"AuthorizedKeysFile {client_pub}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            f"Subsystem sftp internal-sftp -d {self.home}",
            f"PidFile {base / 'sshd.pid'}",
            "LogLevel ERROR",
        ]) + "\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self._log = (base / "sshd.log").open("wb")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config),
                                      "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10)

    def _listening(self) -> bool:
        import socket

        if self.proc.poll() is not None:
            raise AssertionError("sshd exited: " + (self.base / "sshd.log").read_text())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@dataclass
class Destinations:
    """One loopback server per distinct host the example names."""

    base: Path
    client_key: Path = field(init=False)
    known_hosts: Path = field(init=False)
    sftp: dict[str, LoopbackSftp] = field(default_factory=dict)
    ftp: dict[str, FtpServer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base.mkdir()
        self.client_key = self.base / "client_ed25519"
        _keygen(self.client_key)
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.touch()

    def sftp_for(self, host: str) -> LoopbackSftp:
        if host not in self.sftp:
            self.sftp[host] = LoopbackSftp(self.base / f"sftp-{len(self.sftp)}",
                                           self.client_key.with_suffix(".pub"), self.known_hosts)
        return self.sftp[host]

    def ftp_for(self, host: str) -> FtpServer:
        if host not in self.ftp:
            self.ftp[host] = FtpServer(self.base / f"ftp-{len(self.ftp)}")
        return self.ftp[host]

    def stop(self) -> None:
        for s in self.sftp.values():
            s.stop()
        for f in self.ftp.values():
            f.stop()


@dataclass
class Upload:
    kind: str
    host: str
    root: Path  # where remote_dir lands on the loopback server
    remote_dir: str


def rewrite_postproc(args: list[str], socket_name: str,
                     dests: Destinations) -> tuple[list[str], list[Upload]]:
    """The example's postproc command with its socket made unique and every destination moved
    to a loopback server (host keys and client key for SFTP, the server's login for FTP)."""
    out = [socket_name]
    uploads = []
    rest = args[1:]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--upload-scp":
            target, _port, remote_dir = rest[i + 1:i + 4]
            _user, _, host = target.rpartition("@")
            server = dests.sftp_for(host)
            out += [word, "root@127.0.0.1", str(server.port), remote_dir]
            uploads.append(Upload("sftp", host, server.home, remote_dir))
            i += 4
        elif word == "--upload-ftp":
            host, _port, _user, _password, remote_dir = rest[i + 1:i + 6]
            ftp = dests.ftp_for(host)
            out += [word, "127.0.0.1", str(ftp.port), ftp.user, ftp.password, remote_dir]
            uploads.append(Upload("ftp", host, ftp.root, remote_dir))
            i += 6
        else:
            out.append(word)
            i += 1
    if dests.sftp:
        out += ["--known-hosts", str(dests.known_hosts), "--ssh-key", str(dests.client_key)]
    return out, uploads


def rewrite_pancake(args: list[str], socket_name: str, split: str) -> list[str]:
    out = ["--source", "testsrc", "--port", str(free_port()), "--bind", "127.0.0.1"]
    i = 0
    while i < len(args):
        if args[i] == "--emit":
            out += ["--emit", socket_name]
            i += 2
        else:
            out.append(args[i])
            i += 1
    if "--record-continuous" in args or "all" in args:
        out += ["--record-split", split]
    return out


def flag_values(args: list[str], flag: str, n: int = 1) -> list[list[str]]:
    return [args[i + 1:i + 1 + n] for i, w in enumerate(args) if w == flag]


# ---------------------------------------------------------------- running an example

class Daemon:
    def __init__(self, script: str, args: list[str], cwd: Path) -> None:
        self.out = cwd / f"{script}.out"
        self._file = self.out.open("wb")
        self.proc = subprocess.Popen([PYTHON, str(ROOT / script), *args], cwd=cwd,
                                     stdout=self._file, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1",
                                          "XDG_STATE_HOME": str(cwd / "state")})

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def running(self) -> bool:
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.text()}"
        return True

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"no exit within {timeout} s of SIGTERM:\n{self.text()}") from None
        finally:
            self._file.close()


def customize_for(cwd: Path, pancake_args: list[str], windows: list[tuple[float, float]]) -> None:
    """The customize.py the example expects: True inside `windows` (seconds after pancake
    loads it). detect(rgb) insists on the size --detect-resize asks for."""
    kind = flag_values(pancake_args, "--detect")
    if not kind:
        return
    if kind[0][0] == "image":
        size = flag_values(pancake_args, "--detect-resize", 2) or \
            [flag_values(pancake_args, "--resolution", 2)[0] if "--resolution" in pancake_args
             else ["320", "240"]]
        w, h = (int(v) for v in size[0])
        head = (f"def detect(rgb: bytes) -> bool:\n"
                f"    if len(rgb) != {w * h * 3}:\n"
                f"        raise ValueError(f'detect got {{len(rgb)}} bytes, not {w}x{h} RGB')\n")
    else:
        head = "def detect() -> bool:\n"
    (cwd / "customize.py").write_text(
        "import time\n\n"
        "T0 = time.monotonic()\n"
        f"WINDOWS = {windows!r}\n\n\n"
        f"{head}"
        "    t = time.monotonic() - T0\n"
        "    return any(a <= t < b for a, b in WINDOWS)\n")


def minutes_during(start: float, end: float) -> set[int]:
    """Local minutes of the hour that began while the test ran (a trigger may have fired)."""
    first = dt.datetime.fromtimestamp(start).replace(second=0, microsecond=0)
    out = set()
    t = first + dt.timedelta(minutes=1)
    while t.timestamp() <= end + 1:
        out.add(t.minute)
        t += dt.timedelta(minutes=1)
    return out


def finished(path: Path) -> bool:
    return decoded_frames(path) > 0


def video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


@dataclass
class Plan:
    """What the test does while an example runs, beyond starting and stopping it."""

    split: str = TEST_SPLIT
    segments: int = 0  # wait until this many continuous files have been started
    windows: list[tuple[float, float]] = field(default_factory=list)
    run_for: float = 0.0  # seconds after pancake's live view is up


PLANS = {
    1: Plan(segments=3),
    2: Plan(segments=3),
    3: Plan(segments=3),
    # Edges 5 s apart: two separate clips, each 2 s either side of its edge.
    4: Plan(windows=[(2.0, 7.0)], run_for=9.5),
    # Continuous files split at whole minutes (named hhmm), the two detections' files named
    # hhmmss: two detection files + the continuous one finished at stop = the 3 conversions
    # that trigger the upload.
    5: Plan(split="60", windows=[(2.0, 3.0), (7.5, 8.5)], run_for=11.5),
}


@pytest.fixture
def dests(tmp_path: Path) -> Iterator[Destinations]:
    d = Destinations(tmp_path / "servers")
    yield d
    d.stop()


@pytest.mark.slow
@pytest.mark.skipif(not sshd_available(), reason="OpenSSH sshd not installed")
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{e.number}" for e in EXAMPLES])
def test_readme_example_runs(example: Example, tmp_path: Path, dests: Destinations) -> None:
    plan = PLANS[example.number]
    cwd = tmp_path / "pancake"
    for d in ("h264", "mp4", "log"):
        (cwd / d).mkdir(parents=True)
    name = f"readme-{example.number}-{uuid.uuid4().hex[:10]}"
    pancake_args = rewrite_pancake(example.pancake, name, plan.split)
    customize_for(cwd, pancake_args, plan.windows)
    password = b"example three"
    for (path,) in flag_values(pancake_args, "--login"):
        (cwd / path).write_bytes(hash_password(password) + b"\n")
    post = uploads = None
    if example.postproc is not None:
        post_args, uploads = rewrite_postproc(example.postproc, name, dests)
        post = Daemon("postproc.py", post_args, cwd)
    h264 = cwd / "h264"
    started = time.time()
    pancake = None
    try:
        if post is not None:
            wait_for(lambda: post.running() and f" @{name}\n" in Path("/proc/net/unix").read_text(),
                     20)
        pancake = Daemon("pancake.py", pancake_args, cwd)
        wait_for(lambda: pancake.running() and "recorder.web.app: live view on" in pancake.text(), 30)
        port = int(flag_values(pancake_args, "--port")[0][0])
        if "--login" in pancake_args:
            # The page wants the password: an anonymous visitor is sent to the login page.
            req = urllib.request.Request(f"http://127.0.0.1:{port}/")
            opener = urllib.request.build_opener(NoRedirect)
            with pytest.raises(urllib.error.HTTPError) as err:
                opener.open(req, timeout=10)
            assert err.value.code == 302 and "/login" in err.value.headers["Location"]
        if plan.segments:
            wait_for(lambda: pancake.running() and len(list(h264.glob("*.h264"))) >= plan.segments,
                     30)
        if plan.run_for:
            end = time.monotonic() + plan.run_for
            wait_for(lambda: pancake.running() and time.monotonic() > end, plan.run_for + 5)
        assert pancake.terminate() == 0, pancake.text()
        stopped = time.time()
        recordings = sorted(h264.glob("*.h264"))
        assert recordings, pancake.text()
        assert all(finished(r) for r in recordings)
        if post is None:
            assert not list((cwd / "mp4").iterdir())
        else:
            assert uploads is not None
            check_postproc(example, post, recordings, uploads, cwd, started, stopped)
    finally:
        if pancake is not None and pancake.proc.poll() is None:
            pancake.terminate()
        if post is not None and post.proc.poll() is None:
            post.terminate()
    check_recordings(example, pancake_args, recordings, cwd)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def check_recordings(example: Example, pancake_args: list[str], recordings: list[Path],
                     cwd: Path) -> None:
    names = [r.stem for r in recordings]
    continuous = [n for n in names if CONTINUOUS_NAME.match(n)]
    detection = [n for n in names if DETECTION_NAME.match(n)]
    if example.number in (1, 2, 3):
        # Test split of 2 s is not whole minutes, so names carry seconds; several finished.
        assert len(recordings) >= 3, names
    if example.number == 4:
        assert len(detection) == 2 and not continuous, names  # a clip per edge, nothing else
    if example.number == 5:
        assert continuous and len(detection) == 2, names
    size = flag_values(pancake_args, "--resolution", 2)
    want = tuple(int(v) for v in size[0]) if size else (320, 240)
    mp4s = sorted((cwd / "mp4").glob("*.mp4"))
    for path in [*recordings[:1], *mp4s[:1]]:
        assert video_size(path) == want, path


def check_postproc(example: Example, post: Daemon, recordings: list[Path], uploads: list[Upload],
                   cwd: Path, started: float, stopped: float) -> None:
    assert example.postproc is not None
    mp4_dir = cwd / flag_values(example.postproc, "--convert", 2)[0][0]
    wanted = [mp4_dir / f"{r.stem}.mp4" for r in recordings]
    wait_for(lambda: post.running() and all(m.exists() for m in wanted), 30)
    for m in wanted:
        assert decoded_frames(m) > 0, m
    after = flag_values(example.postproc, "--upload-after-convert")
    minutes = {int(m) for m in (flag_values(example.postproc, "--upload-minutes", 60) or [[]])[0]
               if m.isdigit()}

    def remote(u: Upload, mp4: Path) -> Path:
        return u.root / u.remote_dir / Path(*date_dirs(mp4)) / mp4.name

    if after:
        # Every N conversions, the N converted since the last upload go to every destination.
        n = int(after[0][0])
        due = len(wanted) - len(wanted) % n
        assert due, f"fewer than {n} conversions: nothing to upload"
        for u in uploads:
            wait_for(lambda u=u: post.running()
                     and sum(remote(u, m).exists() for m in wanted) >= due, 30)
            for m in wanted:
                if remote(u, m).exists():
                    assert remote(u, m).read_bytes() == m.read_bytes(), (u, m)
    elif minutes and not minutes & minutes_during(started, time.time()):
        # Upload only at the given minutes, none of which came: the mp4s wait.
        time.sleep(0.5)
        for u in uploads:
            assert not any(remote(u, m).exists() for m in wanted), u
    log = cwd / flag_values(example.postproc, "--log")[0][0]
    assert post.terminate() == 0, post.text()
    text = log.read_text()
    assert "stopped" in text, text
    assert "accepting .h264 in" in text and "no --h264-dir" not in text, text
    # A password given on the command line is never logged.
    for values in flag_values(example.postproc, "--upload-ftp", 5):
        assert f" {values[3]} " not in text and "s3cret-ftp" not in text


def test_other_expansions_are_refused() -> None:
    with pytest.raises(AssertionError, match="unsupported expansion"):
        brace_expand("{a,b}")
