"""postproc.py's command line: parsed and checked once into a frozen PostprocConfig."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from raspberry_pancake.postproc.upload.ftp import tls_context
from raspberry_pancake.postproc.upload.targets import FtpTarget, RcloneTarget, ScpTarget
from raspberry_pancake.postproc.upload.worker import BACKOFF_FIRST, MAX_ATTEMPTS
from raspberry_pancake.shared.cli import Bounded, ConfigError, OneLineParser
from raspberry_pancake.shared.credentials import Secret, SecretError, resolve
from raspberry_pancake.shared.events import MAX_SOCKET_NAME
from raspberry_pancake.shared.statedir import catalog_path, state_dir

PUBLIC_BOT_API = "https://api.telegram.org/bot"
MP4BOX = "MP4Box"


@dataclass(frozen=True, slots=True)
class TelegramTarget:
    token: Secret
    chat_id: str

    @property
    def label(self) -> str:
        return f"telegram chat {self.chat_id}"


MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Home Assistant's discovery ids take [a-zA-Z0-9_-] only.
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """--mqtt and its companions, checked."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None  # None: the system's CA roots (with tls)
    username: str | None
    password: Secret | None
    topic: str
    client_id: str
    node: str

    @property
    def label(self) -> str:
        """The broker as log lines name it: never the password, which is not in the URL."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PostprocConfig:
    socket_name: str
    mp4_dir: Path
    fps: float
    upload_after_convert: int | None
    upload_minutes: tuple[int, ...]
    upload_scp: tuple[ScpTarget, ...]
    upload_ftp: tuple[FtpTarget, ...]  # --upload-ftp and --upload-ftps (tls=True) alike
    upload_queue_size: int
    notify_telegram: tuple[TelegramTarget, ...]
    notify_queue_size: int
    log: str | None
    converter: str  # "pyav" or "mp4box"
    mp4box: str | None  # MP4Box's path when converter == "mp4box"
    h264_dirs: tuple[Path, ...]
    telegram_api_url: str
    allow_uids: frozenset[int]
    known_hosts: Path
    ssh_key: Path | None
    catalog: Path
    # The state directory to make (0700) before opening the catalog there; None when --catalog
    # names the file, whose directory must then exist.
    state_dir: Path | None
    # Not on the command line: the defaults suit every destination, and a catch-up at each
    # trigger and each start retries a file given up. Tests make them small.
    upload_rclone: tuple[RcloneTarget, ...] = ()
    upload_attempts: int = MAX_ATTEMPTS
    upload_backoff_first: float = BACKOFF_FIRST
    mqtt: MqttTarget | None = None

    @property
    def uploading(self) -> bool:
        return bool(self.upload_scp or self.upload_ftp or self.upload_rclone)

    @property
    def public_bot_api(self) -> bool:
        return self.telegram_api_url == PUBLIC_BOT_API

    def secrets(self) -> list[Secret]:
        mqtt = [self.mqtt.password] if self.mqtt is not None and self.mqtt.password else []
        # A connection string's own secrets (`:sftp,pass=…:`): masked in the log like the rest.
        rclone = [Secret(v, "the command line") for d in self.upload_rclone for v in d.secrets()]
        return ([d.password for d in self.upload_ftp] + [t.token for t in self.notify_telegram]
                + mqtt + rclone)


_minute = Bounded(int, lambda v: 0 <= v <= 59, "is not a minute (0..59)", "is not a minute (0..59)")


_at_least_one = Bounded(int, lambda v: v >= 1, "is not a whole number", "is less than 1")


_uid = Bounded(int, lambda v: 0 <= v < 2**32 - 1, "is not a numeric uid", "is not a uid")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="postproc.py",
                description="Raspberry Pancake's post-processor: convert, upload, notify.")
    p.add_argument("socket_name", help="address of unix domain socket, in abstract namespace")
    p.add_argument("--convert", nargs=2, required=True, metavar=("mp4_dir", "fps"),
                   help="convert h264 files into mp4_dir; fps when a file has no .pts sidecar")
    p.add_argument("--upload-after-convert", type=_at_least_one, metavar="N",
                   help="trigger upload after N conversions")
    p.add_argument("--upload-minutes", type=_minute, nargs="+", metavar="{0..59}",
                   help="trigger upload at minutes")
    p.add_argument("--upload-scp", nargs=3, action="append", default=[],
                   metavar=("user@host", "port", "remote_dir"),
                   help="upload by SFTP (key or agent auth, host key from --known-hosts)")
    p.add_argument("--upload-ftp", nargs=5, action="append", default=[],
                   metavar=("host", "port", "user", "password", "remote_dir"),
                   help="upload by FTP; password may be @/path/to/file or env:VARNAME")
    p.add_argument("--upload-ftps", nargs=5, action="append", default=[],
                   metavar=("host", "port", "user", "password", "remote_dir"),
                   help="upload by FTP over explicit TLS (AUTH TLS, encrypted data "
                        "connections); the server's certificate must be valid for host, "
                        "signed by a CA of the system or of --ftps-ca")
    p.add_argument("--ftps-ca", metavar="FILE",
                   help="CA certificates (PEM) that --upload-ftps trusts instead of the "
                        "system's: your own CA, or the server's self-signed certificate")
    p.add_argument("--upload-rclone", action="append", default=[], metavar="REMOTE:PATH",
                   help="upload through rclone to REMOTE:PATH (a remote set up with `rclone "
                        "config`, or a connection string such as :sftp,host=…:path)")
    p.add_argument("--rclone-config", metavar="FILE",
                   help="rclone's config file (default: rclone's own, ~/.config/rclone/rclone.conf)")
    p.add_argument("--upload-queue-size", type=_at_least_one, default=8, metavar="8")
    p.add_argument("--notify-telegram", nargs=2, action="append", default=[],
                   metavar=("bot_token", "chat_id"),
                   help="use Telegram Bot API to notify chat_id of detection status; "
                        "bot_token may be @/path/to/file or env:VARNAME")
    p.add_argument("--notify-queue-size", type=_at_least_one, default=8, metavar="8")
    p.add_argument("--log", metavar="path", help="log file, rotated at midnight; stdout if not given")
    p.add_argument("--converter", choices=["pyav", "mp4box"], default="pyav",
                   help="pyav: remux in process (default); mp4box: run MP4Box as the original")
    p.add_argument("--h264-dir", action="append", default=[], metavar="DIR",
                   help="accept only .h264 files in DIR (repeatable); on start and every 10 "
                        "minutes, convert what the catalog says is finished and not "
                        "converted there")
    p.add_argument("--telegram-api-url", default=PUBLIC_BOT_API, metavar="URL",
                   help=f"Bot API base URL, ending in /bot (default {PUBLIC_BOT_API})")
    p.add_argument("--allow-uid", type=_uid, action="append", default=[], metavar="UID",
                   help="accept events sent by this uid (repeatable; default: our own uid)")
    p.add_argument("--known-hosts", metavar="FILE", default="~/.ssh/known_hosts",
                   help="SSH host keys for --upload-scp (default ~/.ssh/known_hosts)")
    p.add_argument("--ssh-key", metavar="FILE",
                   help="SSH private key for --upload-scp (default: agent and ~/.ssh keys)")
    p.add_argument("--mqtt", metavar="URL",
                   help="publish events to this MQTT broker (Home Assistant discovery "
                        "included): mqtt://[user@]host[:1883] or mqtts://[user@]host[:8883]")
    p.add_argument("--mqtt-password", metavar="SECRET",
                   help="the MQTT user's password: @/path/to/file or env:VARNAME")
    p.add_argument("--mqtt-ca", metavar="FILE",
                   help="CA certificates (PEM) that mqtts:// trusts instead of the system's")
    p.add_argument("--mqtt-topic", default="pancake", metavar="TOPIC",
                   help="the topic everything is published under (default pancake; one per "
                        "Pi when several share a broker)")
    p.add_argument("--mqtt-client-id", metavar="ID",
                   help="the MQTT client id (default pancake-NODE-TOPIC)")
    p.add_argument("--mqtt-node", metavar="NODE",
                   help="this Pi's name in Home Assistant's unique ids (default the host name)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--catalog", metavar="PATH",
                       help="the catalog file pancake and postproc share (default "
                            "pancake.db in the state directory)")
    where.add_argument("--state-dir", metavar="DIR",
                       help="the state directory (default $XDG_STATE_HOME/pancake, "
                            "~/.local/state/pancake)")
    return p


def _catalog(catalog: str | None, directory: str | None) -> tuple[Path, Path | None]:
    """The catalog's path, and the state directory to make when the file lives there."""
    if catalog is not None:
        path = Path(catalog).expanduser().absolute()
        if path.is_dir():
            raise ConfigError(f"--catalog: {catalog!r} is a directory")
        if not path.parent.is_dir():
            raise ConfigError(f"--catalog: directory {str(path.parent)!r} does not exist")
        return path, None
    home = state_dir(Path(directory).expanduser().absolute() if directory else None)
    if home.exists() and not home.is_dir():
        raise ConfigError(f"--state-dir: {str(home)!r} is not a directory")
    return catalog_path(None, home), home


