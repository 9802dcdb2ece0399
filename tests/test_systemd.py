"""The units in systemd/: `systemd-analyze verify` and `security` on every one, staged so that
/opt/raspberry-pancake is this checkout; their command lines are checked against the programs'
own parsers, and the cleanup commands are run (dry) on temporary directories."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

import pytest

from raspberry_pancake.postproc import config as postproc_config
from raspberry_pancake.recorder import config as recorder_config

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
INSTALL = "/opt/raspberry-pancake"
UNITS = sorted(p.name for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [u for u in UNITS if u.endswith(".service")]
INSTANCE = "cam1"
# What `systemd-analyze security` may score at most (0 safest, 10 unsafest). pancake cannot
# close /dev (the camera) or the network (the live page); the cleanup needs neither.
MAX_EXPOSURE = {"pancake": 2.5, "pancake-cameras": 2.5, "postproc": 2.0, "pancake-cleanup": 1.0}


def instance_name(unit: str) -> str:
    """Templates are verified as an instance of themselves."""
    return unit.replace("@.", f"@{INSTANCE}.")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, as systemd reads them: comment lines skipped (also inside a
    continuation), a trailing backslash joins the next line."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.strip('"')
    return env


def command_lines(unit_text: str, env: dict[str, str]) -> list[list[str]]:
    """Every ExecStart= as the argv systemd would run: %i, ${X} (one word), $X (split)."""
    unit = parse_unit(unit_text)
    result = []
    for line in values(unit, "ExecStart"):
        argv: list[str] = []
        for word in shlex.split(line.replace("%i", INSTANCE)):
            whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if whole:
                argv += env.get(whole[1], "").split()
            else:
                argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                   lambda m: env.get(m[1], ""), word))
        result.append(argv)
    return result


def verify_problems(paths: list[Path]) -> list[str]:
    """What `systemd-analyze verify` says about the units; empty when it has nothing to say."""
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    if done.returncode != 0 and not lines:
        lines = [f"exit code {done.returncode}"]
    return lines


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The units with INSTALL rewritten to a tree whose files are this checkout's."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    base = tmp_path_factory.mktemp("systemd")
    opt = base / "opt"
    (opt / ".venv" / "bin").mkdir(parents=True)
    (opt / ".venv" / "bin" / "python").symlink_to(sys.executable)
    for name in ("pancake.py", "postproc.py", "customize.py", "util", "README.md"):
        (opt / name).symlink_to(ROOT / name)
    units = base / "units"
    units.mkdir()
    for name in UNITS:
        (units / name).write_text((UNIT_DIR / name).read_text().replace(INSTALL, str(opt)))
    # A unit known to be fine: if even this fails, systemd-analyze cannot work here at all.
    probe = base / "probe.service"
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={sys.executable} -c pass\n")
    problems = verify_problems([probe])
    if problems:
        pytest.skip(f"systemd-analyze verify cannot run here: {problems[0]}")
    yield units


def test_every_expected_unit_is_there() -> None:
    assert set(UNITS) == {"pancake.service", "postproc.service", "pancake@.service",
                          "postproc@.service", "pancake-cleanup.service",
                          "pancake-cleanup.timer", "pancake-cameras.service"}
    assert (UNIT_DIR / "example.env").is_file()


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(staged: Path, name: str) -> None:
    target = staged / name
    if "@." in name:
        target = staged / instance_name(name)
        shutil.copy(staged / name, target)  # an instance of the template, beside it
    assert verify_problems([target]) == []


def test_verify_would_catch_a_broken_unit(staged: Path) -> None:
    """The check above can fail: each of these mistakes is reported."""
    good = (staged / "pancake.service").read_text()
    mistakes = {
        "typo.service": good.replace("WatchdogSec=", "WatchDogSec="),
        "value.service": good.replace("ProtectSystem=strict", "ProtectSystem=very"),
        "missing.service": good.replace("/.venv/bin/python", "/.venv/bin/pyhton"),
        "section.service": good.replace("[Service]", "[Servce]"),
    }
    for name, text in mistakes.items():
        path = staged / name
        path.write_text(text)
        assert verify_problems([path]) != [], name
        path.unlink()


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure(staged: Path, name: str) -> None:
    target = staged / name
    if "@." in name:
        target = staged / instance_name(name)
        shutil.copy(staged / name, target)
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(target)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert m, done.stdout + done.stderr
    limit = MAX_EXPOSURE[name.split("@")[0].removesuffix(".service")]
    assert float(m[1]) <= limit, done.stdout


@pytest.mark.parametrize("name", SERVICES)
def test_hardening(name: str) -> None:
    unit = parse_unit((UNIT_DIR / name).read_text())
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("PrivateTmp", "yes"), ("ProtectHome", "read-only")):
        assert values(unit, key) == [want], f"{name}: {key}"
    assert values(unit, "ReadWritePaths"), name
    assert values(unit, "User") == ["pancake"], name
    if "cleanup" in name:
        assert values(unit, "Type") == ["oneshot"]
        return
    assert values(unit, "Restart") == ["on-failure"], name
    # Abstract socket names are per network namespace: both daemons must share one.
    assert values(unit, "PrivateNetwork") in ([], ["no"]), name
    if name.startswith("pancake"):
        assert values(unit, "Type") == ["notify"]
        assert values(unit, "NotifyAccess") == ["main"]
        assert values(unit, "WatchdogSec") == ["30"]
        # The camera is a device: nothing may close /dev to it.
        for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock"):
            assert values(unit, key) == [], f"{name}: {key} would hide the camera"
        assert values(unit, "SupplementaryGroups") == ["video"]


def test_templates_read_their_instance_env_file() -> None:
    env_keys = set(read_env(UNIT_DIR / "example.env"))
    for name in ("pancake@.service", "postproc@.service"):
        text = (UNIT_DIR / name).read_text()
        unit = parse_unit(text)
        assert values(unit, "EnvironmentFile") == ["/etc/pancake/%i.env"]
        used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", " ".join(values(unit, "ExecStart"))))
        assert used and used <= env_keys, f"{name} uses {used - env_keys}, not in example.env"


def writable(unit_text: str, path: str) -> bool:
    """Whether the unit lets its service write `path` (ReadWritePaths=, StateDirectory=...)."""
    unit = parse_unit(unit_text.replace("%i", INSTANCE))
    roots = [p.lstrip("-") for v in values(unit, "ReadWritePaths") for p in v.split()]
    roots += ["/var/lib/" + p for v in values(unit, "StateDirectory") for p in v.split()]
    roots += ["/var/log/" + p for v in values(unit, "LogsDirectory") for p in v.split()]
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def parses(parser: argparse.ArgumentParser, args: list[str]) -> str:
    """'' if the program's own parser accepts `args`, else what it said."""
    err = StringIO()
    try:
        with redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit:
        return err.getvalue().strip() or "rejected"
    return ""


