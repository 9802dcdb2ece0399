"""postproc.py's command line: the original's flags, cross-checks, secrets from files and env."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from raspberry_pancake.postproc.config import parse
from raspberry_pancake.postproc.main import main
from raspberry_pancake.shared.cli import ConfigError
from raspberry_pancake.shared.credentials import RedactingFilter, Secret, SecretError, resolve
from tests.postproc_servers import PYTHON, ROOT, make_tls


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(ROOT / "postproc.py"), *args], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def test_original_command_line_parses(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    cfg = parse(["ppp", "--convert", str(tmp_path), "12", "--upload-after-convert", "3",
                 "--upload-minutes", "5", "20", "35", "50",
                 "--upload-scp", "pi@127.0.0.1", "22", "bakery/cam4",
                 "--upload-ftp", "127.0.0.1", "21", "nick", "nickpass", "bakery/cam2",
                 "--notify-telegram", "123:ABC", "42",
                 "--known-hosts", str(tmp_path / "known_hosts")])
    assert cfg.socket_name == "ppp"
    assert cfg.mp4_dir == tmp_path and cfg.fps == 12.0
    assert cfg.upload_after_convert == 3 and cfg.upload_minutes == (5, 20, 35, 50)
    assert cfg.upload_scp[0].user == "pi" and cfg.upload_scp[0].port == 22
    assert cfg.upload_ftp[0].password.reveal() == "nickpass"
    assert "nickpass" not in repr(cfg) and "123:ABC" not in repr(cfg)
    assert cfg.upload_queue_size == 8 and cfg.notify_queue_size == 8
    assert cfg.converter == "pyav"
    assert cfg.public_bot_api


@pytest.mark.parametrize(("extra", "needle"), [
    (["--upload-scp", "pi@127.0.0.1", "22", "bak"], "need a trigger"),
    (["--upload-after-convert", "1"], "need a destination"),
    (["--upload-minutes", "0", "20"], "need a destination"),
    (["--upload-minutes", "5", "5", "--upload-after-convert", "1"], "repeated"),
    (["--upload-minutes", "60"], "not a minute"),
    (["--upload-after-convert", "0"], "less than 1"),
    (["--upload-scp", "nohost", "22", "bak", "--upload-after-convert", "1"], "user@host"),
    (["--upload-ftp", "h", "99999", "u", "p", "d", "--upload-after-convert", "1"],
     "not in 1..65535"),
    (["--converter", "mp4box"], "MP4Box is not installed"),
    (["--h264-dir", "/nonexistent/dir"], "not a directory"),
    (["--notify-telegram", "@/nonexistent/token", "1"], "cannot read secret file"),
    (["--notify-telegram", "env:POSTPROC_TEST_UNSET_VAR", "1"], "not set"),
    (["--telegram-api-url", "ftp://x/bot"], "not an http(s) URL"),
    (["--telegram-api-url", "http://127.0.0.1:99999/bot"], "port that is not a number"),
    (["--telegram-api-url", "http:///bot"], "not an http(s) URL with a host"),
    (["--telegram-api-url", "http://127.0.0.1:8081/"], "should end in /bot"),
    (["--telegram-api-url", "http://127.0.0.1:8081/bot?x=1"], "no ?query"),
    (["--allow-uid", "root"], "not a numeric uid"),
    (["--upload-ftps", "h", "21", "u", "p", "d", "--upload-after-convert", "1",
      "--ftps-ca", "/nonexistent/ca.pem"], "--ftps-ca: '/nonexistent/ca.pem' is not a readable file"),
    (["--ftps-ca", "/nonexistent/ca.pem"], "--ftps-ca is for --upload-ftps"),
    (["--upload-ftps", "h", "21", "u"], "expected 5 arguments"),
    (["--upload-ftps", "h", "0", "u", "p", "d", "--upload-after-convert", "1"],
     "--upload-ftps: port 0 is not in 1..65535"),
    (["--upload-ftps", "h", "21", "u", "p", "d"], "need a trigger"),
    (["--upload-ftps", "h", "21", "u", "env:POSTPROC_TEST_UNSET_VAR", "d",
      "--upload-after-convert", "1"], "--upload-ftps password: environment variable"),
    (["--upload-ftp", "h", "21", "u\nPASS x", "p", "d", "--upload-after-convert", "1"],
     "--upload-ftp: user contains a line break"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, extra: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["ppp", "--convert", str(tmp_path), "12", *extra])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_convert_is_required_and_checked(tmp_path: Path) -> None:
    """Through the real entry point: one line on stderr, exit 2, no traceback."""
    for args, needle in ((["ppp"], "--convert"),
                         (["ppp", "--convert", str(tmp_path / "no"), "12"], "not a directory"),
                         (["ppp", "--convert", str(tmp_path), "fast"], "not a number")):
        done = _run(*args)
        assert done.returncode == 2 and needle in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_known_hosts_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="known-hosts"):
        parse(["ppp", "--convert", str(tmp_path), "12", "--upload-after-convert", "1",
               "--upload-scp", "pi@127.0.0.1", "22", "bak",
               "--known-hosts", str(tmp_path / "none")])


def test_secret_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "token"
    f.write_text("123:FROMFILE\n")
    assert resolve("x", f"@{f}").reveal() == "123:FROMFILE"
    monkeypatch.setenv("PP_TOKEN", "123:FROMENV")
    s = resolve("x", "env:PP_TOKEN")
    assert s.reveal() == "123:FROMENV" and "FROMENV" not in f"{s} {s!r}"
    assert resolve("x", "literal").from_command_line
    (tmp_path / "empty").write_text("\n")
    for bad in (f"@{tmp_path / 'empty'}", "env:", "env:PP_NOT_SET", ""):
        with pytest.raises(SecretError):
            resolve("x", bad)


def test_redacting_filter_masks_message_args_and_tracebacks() -> None:
    flt = RedactingFilter([Secret("123:SECRET", "test")])
    try:
        raise ValueError("url https://api/bot123:SECRET/sendMessage")
    except ValueError as exc:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed %s", (exc,),
                                   exc_info=(type(exc), exc, exc.__traceback__))
    assert flt.filter(record)
    text = logging.Formatter().format(record)
    assert "123:SECRET" not in text and "[secret]" in text


def test_ftps_command_line_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls(tmp_path / "tls")
    monkeypatch.setenv("PP_FTPS", "ftps-pass")
    cfg = parse(["ppp", "--convert", str(tmp_path), "12", "--upload-after-convert", "1",
                 "--upload-ftp", "127.0.0.1", "21", "nick", "nickpass", "bakery/cam2",
                 "--upload-ftps", "nas.example", "2121", "cam", "env:PP_FTPS", "bakery/cam3",
                 "--ftps-ca", str(tls.ca)])
    plain, tlsd = cfg.upload_ftp
    assert not plain.tls and plain.ca_file is None
    assert plain.label == "ftp://nick@127.0.0.1:21/bakery/cam2"
    assert tlsd.tls and tlsd.ca_file == tls.ca and tlsd.port == 2121
    assert tlsd.label == "ftps://cam@nas.example:2121/bakery/cam3"
    assert tlsd.password.reveal() == "ftps-pass" and not tlsd.password.from_command_line
    assert tlsd.password in cfg.secrets() and "ftps-pass" not in repr(cfg)
    # Without --ftps-ca: the system's CA roots.
    cfg = parse(["ppp", "--convert", str(tmp_path), "12", "--upload-minutes", "5",
                 "--upload-ftps", "nas.example", "21", "cam", "env:PP_FTPS", "d"])
    assert cfg.upload_ftp[0].tls and cfg.upload_ftp[0].ca_file is None


def test_ftps_ca_that_holds_no_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Through the real entry point: a key or a typo'd file is refused at start, not at the
    first upload."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    done = _run("ppp", "--convert", str(tmp_path), "12", "--upload-after-convert", "1",
                "--upload-ftps", "h", "21", "u", "p", "d", "--ftps-ca", str(bad))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no PEM certificate" in lines[0], done.stderr


def test_ftp_password_with_a_line_break_is_refused_unshown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PP_FTP", "first\nDELE everything")
    for flag in ("--upload-ftp", "--upload-ftps"):
        code = main(["ppp", "--convert", str(tmp_path), "12", "--upload-after-convert", "1",
                     flag, "h", "21", "u", "env:PP_FTP", "d"])
        err = capsys.readouterr().err
        assert code == 2 and f"{flag}: password contains a line break" in err, err
        assert "DELE" not in err and len(err.strip().splitlines()) == 1