def _port(flag: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{flag}: port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} is not in 1..65535")
    return port


def _writable_dir(flag: str, text: str) -> Path:
    path = Path(text).absolute()
    if not path.is_dir():
        raise ConfigError(f"{flag}: {text!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: directory {text!r} is not writable")
    return path


def _readable_dir(flag: str, text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise ConfigError(f"{flag}: {text!r} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"{flag}: directory {text!r} is not readable")
    # Resolved, so that a path in an event is compared with the real directory.
    return path.resolve()


def _scp(values: list[str]) -> ScpTarget:
    target, port, remote_dir = values
    user, sep, host = target.rpartition("@")
    if not sep or not user or not host:
        raise ConfigError(f"--upload-scp: {target!r} is not user@host")
    if not remote_dir:
        raise ConfigError("--upload-scp: empty remote_dir")
    return ScpTarget(user, host, _port("--upload-scp", port), remote_dir)


def _ftp(values: list[str], flag: str = "--upload-ftp", ca_file: Path | None = None) -> FtpTarget:
    host, port, user, password, remote_dir = values
    if not host or not user:
        raise ConfigError(f"{flag}: empty host or user")
    if not remote_dir:
        raise ConfigError(f"{flag}: empty remote_dir")
    secret = resolve(f"{flag} password", password)
    # A line break would end the FTP command early (ftplib refuses to send it): caught here
    # rather than as an upload that fails at every attempt. The password is not shown.
    for what, text in (("host", host), ("user", user), ("password", secret.reveal()),
                       ("remote_dir", remote_dir)):
        if "\r" in text or "\n" in text:
            raise ConfigError(f"{flag}: {what} contains a line break")
    tls = flag == "--upload-ftps"
    return FtpTarget(host, _port(flag, port), user, secret, remote_dir, tls=tls,
                     ca_file=ca_file if tls else None)


def _ftps_ca(text: str) -> Path:
    path = Path(text).expanduser().absolute()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"--ftps-ca: {text!r} is not a readable file")
    try:
        tls_context(path)
    except ssl.SSLError:
        raise ConfigError(f"--ftps-ca: {text!r} holds no PEM certificate") from None
    except OSError as exc:
        raise ConfigError(f"--ftps-ca: {text!r}: {exc.strerror or exc}") from None
    return path


def _telegram(values: list[str]) -> TelegramTarget:
    token, chat_id = values
    if not chat_id:
        raise ConfigError("--notify-telegram: empty chat_id")
    return TelegramTarget(resolve("--notify-telegram bot_token", token), chat_id)


def _remote_end(spec: str) -> int | None:
    """Where the remote of an rclone spec ends (its colon): the first colon outside quotes,
    after a leading one (`:sftp,host=h:path`, `:webdav,url='http://h:8080':path`)."""
    quote = ""
    for i, c in enumerate(spec):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == ":" and i > 0:
            return i
    return None


def _rclone(specs: list[str], config: str | None) -> tuple[RcloneTarget, ...]:
    """--upload-rclone's targets; the rclone program must be there now, not at the first upload."""
    if config is not None and not specs:
        raise ConfigError("--rclone-config is for --upload-rclone, and there is none")
    if not specs:
        return ()
    program = shutil.which("rclone")
    if program is None:
        raise ConfigError("--upload-rclone: the rclone program is not installed "
                          "(sudo apt-get install rclone)")
    conf = None
    if config is not None:
        conf = Path(config).expanduser().absolute()
        if not conf.is_file() or not os.access(conf, os.R_OK):
            raise ConfigError(f"--rclone-config: {config!r} is not a readable file")
    targets = []
    for spec in specs:
        cut = _remote_end(spec)
        if cut is None or any(c in spec for c in "\n\r\0"):
            raise ConfigError(f"--upload-rclone: {spec!r} is not REMOTE:PATH")
        head, path = spec[:cut], spec[cut + 1:]
        targets.append(RcloneTarget(head + ":", path.rstrip("/") or path[:1], program, conf))
    return tuple(targets)


def default_node() -> str:
    """The host name, in the characters Home Assistant's ids allow."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "pancake"


def _mqtt(a: argparse.Namespace) -> MqttTarget | None:
    if a.mqtt is None:
        for flag, value in (("--mqtt-password", a.mqtt_password), ("--mqtt-ca", a.mqtt_ca),
                            ("--mqtt-client-id", a.mqtt_client_id),
                            ("--mqtt-node", a.mqtt_node)):
            if value is not None:
                raise ConfigError(f"{flag} is for --mqtt, and there is none")
        return None
    url = a.mqtt
    if any(c in url for c in "\r\n\0"):
        raise ConfigError("--mqtt: the URL contains a control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in MQTT_PORTS or not parts.netloc:
        raise ConfigError(f"--mqtt: {url!r} is not mqtt://[user@]host[:port] or "
                          "mqtts://[user@]host[:port]")
    try:
        if parts.password is not None:
            # Never echoed: the message names the flag, not the URL.
            raise ConfigError("--mqtt: the URL holds a password, which `ps` would show: give "
                              "it with --mqtt-password @/path/to/file or env:VARNAME")
        port = parts.port or MQTT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"--mqtt: {url!r} has a port that is not in 1..65535") from None
    host = parts.hostname
    if not host:
        raise ConfigError(f"--mqtt: {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--mqtt: {url!r}: a broker URL has no path (the topic is "
                          "--mqtt-topic)")
    user = unquote(parts.username) if parts.username else None
    password = None
    if a.mqtt_password is not None:
        if user is None:
            raise ConfigError("--mqtt-password needs a user name in the URL: mqtt://USER@host")
        try:
            password = resolve("--mqtt-password", a.mqtt_password)
        except SecretError as exc:
            raise ConfigError(str(exc)) from None
    ca = None
    if a.mqtt_ca is not None:
        if scheme != "mqtts":
            raise ConfigError("--mqtt-ca is for an mqtts:// broker")
        ca = Path(a.mqtt_ca).expanduser().absolute()
        if not ca.is_file() or not os.access(ca, os.R_OK):
            raise ConfigError(f"--mqtt-ca: {a.mqtt_ca!r} is not a readable file")
        try:
            ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError:
            raise ConfigError(f"--mqtt-ca: {a.mqtt_ca!r} holds no PEM certificate") from None
    topic = a.mqtt_topic
    if (not topic or len(topic) > 200 or any(c in topic for c in "+#\0")
            or topic.startswith("/") or topic.endswith("/") or "//" in topic
            or re.search(r"[\x00-\x1f\x7f]", topic)):
        raise ConfigError(f"--mqtt-topic: {topic!r} is not a topic (no + or #, no leading or "
                          "trailing /, at most 200 characters)")
    if a.mqtt_node is not None and not _NODE.fullmatch(a.mqtt_node):
        raise ConfigError(f"--mqtt-node: {a.mqtt_node!r}: letters, digits, _ and - only "
                          "(1 to 64)")
    node = a.mqtt_node or default_node()
    client_id = a.mqtt_client_id
    if client_id is None:
        client_id = f"pancake-{node}-{re.sub(r'[^A-Za-z0-9_-]', '_', topic)}"[:128]
    elif not 0 < len(client_id.encode()) <= 128 or re.search(r"[\x00-\x1f\x7f]", client_id):
        raise ConfigError("--mqtt-client-id: 1 to 128 bytes, no control characters")
    return MqttTarget(host, port, scheme == "mqtts", ca, user, password, topic, client_id, node)


def _check_bot_api_url(url: str) -> None:
    """An http(s) URL with a host (and a valid port, if any) that the token goes after: ending
    in /bot (the Bot API's form) or holding {token}."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 — raises ValueError for a port that is not one
    except ValueError:
        raise ConfigError(f"--telegram-api-url: {url!r} has a port that is not a number "
                          "from 1 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--telegram-api-url: {url!r} is not an http(s) URL with a host")
    if "{token}" not in url and not parts.path.endswith("/bot"):
        raise ConfigError(f"--telegram-api-url: {url!r} should end in /bot (the token is "
                          "added after it), or hold {token}")
    if parts.query or parts.fragment:
        raise ConfigError(f"--telegram-api-url: {url!r}: no ?query or #fragment")


def parse(argv: Sequence[str] | None = None) -> PostprocConfig:
    """Parse and check the command line; raise ConfigError for cross-flag and file problems."""
    a = build_parser().parse_args(argv)
    if not 0 < len(a.socket_name.encode()) <= MAX_SOCKET_NAME:
        raise ConfigError(f"socket_name: 1..{MAX_SOCKET_NAME} bytes")
    mp4_text, fps_text = a.convert
    try:
        fps = float(fps_text)
    except ValueError:
        raise ConfigError(f"--convert: fps {fps_text!r} is not a number") from None
    if not 0 < fps <= 240:
        raise ConfigError(f"--convert: fps {fps_text!r} is not in (0, 240]")
    mp4_dir = _writable_dir("--convert", mp4_text)
    minutes = tuple(a.upload_minutes or ())
    if len(set(minutes)) != len(minutes):
        raise ConfigError("--upload-minutes: a minute is repeated")
    ftps_ca = None
    if a.ftps_ca is not None:
        if not a.upload_ftps:
            raise ConfigError("--ftps-ca is for --upload-ftps, and there is none")
        ftps_ca = _ftps_ca(a.ftps_ca)
    try:
        scp = tuple(_scp(v) for v in a.upload_scp)
        ftp = tuple(_ftp(v) for v in a.upload_ftp)
        ftp += tuple(_ftp(v, "--upload-ftps", ftps_ca) for v in a.upload_ftps)
        telegram = tuple(_telegram(v) for v in a.notify_telegram)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
    rclone = _rclone(a.upload_rclone, a.rclone_config)
    triggered = a.upload_after_convert is not None or bool(minutes)
    if (scp or ftp or rclone) and not triggered:
        raise ConfigError("--upload-scp/--upload-ftp/--upload-ftps/--upload-rclone need a "
                          "trigger: --upload-after-convert or --upload-minutes")
    if triggered and not (scp or ftp or rclone):
        raise ConfigError("--upload-after-convert/--upload-minutes need a destination: "
                          "--upload-scp, --upload-ftp, --upload-ftps or --upload-rclone")
    mp4box = None
    if a.converter == "mp4box":
        mp4box = shutil.which(MP4BOX)
        if mp4box is None:
            raise ConfigError("--converter mp4box: MP4Box is not installed (gpac is not packaged "
                              "in Debian 12 / Pi OS Bookworm); use --converter pyav")
    h264_dirs = tuple(dict.fromkeys(_readable_dir("--h264-dir", d) for d in a.h264_dir))
    url = a.telegram_api_url
    _check_bot_api_url(url)
    known_hosts = Path(a.known_hosts).expanduser()
    if scp and not known_hosts.is_file():
        raise ConfigError(f"--known-hosts: {str(known_hosts)!r} does not exist; "
                          "unknown SSH hosts are refused, never added")
    ssh_key = None
    if a.ssh_key is not None:
        ssh_key = Path(a.ssh_key).expanduser().absolute()
        if not ssh_key.is_file() or not os.access(ssh_key, os.R_OK):
            raise ConfigError(f"--ssh-key: {a.ssh_key!r} is not a readable file")
    mqtt = _mqtt(a)
    catalog, home = _catalog(a.catalog, a.state_dir)
    return PostprocConfig(
        socket_name=a.socket_name,
        mp4_dir=mp4_dir,
        fps=fps,
        upload_after_convert=a.upload_after_convert,
        upload_minutes=minutes,
        upload_scp=scp,
        upload_ftp=ftp,
        upload_queue_size=a.upload_queue_size,
        notify_telegram=telegram,
        notify_queue_size=a.notify_queue_size,
        log=a.log,
        converter=a.converter,
        mp4box=mp4box,
        h264_dirs=h264_dirs,
        telegram_api_url=url,
        allow_uids=frozenset(a.allow_uid or [os.getuid()]),
        known_hosts=known_hosts,
        ssh_key=ssh_key,
        catalog=catalog,
        state_dir=home,
        upload_rclone=rclone,
        mqtt=mqtt,
    )
