"""pancake.py --config FILE: a TOML file of 1..8 cameras, each checked by config.parse() as its flags."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raspberry_pancake.recorder.config import (
    CAMERA_NAME,
    ConfigError,
    RecorderConfig,
    build_parser,
    parse,
)
from raspberry_pancake.shared.credentials import Secret

__all__ = ["MAX_CAMERAS", "PROCESS_KEYS", "load", "split_argv"]

MAX_CAMERAS = 8
# Top-level keys: what the process has once (one port, one login, one catalog, one log).
PROCESS_KEYS = ("port", "bind", "login", "emit", "certfile", "keyfile", "log", "min_free",
                "catalog", "state_dir", "max_stream_fps", "trust_proxy", "trigger_token")
# Flags that are no key at all: the table's name is the camera's name; the rest are actions.
NOT_KEYS = ("help", "name", "self_check", "config", "list_cameras")


@dataclasses.dataclass(frozen=True, slots=True)
class _Key:
    flag: str  # "--record-detection"
    kind: str  # "bool", "str", "int", "number"
    pair: bool  # nargs=2: a list of two


def _keys() -> dict[str, _Key]:
    """Every key a file may hold, read off pancake's own parser: a flag added there is a key."""
    keys: dict[str, _Key] = {}
    for action in build_parser()._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.dest in NOT_KEYS:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            kind = "bool"
        elif action.type is int or getattr(action.type, "kind", "") == "int":
            kind = "int"
        elif action.type is float or getattr(action.type, "kind", "") == "number":
            kind = "number"
        elif action.type is None:
            kind = "str"
        else:  # a check of the flag's own (a percentage, a pin, a list of words): it judges
            kind = "any"
        keys[action.dest] = _Key(long[0], kind, action.nargs == 2)
    return keys


def _type_ok(kind: str, value: object) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):  # TOML's true is no number
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float)
    if kind == "any":
        return isinstance(value, str | int | float) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))
    return isinstance(value, str)


_WANT = {"bool": "true or false", "int": "an integer", "number": "a number", "str": "a string",
         "any": "a string, a number or a list of strings"}


def _args(where: str, table: dict[str, Any], keys: dict[str, _Key]) -> list[str]:
    """The table as command-line flags; ConfigError naming `where` and the key if it cannot be."""
    argv: list[str] = []
    for key, value in table.items():
        spec = keys.get(key)
        if spec is None:
            raise ConfigError(f"{where} {key}: unknown key")
        if spec.pair:
            if (not isinstance(value, list) or len(value) != 2
                    or not all(_type_ok(spec.kind, v) for v in value)):
                raise ConfigError(f"{where} {key}: wants a list of two, each {_WANT[spec.kind]}")
            argv += [spec.flag, *(_text(v) for v in value)]
        elif not _type_ok(spec.kind, value):
            raise ConfigError(f"{where} {key}: wants {_WANT[spec.kind]}, not {_toml_type(value)}")
        elif spec.kind == "bool":
            if value:
                argv.append(spec.flag)
        else:
            argv += [spec.flag, _text(value)]
    return argv


def _text(value: object) -> str:
    if isinstance(value, list):  # detect = ["motion", "faces"]: the flag's comma-separated list
        return ",".join(str(v) for v in value)
    return f"{value!r}" if isinstance(value, float) else str(value)


def _toml_type(value: object) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return next((n for t, n in names.items() if type(value) is t), type(value).__name__)


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """`--config FILE` (or `--config=FILE`) taken out of argv; (None, argv) without it."""
    rest: list[str] = []
    path: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            value = next(it, None)
            if value is None:
                raise ConfigError("--config: expected one argument (a TOML file)")
            path = value
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
        else:
            rest.append(arg)
    if path is not None and not path:
        raise ConfigError("--config: expected one argument (a TOML file)")
    return path, rest


def _command_line(argv: Sequence[str], keys: dict[str, _Key]) -> dict[str, str]:
    """The process-wide flags given beside --config, by key; ConfigError for any other flag."""
    given: dict[str, str] = {}
    dest_of = {spec.flag: dest for dest, spec in keys.items()}
    for arg in argv:
        if not arg.startswith("--"):
            continue
        flag = arg.partition("=")[0]
        dest = dest_of.get(flag)
        if flag in ("--source", "--name", "--title"):
            raise ConfigError(f"{flag} goes with one camera: with --config, each [camera.NAME] "
                              f"table names its own")
        if dest is None:
            continue  # argparse names it: unknown, or a typo
        if dest not in PROCESS_KEYS:
            raise ConfigError(f"{flag}: with --config, give {dest} in each [camera.NAME] table")
        given[dest] = flag
    return given


def _device(cfg: RecorderConfig) -> str | None:
    """The device a camera holds alone (two openers of one device: the second fails), or None."""
    spec = cfg.source.reveal()
    if spec == "picamera2" or spec.startswith("picamera2:"):
        return "picamera2:" + (spec.partition(":")[2] or "0")
    if spec.startswith("/dev/"):
        return os.path.realpath(spec)
    return None