# The flags whose values a service writes to (directories it records into, logs, the login
# file whose cookie secret pancake keeps beside it).
WRITTEN = {"--record-continuous": 0, "--record-detection": 1, "--log": 0, "--login": 0,
           "--convert": 0}


@pytest.mark.parametrize("name", ["pancake.service", "postproc.service", "pancake@.service",
                                  "postproc@.service"])
def test_daemon_command_lines_parse_and_may_write_where_they_write(name: str) -> None:
    text = (UNIT_DIR / name).read_text()
    env = read_env(UNIT_DIR / "example.env") if "@" in name else {}
    (argv,) = command_lines(text, env)
    assert argv[0] == f"{INSTALL}/.venv/bin/python"
    script = argv[1].removeprefix(INSTALL + "/")
    assert (ROOT / script).is_file(), script
    parser = (recorder_config if script == "pancake.py" else postproc_config).build_parser()
    assert parses(parser, argv[2:]) == "", f"{name}: {argv[2:]}"
    for i, arg in enumerate(argv):
        if arg in WRITTEN:
            target = argv[i + 1 + WRITTEN[arg]]
            assert writable(text, target), f"{name}: {arg} {target} is not writable"
    if name.startswith("pancake"):
        assert "--emit" in argv
        # Its state directory (login revocations) is $XDG_STATE_HOME/pancake: /var/lib/pancake,
        # and the sandbox must let it write there, or a --login pancake cannot start.
        unit = parse_unit(text)
        env_lines = dict(v.split("=", 1) for v in values(unit, "Environment"))
        assert env_lines.get("XDG_STATE_HOME") == "/var/lib", name
        assert writable(text, "/var/lib/pancake/revoked-sessions.json"), name
    # pancake and postproc of one camera meet on the same socket name.
    socket_name = argv[argv.index("--emit") + 1] if "--emit" in argv else argv[2]
    assert socket_name == ("ppp" if "@" not in name else env["SOCKET"])


