"""pancake.py --config FILE: every bad file is one line naming the file, the table and the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raspberry_pancake.recorder import camconfig
from raspberry_pancake.recorder.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "cams.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good(tmp_path: Path) -> str:
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    return (f'catalog = "{tmp_path / "pancake.db"}"\nmax_stream_fps = 8\n'
            f'[camera.front]\nsource = "testsrc"\ntitle = "Front door"\nfps = 10\n'
            f'record_continuous = "{rec}"\n'
            f'[camera.back]\nsource = "testsrc"\nresolution = [640, 480]\nfps = 7.5\n'
            f'record_continuous = "{rec}"\n')


def test_a_good_file_gives_one_config_per_camera_recording_into_its_own_folder(
        tmp_path: Path) -> None:
    path = write(tmp_path, good(tmp_path))
    front, back = camconfig.load(str(path), ["--port", "8123"])
    assert (front.name, front.title, back.name, back.title) == ("front", "Front door", "back", "back")
    assert front.multi and back.multi
    assert front.port == back.port == 8123 and front.max_stream_fps == back.max_stream_fps == 8
    assert front.fps == 10.0 and back.fps == 7.5
    assert (back.resolution.width, back.resolution.height) == (640, 480)
    assert front.record_continuous == tmp_path / "rec" / "front"
    assert back.record_continuous == tmp_path / "rec" / "back"
    assert (tmp_path / "rec" / "front").is_dir() and (tmp_path / "rec" / "back").is_dir()
    assert front.catalog == back.catalog == tmp_path / "pancake.db"
    # Written in a file, not on the command line: never called visible in `ps`.
    assert not front.source.from_command_line


BAD = [
    # (file text, the line's expected start after "cams.toml")
    ('[camera.a]\nsource = "testsrc"\nfsp = 10\n', "cams.toml [camera.a] fsp: unknown key"),
    ('[camera.a]\nsource = "testsrc"\nfps = "fast"\n',
     "cams.toml [camera.a] fps: wants a number, not a string"),
    ('[camera.a]\nsource = "testsrc"\nresolution = [640]\n',
     "cams.toml [camera.a] resolution: wants a list of two"),
    ('[camera.a]\nsource = "testsrc"\nvflip = 1\n', "cams.toml [camera.a] vflip: wants true or false"),
    ('[camera.a]\nsource = "testsrc"\nfps = 500\n', "cams.toml [camera.a] fps: 500 is more than 120"),
    ('[camera.a]\nsource = "testsrc"\nrotation = 45\n', "cams.toml [camera.a] rotation:"),
    ('[camera.a]\nsource = "testsrc"\n[camera.a]\nsource = "testsrc"\n', "cams.toml: not valid TOML"),
    ('[camera.a]\nsource = "/dev/video0"\n[camera.b]\nsource = "/dev/video0"\n',
     "cams.toml [camera.b] source: /dev/video0 is camera a's already"),
    ('[camera.a]\nsource = "picamera2"\n[camera.b]\nsource = "picamera2:0"\n',
     "cams.toml [camera.b] source: picamera2:0 is camera a's already"),
    ('[camera.Front]\nsource = "testsrc"\n', "cams.toml [camera.Front]: 'Front' is not a camera name"),
    ('[camera.a]\nfps = 10\n', "cams.toml [camera.a] source: missing"),
    ('fps = 10\n[camera.a]\nsource = "testsrc"\n', "cams.toml fps: a camera's key"),
    ('colour = "red"\n[camera.a]\nsource = "testsrc"\n', "cams.toml colour: unknown key"),
    ('port = 8000\n[camera.a]\nsource = "testsrc"\n',
     "cams.toml port: given both in the file and on the command line"),
    ('max_stream_fps = -1\n[camera.a]\nsource = "testsrc"\n', "cams.toml max_stream_fps:"),
    ('emit = 5\n[camera.a]\nsource = "testsrc"\n', "cams.toml emit: wants a string, not an integer"),
    ('[camera.a]\nsource = "testsrc"\nrecord_continuous = "/no/such/dir"\n',
     "cams.toml [camera.a] record_continuous: directory '/no/such/dir' does not exist"),
    ('[camera.a]\nsource = "testsrc"\nrecord_detection = ["edge", "/tmp"]\n',
     "cams.toml [camera.a] record_detection: requires --detect"),
    ('[camera.a]\nsource = "env:PANCAKE_TEST_NO_SUCH_VAR"\n', "cams.toml [camera.a] source:"),
    ('title = "x"\n', "cams.toml title: a camera's key"),
    ('max_stream_fps = 5\n', "cams.toml: no camera"),
]


@pytest.mark.parametrize(("text", "line"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_files_are_one_line_naming_file_table_and_key(tmp_path: Path, text: str,
                                                          line: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        camconfig.load(str(path), ["--port", "8000", "--bind", "127.0.0.1"])
    message = str(caught.value)
    assert message.startswith(line), message
    assert "\n" not in message


def test_nine_cameras_are_too_many(tmp_path: Path) -> None:
    text = "".join(f'[camera.c{i}]\nsource = "testsrc"\n' for i in range(9))
    with pytest.raises(ConfigError, match=r"cams.toml: 9 cameras; at most 8"):
        camconfig.load(str(write(tmp_path, text)), [])


@pytest.mark.parametrize(("argv", "line"), [
    (["--source", "testsrc"], "--source goes with one camera"),
    (["--name", "x"], "--name goes with one camera"),
    (["--fps", "10"], "--fps: with --config, give fps in each [camera.NAME] table"),
])
def test_camera_flags_beside_config_are_refused(tmp_path: Path, argv: list[str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        camconfig.load(str(write(tmp_path, good(tmp_path))), argv)
    assert str(caught.value).startswith(line), caught.value


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "pancake.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(cwd / "state")})


def test_the_real_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[camera.a]\nsource = "testsrc"\nfps = "x"\n')
    done = run(["--config", str(path), "--port", "1"], tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr == ("pancake.py: error: cams.toml [camera.a] fps: wants a number, "
                           "not a string\n"), done.stderr
    # --config with --source: the whole command line is wrong, not the file.
    done = run(["--config", str(write(tmp_path, good(tmp_path))), "--source", "testsrc"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert "--source goes with one camera" in done.stderr
    # A duplicate table: TOML refuses it; still one line, naming the file.
    path = write(tmp_path, '[camera.a]\nsource = "testsrc"\n[camera.a]\nsource = "testsrc"\n')
    done = run(["--config", str(path)], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert done.stderr.startswith("pancake.py: error: cams.toml: not valid TOML: ")
    assert "Traceback" not in done.stderr
    done = run(["--config", str(tmp_path / "missing.toml")], tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr and done.stderr.count("\n") == 1


def test_list_cameras_prints_one_per_line_and_exits_0(tmp_path: Path) -> None:
    done = run(["--list-cameras"], tmp_path)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("testsrc: ")
    assert all(": " in line for line in lines), lines


def test_keys_of_flags_with_their_own_checks_take_strings_numbers_and_word_lists(
        tmp_path: Path) -> None:
    """A flag checked by its own function (--detect's list, --motion-min-area's percentage)
    is a key too: its value goes to that check as the command line would give it."""
    text = ('[camera.a]\nsource = "testsrc"\ndetect = ["motion"]\nmotion_min_area = 0.5\n'
            '[camera.b]\nsource = "testsrc"\ndetect = "motion"\nmotion_min_area = 2\n')
    a, b = camconfig.load(str(write(tmp_path, text)), [])
    assert a.detectors == b.detectors == ("motion",)
    assert (a.motion_min_area, b.motion_min_area) == (0.5, 2.0)
    bad = '[camera.a]\nsource = "testsrc"\ndetect = "smell"\n'
    with pytest.raises(ConfigError, match=r"^cams.toml \[camera.a\] detect: 'smell' is not one of"):
        camconfig.load(str(write(tmp_path, bad)), [])