def _in_dir(cfg: RecorderConfig, where: str) -> RecorderConfig:
    """The camera's recordings in DIR/NAME/ (made if missing) under each directory it names."""
    moved: dict[str, Path | None] = {}
    for key in ("record_continuous", "detection_dir"):
        base: Path | None = getattr(cfg, key)
        if base is None:
            moved[key] = None
            continue
        sub = base / cfg.name
        try:
            sub.mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            shown = "record_continuous" if key == "record_continuous" else "record_detection"
            raise ConfigError(f"{where} {shown}: cannot make {str(sub)!r}: "
                              f"{exc.strerror or exc}") from None
        moved[key] = sub
    return dataclasses.replace(cfg, record_continuous=moved["record_continuous"],
                               detection_dir=moved["detection_dir"])


def _parse(argv: list[str], where: dict[str, str], keys: dict[str, _Key]) -> RecorderConfig:
    """config.parse(argv), its errors turned into one line naming the file, table and key.
    `where` maps each flag given to where it came from ("cams.toml [camera.front] fps")."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except ConfigError as exc:
        raise ConfigError(_placed(str(exc), where, keys)) from None
    except SystemExit:  # argparse: "pancake.py: error: argument --fps: invalid … value: 'x'"
        text = err.getvalue().strip().splitlines()
        message = text[-1] if text else "invalid value"
        message = message.removeprefix("pancake.py: error: ").removeprefix("argument ")
        raise ConfigError(_placed(message, where, keys)) from None


def _placed(message: str, where: dict[str, str], keys: dict[str, _Key]) -> str:
    """`message` ("--fps: 500 is more than 120") said of the key it is about."""
    named = sorted(where, key=len, reverse=True)  # --record-detection before --record
    for flag in named:
        if not flag:
            continue
        if message.startswith(flag + ":") or message.startswith(flag + " "):
            return f"{where[flag]}: {message.removeprefix(flag).lstrip(': ')}"
        if flag in message:
            return f"{where[flag]}: {message}"
    return f"{where.get('', 'config')}: {message}"


def load(path_text: str, argv: Sequence[str]) -> list[RecorderConfig]:
    """The cameras of the TOML file at `path_text`, with `argv`'s process-wide flags.

    Every camera goes through config.parse() as if given on the command line, so each flag's
    checks are the single camera's; ConfigError is one line naming the file, the table and the
    key. Recording directories get a NAME/ subfolder per camera."""
    path = Path(path_text)
    shown = path.name
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config: {path_text!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path_text!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's own words: "Cannot declare ('camera', 'a') twice (at line 7, column 13)".
        raise ConfigError(f"{shown}: not valid TOML: {exc}") from None
    keys = _keys()
    process_keys = {k: v for k, v in keys.items() if k in PROCESS_KEYS}
    camera_keys = {k: v for k, v in keys.items() if k not in PROCESS_KEYS}
    given = _command_line(argv, keys)
    cameras = data.pop("camera", None)
    top = dict(data)
    for key in top:
        if key in camera_keys:
            raise ConfigError(f"{shown} {key}: a camera's key, not the file's: put it in each "
                              f"[camera.NAME] table")
        if key in given:
            raise ConfigError(f"{shown} {key}: given both in the file and on the command line "
                              f"({given[key]})")
    process_argv = _args(shown, top, process_keys)
    if not isinstance(cameras, dict) or not cameras:
        raise ConfigError(f"{shown}: no camera: add a [camera.NAME] table (source = …)")
    if len(cameras) > MAX_CAMERAS:
        raise ConfigError(f"{shown}: {len(cameras)} cameras; at most {MAX_CAMERAS}")
    where = {spec.flag: f"{shown} {key}" for key, spec in process_keys.items() if key in top}
    where.update({flag: f"the command line {flag}" for flag in given.values()})
    where[""] = shown
    configs: list[RecorderConfig] = []
    devices: dict[str, str] = {}
    for name, table in cameras.items():
        at = f"{shown} [camera.{name}]"
        if not CAMERA_NAME.fullmatch(name):
            raise ConfigError(f"{at}: {name!r} is not a camera name (a-z, 0-9, _ and -, 1..32)")
        if not isinstance(table, dict):
            raise ConfigError(f"{shown} camera.{name}: wants a table ([camera.{name}])")
        if "source" not in table:
            raise ConfigError(f"{at} source: missing (testsrc, picamera2:0, /dev/video0, a URL, "
                              "env:VAR …)")
        camera_argv = _args(at, table, camera_keys)
        table_where = dict(where)
        table_where.update({camera_keys[k].flag: f"{at} {k}" for k in table})
        table_where[""] = at
        cfg = _parse([*argv, *process_argv, *camera_argv, "--name", name], table_where, keys)
        source = cfg.source
        if source.from_command_line:
            # Written in the file, not on the command line: `ps` does not show it.
            source = Secret(source.reveal(), f"file {path.absolute()}")
        cfg = dataclasses.replace(cfg, source=source, multi=True)
        device = _device(cfg)
        if device is not None:
            if device in devices:
                raise ConfigError(f"{at} source: {device} is camera {devices[device]}'s already")
            devices[device] = name
        configs.append(_in_dir(cfg, at))
    return configs