def test_the_cameras_unit_runs_the_example_config_and_may_write_where_it_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pancake-cameras.service: --config /etc/pancake/cameras.toml, and examples/cameras.toml
    (with /var/lib/pancake moved to a temporary directory) is a config pancake accepts."""
    from raspberry_pancake.recorder import camconfig

    text = (UNIT_DIR / "pancake-cameras.service").read_text()
    (argv,) = command_lines(text, {})
    assert argv[0] == f"{INSTALL}/.venv/bin/python" and argv[1] == f"{INSTALL}/pancake.py"
    assert argv[2:] == ["--config", "/etc/pancake/cameras.toml"]
    unit = parse_unit(text)
    assert values(unit, "EnvironmentFile") == ["-/etc/pancake/cameras.env"]
    assert values(unit, "Conflicts", "Unit") == ["pancake.service"]
    example = (ROOT / "examples" / "cameras.toml").read_text()
    for directory in re.findall(r'"(/var/[^"]+)"', example):
        target = directory if not directory.endswith(".txt") else str(Path(directory).parent)
        assert writable(text, target), directory
    staged = tmp_path / "var"
    for d in ("lib/pancake/h264", "log/pancake"):
        (staged / d).mkdir(parents=True)
    (staged / "lib/pancake/password.txt").write_text("$2b$12$" + "x" * 53 + "\n")
    path = tmp_path / "cameras.toml"
    path.write_text(example.replace('"/var/', f'"{staged}/'))
    monkeypatch.setenv("GARDEN_URL", "rtsp://viewer:secret@192.0.2.50:554/stream1")
    monkeypatch.chdir(ROOT)  # detect = "no-image" loads the checkout's customize.py
    cfgs = camconfig.load(str(path), [])
    assert [c.name for c in cfgs] == ["front", "back", "shop", "garden"]
    assert {c.source.reveal() for c in cfgs} >= {"picamera2:0", "picamera2:1"}
    assert all(c.emit == "ppp" for c in cfgs)  # postproc.service listens there
    assert cfgs[0].record_continuous == staged / "lib/pancake/h264/front"
    assert cfgs[1].detection_dir == staged / "lib/pancake/h264/back"
    assert "secret" not in repr(cfgs[3])


def test_cleanup_commands_run(tmp_path: Path) -> None:
    """Each ExecStart= of the cleanup, with /var/lib/pancake moved to a temporary directory,
    run for real in --dry-run: the scripts accept what the unit gives them."""
    text = (UNIT_DIR / "pancake-cleanup.service").read_text()
    lines = command_lines(text, {})
    assert lines
    for argv in lines:
        assert argv[0] == f"{INSTALL}/.venv/bin/python"
        script = ROOT / argv[1].removeprefix(INSTALL + "/")
        assert script.parent.name == "util" and script.is_file()
        args = []
        for arg in argv[2:]:
            if arg.startswith("/"):
                assert writable(text, arg), arg
                arg = str(tmp_path / arg.lstrip("/"))
                Path(arg).mkdir(parents=True, exist_ok=True)
            args.append(arg)
        done = subprocess.run([sys.executable, str(script), "--dry-run", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv}: {done.stderr}"


def test_timer_starts_the_cleanup() -> None:
    timer = parse_unit((UNIT_DIR / "pancake-cleanup.timer").read_text())
    assert values(timer, "Unit", "Timer") == ["pancake-cleanup.service"]
    assert values(timer, "OnCalendar", "Timer")
    assert values(timer, "WantedBy", "Install") == ["timers.target"]


def test_env_files_and_secrets_are_installed_private() -> None:
    """An instance's env file may name a camera URL: the README and example.env install it
    readable by root only (systemd reads it before dropping to the pancake user)."""
    readme = (ROOT / "README.md").read_text()
    example = (UNIT_DIR / "example.env").read_text()
    for text in (readme, example):
        installs = re.findall(r"install\s[^\n]*?-m\s+(\d+)[^\n]*?/etc/pancake/cam1\.env", text)
        assert installs and set(installs) == {"0600"}, installs
    # Secret files the README makes are never world-readable.
    modes = re.findall(r"install\s[^\n]*?-m\s+(\d+)[^\n]*?/etc/pancake/\S+", readme)
    assert modes and all(int(m[-1]) == 0 for m in modes), modes
