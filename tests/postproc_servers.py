"""Real servers on loopback for postproc's tests: OpenSSH sshd, pyftpdlib, a Bot API server.

Also makes raw .h264 recordings (libx264 through PyAV) with their .pts sidecars, and runs
postproc.py as a child process.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import av

from raspberry_pancake.postproc.upload.worker import Mp4
from raspberry_pancake.shared.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SIDECAR_HEADER = "# timecode format v2"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value, or raise AssertionError."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


# ---------------------------------------------------------------- recordings

@lru_cache(maxsize=8)
def h264_bytes(frames: int, width: int = 320, height: int = 240, fps: int = 12,
               keyint: int = 12) -> bytes:
    """Annex-B H.264 as pancake writes it: libx264, SPS/PPS + IDR first, no B-frames."""
    import io

    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(keyint),
                          "bf": "0"}
        with av.open(f"testsrc2=size={width}x{height}:rate={fps}", format="lavfi") as src:
            for n, frame in enumerate(src.decode(video=0)):
                if n >= frames:
                    break
                # lavfi marks every frame I, and libx264 obeys a frame's type: without this
                # the stream would be all keyframes, not IDR + P frames as pancake writes.
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def write_sidecar(path: Path, times_ms: list[float]) -> Path:
    path.write_text(SIDECAR_HEADER + "\n" + "".join(f"{t:.3f}\n" for t in times_ms))
    return path


# A file the catalog does not know is converted by catch-up once unchanged this long (ledger).
SETTLED_AGE = 120.0


def make_recording(path: Path, frames: int = 24, times_ms: list[float] | None = None,
                   settled: bool = False, **kw: int) -> Path:
    """Write path (.h264) and, when times_ms is given, its .pts sidecar beside it. `settled`:
    dated two minutes back, as a file an older pancake finished while postproc was down."""
    path.write_bytes(h264_bytes(frames, **kw))
    if times_ms is not None:
        write_sidecar(path.with_suffix(".pts"), times_ms)
    if settled:
        then = time.time() - SETTLED_AGE
        os.utime(path, (then, then))
    return path


def mp4_packets(path: Path) -> list[tuple[float, bool, int]]:
    """(time in seconds, keyframe, size) of every video packet in an mp4."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        return [(float(p.pts * tb), p.is_keyframe, p.size)
                for p in c.demux(stream) if p.size and p.pts is not None]


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def frame_digests(path: Path) -> list[str]:
    """A digest of every decoded picture (same digests: same bitstream, not re-encoded)."""
    import hashlib

    fmt = "h264" if path.suffix == ".h264" else None
    with av.open(str(path), format=fmt) as c:
        return [hashlib.sha1(f.to_ndarray().tobytes()).hexdigest() for f in c.decode(video=0)]


def top_level_boxes(path: Path) -> list[str]:
    """The mp4's top-level box types in file order (moov before mdat: plays at once)."""
    boxes: list[str] = []
    with path.open("rb") as f:
        while True:
            head = f.read(8)
            if len(head) < 8:
                return boxes
            size = int.from_bytes(head[:4], "big")
            kind = head[4:].decode("latin-1")
            if size == 1:
                size = int.from_bytes(f.read(8), "big") - 8
            boxes.append(kind)
            if size < 8:
                return boxes
            f.seek(size - 8, os.SEEK_CUR)


# ---------------------------------------------------------------- postproc as a child process

class PostprocProcess:
    """postproc.py started with the given arguments, its output kept in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = log.with_suffix(".out").open("wb")
        # Its catalog in the test's directory (state/pancake/pancake.db beside the log, shared
        # by the runs of one test), never the real home's; a test may pass --catalog.
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "postproc.py"), *args, "--log", str(log)],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "XDG_STATE_HOME": str(log.parent / "state"), **(env or {})},
        )

    def log_text(self) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        return text + self.log.with_suffix(".out").read_text()

    def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        wait_for(lambda: needle in self.log_text() or self.proc.poll() is not None, timeout)
        assert needle in self.log_text(), self.log_text()

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


def default_catalog(tmp_path: Path) -> Path:
    """Where PostprocProcess's postproc keeps its catalog when the test passes no --catalog."""
    return tmp_path / "state" / "pancake" / "pancake.db"


def open_catalog(path: Path) -> Catalog:
    """The test's own handle on a catalog file (made if missing)."""
    return Catalog.open(path, owner=True)


def catalogued(catalog: Catalog, mp4: Path, camera: str = "cam") -> Mp4:
    """An mp4 as postproc would have made and recorded it: a closed recording of the same stem
    (beside the mp4, not on disk) and its conversion."""
    rid = catalog.recording_opened(camera, "continuous", mp4.with_suffix(".h264"), time.time())
    catalog.recording_closed(rid, time.time(), 12)
    catalog.converted(rid, mp4, 12, 1.0)
    return Mp4(rid, mp4)


# The password of the tests' loopback FTP server: it must never show in a log.
FTP_PASSWORD = "ftp-pass-never-shown"


def make_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """tmp_path/h264 and tmp_path/mp4, made."""
    h264, mp4 = tmp_path / "h264", tmp_path / "mp4"
    h264.mkdir()
    mp4.mkdir()
    return h264, mp4


def start_postproc(tmp_path: Path) -> tuple[PostprocProcess, str, Path, Path]:
    """The real postproc on a fresh socket name, converting tmp_path/h264 into tmp_path/mp4,
    once its socket is bound: (process, socket name, h264 dir, mp4 dir)."""
    h264, mp4 = make_dirs(tmp_path)
    name = f"pp-test-{uuid.uuid4().hex[:12]}"
    proc = PostprocProcess([name, "--convert", str(mp4), "12", "--h264-dir", str(h264)],
                           tmp_path / "postproc.log")
    try:
        wait_socket(name)
    except BaseException:
        proc.close()
        raise
    return proc, name, h264, mp4


def send_event(name: str, event: dict[str, Any] | bytes) -> None:
    data = event if isinstance(event, bytes) else json.dumps(event).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, "\0" + name)


def wait_socket(name: str, timeout: float = 15.0) -> None:
    """Wait until postproc has bound its abstract socket."""
    def bound() -> bool:
        with open("/proc/net/unix") as f:
            return any(line.rstrip().endswith(" @" + name) for line in f)
    wait_for(bound, timeout)


# ---------------------------------------------------------------- OpenSSH sshd

def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


class SshServer:
    """A real OpenSSH sshd on a free loopback port, throw-away host key, one authorized key.
    With start=False the keys and config are made but nothing listens yet (a host that is
    down); start() brings it up."""

    def __init__(self, base: Path, start: bool = True) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.host_key = base / "host_ed25519"
        self.client_key = base / "client_ed25519"
        _keygen(self.host_key)
        _keygen(self.client_key)
        (base / "authorized_keys").write_text(
            self.client_key.with_suffix(".pub").read_text())
        self.port = free_port()
        self.remote = base / "remote"
        self.remote.mkdir()
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts = base / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = base / "sshd_config"
        config.write_text("\n".join([
            f"HostKey {self.host_key}",
            "ListenAddress 127.0.0.1",
            f"AuthorizedKeysFile {base / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            f"PidFile {base / 'sshd.pid'}",
            "LogLevel ERROR",
        ]) + "\n")
        self.config = config
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self._log = (base / "sshd.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start sshd (again) on the same port with the same keys: a destination coming back."""
        if self._log.closed:
            self._log = (self.base / "sshd.log").open("ab")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config),
                                      "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("sshd exited: " + (self.base / "sshd.log").read_text())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill_sessions(self) -> int:
        """Kill every connection's sshd process (the listener stays): cuts a transfer off."""
        if self.proc is None or self.proc.poll() is not None:
            return 0
        pids = _children(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        self.kill_sessions()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def sshd_available() -> bool:
    return Path("/usr/sbin/sshd").exists() and shutil.which("ssh-keygen") is not None


# ---------------------------------------------------------------- FTP

@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # what a client is told to trust (--ftps-ca)
    server: Path  # the server's certificate chain and private key, one PEM


def make_tls(base: Path, names: tuple[str, ...] = ("127.0.0.1",),
             self_signed: bool = False) -> TlsFiles:
    """A throw-away server certificate for `names` (IP addresses or DNS names): signed by a
    throw-away CA, or self-signed (then `ca` is the certificate itself)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    base.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    if self_signed:
        issuer_key, issuer = key, name(names[0])
    else:
        issuer_key, issuer = ec.generate_private_key(ec.SECP256R1()), name("pancake test CA")
    builder = (x509.CertificateBuilder().subject_name(name(names[0])).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.BasicConstraints(ca=self_signed, path_length=None),
                              critical=True))
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    server = base / "server.pem"
    server.write_bytes(pem(cert) + key_pem)
    ca = base / "ca.pem"
    if self_signed:
        ca.write_bytes(pem(cert))
    else:
        ca_cert = (x509.CertificateBuilder().subject_name(issuer).issuer_name(issuer)
                   .public_key(issuer_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=True,
                                                crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .sign(issuer_key, hashes.SHA256()))
        ca.write_bytes(pem(ca_cert))
    return TlsFiles(ca, server)


class FtpServer:
    """pyftpdlib serving `root` for one user, in a thread, on a free loopback port.

    With `tls` (a PEM with the certificate chain and key), explicit FTPS as vsftpd and ProFTPD
    serve it by default: AUTH TLS before the login, PROT P before any transfer, and each data
    connection must resume the control connection's TLS session; a plain client is refused.
    `handler` adds or replaces attributes of the handler class (a misbehaving server).
    `close_notify=False`: each TLS data connection is closed bare, without TLS's close_notify
    (as some servers do; the client's unwrap() then meets EOF), after the reply as usual.
    `reply_after_store` replaces the server's 226 after a STOR (a server that failed it)."""

    def __init__(self, root: Path, user: str = "cam", password: str = "s3cret-ftp",
                 tls: Path | None = None, handler: dict[str, Any] | None = None,
                 close_notify: bool = True, reply_after_store: str | None = None) -> None:
        import warnings

        with warnings.catch_warnings():
            # pyftpdlib is built on asyncore/asynchat, deprecated in Python 3.11.
            warnings.simplefilter("ignore", DeprecationWarning)
            from pyftpdlib.authorizers import DummyAuthorizer
            from pyftpdlib.handlers import FTPHandler
            from pyftpdlib.ioloop import IOLoop
            from pyftpdlib.servers import ThreadedFTPServer

        root.mkdir(parents=True, exist_ok=True)
        self.root, self.user, self.password = root, user, password
        # Every file a client finished storing, server side, in order (a .part before its
        # rename): counts uploads, repeated ones included.
        self.received: list[str] = []
        received = self.received
        # Data connections over TLS, and how many of them resumed the control's session.
        self.tls_data = 0
        self.tls_resumed = 0
        self.close_notify = close_notify
        self.reply_after_store = reply_after_store
        auth = DummyAuthorizer()
        auth.add_user(user, password, str(root), perm="elradfmwMT")

        def on_file_received(_handler: object, file: str) -> None:
            received.append(os.path.basename(file))

        attrs: dict[str, Any] = {"authorizer": auth, "auth_failed_timeout": 0.1,
                                 "on_file_received": on_file_received}
        base: type = FTPHandler
        if tls is not None:
            base, attrs["dtp_handler"] = self._tls_classes()
            attrs.update(certfile=str(tls), tls_control_required=True, tls_data_required=True,
                         ssl_context=None)
        attrs.update(handler or {})
        handler_class: Any = type("Handler", (base,), attrs)
        self._dtp = handler_class.dtp_handler
        self.port = free_port()
        # Its own IOLoop and its own exit event (a class attribute of ThreadedFTPServer):
        # with the shared ones, stopping one server ended every other server's sessions.
        server_class = type("Server", (ThreadedFTPServer,),
                            {"_lock": threading.Lock(), "_exit": threading.Event()})
        self.server = server_class(("127.0.0.1", self.port), handler_class, ioloop=IOLoop())
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"timeout": 0.2, "blocking": True},
                                        name="test-ftpd", daemon=True)
        self._thread.start()

    def _tls_classes(self) -> tuple[type, type]:
        from OpenSSL._util import lib as openssl  # SSL_session_reused: pyOpenSSL has no wrapper
        from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

        server = self

        class ResumingDTP(TLS_DTPHandler):  # type: ignore[misc]
            def close(self) -> None:
                resp: Any = getattr(self, "_resp", None)  # pyftpdlib's (reply, log) to send
                if self.receive and server.reply_after_store is not None and resp:
                    self._resp = (server.reply_after_store, resp[1])
                if not server.close_notify:
                    # pyftpdlib's close() sends close_notify while TLS is up: say it is not.
                    self._ssl_established = False
                super().close()

            def handle_ssl_established(self) -> None:
                server.tls_data += 1
                if openssl.SSL_session_reused(self.socket._ssl):
                    server.tls_resumed += 1
                    return
                # vsftpd's require_ssl_reuse: the data connection is dropped, the STOR fails.
                self.cmd_channel.respond("522 SSL connection failed: session reuse required")
                self.close()

        return TLS_FTPHandler, ResumingDTP

    def throttle(self, bytes_per_second: int | None) -> None:
        """Slow every data transfer started from now on to this rate (None: full speed)."""
        if bytes_per_second is None:
            self.server.handler.dtp_handler = self._dtp
            return
        from pyftpdlib.handlers import ThrottledDTPHandler

        self.server.handler.dtp_handler = type("Slow", (ThrottledDTPHandler,),
                                               {"read_limit": bytes_per_second})

    def stop(self) -> None:
        self.server.close_all()
        self._thread.join(5)


class StallingServer:
    """Accepts TCP connections on loopback and never says a word (an FTP server that hangs).
    With `script`, it first sends script[0], then answers each line it reads with the next
    entry, and then falls silent (a server that hangs later in the dialogue)."""

    def __init__(self, script: list[bytes] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.script = list(script or [])
        self.lines_read = 0
        self._stop = threading.Event()
        self._talkers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="test-stall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)
            if self.script:
                talker = threading.Thread(target=self._talk, args=(conn,),
                                          name="test-stall-talk", daemon=True)
                self._talkers.append(talker)
                talker.start()

    def _talk(self, conn: socket.socket) -> None:
        replies = iter(self.script)
        with contextlib.suppress(OSError):
            conn.sendall(next(replies))
            conn.settimeout(0.1)
            buf = b""
            for reply in replies:
                while b"\n" not in buf:
                    if self._stop.is_set():
                        return
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\n", 1)[1]
                self.lines_read += 1
                conn.sendall(reply)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for t in self._talkers:
            t.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


# ---------------------------------------------------------------- Telegram Bot API

@dataclass
class BotCall:
    at: float  # time.time() when the request arrived
    token: str
    method: str
    fields: dict[str, str]
    files: dict[str, int]  # multipart file field -> bytes received
    status: int


@dataclass
class _Plan:
    """Scripted answers: per method, a list of (status, extra JSON) used before the 200s."""

    answers: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)


class FakeBotApi:
    """A local HTTP server speaking enough of the Bot API (sendMessage, sendPhoto, sendVideo,
    getMe) for notify's Bot API client: records every call; answers can be scripted (429, 400…)."""

    def __init__(self) -> None:
        self.calls: list[BotCall] = []
        self.plan = _Plan()
        self._lock = threading.Lock()
        self._next_id = 1
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                api._handle(self)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/bot"
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-botapi",
                                        daemon=True)
        self._thread.start()

    def script(self, method: str, *answers: tuple[int, dict[str, Any]]) -> None:
        with self._lock:
            self.plan.answers.setdefault(method, []).extend(answers)

    def calls_to(self, method: str, status: int | None = 200) -> list[BotCall]:
        with self._lock:
            return [c for c in self.calls
                    if c.method == method and (status is None or c.status == status)]

    def edge_alerts(self) -> list[BotCall]:
        """Detection texts, whether sent as a message or as a snapshot's caption."""
        with self._lock:
            return [c for c in self.calls
                    if c.status == 200 and c.method in ("sendMessage", "sendPhoto")
                    and (c.fields.get("text") or c.fields.get("caption") or "")
                    .startswith("Detection")]

    def _parse(self, handler: BaseHTTPRequestHandler) -> tuple[dict[str, str], dict[str, int]]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        ctype = handler.headers.get("Content-Type", "")
        fields: dict[str, str] = {}
        files: dict[str, int] = {}
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition") or ""
                raw = part.get_payload(decode=True)
                payload = raw if isinstance(raw, bytes) else b""
                if part.get_filename():
                    files[str(name)] = len(payload)
                else:
                    fields[str(name)] = payload.decode("utf-8", "replace")
        elif ctype.startswith("application/json"):
            fields = {k: str(v) for k, v in json.loads(body or b"{}").items()}
        else:
            fields = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        return fields, files

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        at = time.time()
        path = handler.path.split("?", 1)[0].strip("/")
        token, _, method = path.partition("/")
        token = token.removeprefix("bot")
        fields, files = self._parse(handler)
        with self._lock:
            answers = self.plan.answers.get(method)
            status, extra = answers.pop(0) if answers else (200, {})
            message_id = self._next_id
            self._next_id += 1
            self.calls.append(BotCall(at, token, method, fields, files, status))
        if status == 200:
            result: Any
            if method == "getMe":
                result = {"id": 1, "is_bot": True, "first_name": "cam", "username": "cam_bot"}
            else:
                result = {"message_id": message_id, "date": int(at),
                          "chat": {"id": int(fields.get("chat_id", "1") or 1),
                                   "type": "private"}}
            reply: dict[str, Any] = {"ok": True, "result": result}
        else:
            reply = {"ok": False, "error_code": status,
                     "description": extra.get("description", f"error {status}")}
            if "retry_after" in extra:
                reply["parameters"] = {"retry_after": extra["retry_after"]}
        data = json.dumps(reply).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def bot_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi()
    try:
        yield api
    finally:
        api.stop()


# ---------------------------------------------------------------- MQTT: Mosquitto

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK) and os.access(MOSQUITTO_PASSWD, os.X_OK)


class Mosquitto:
    """Debian's mosquitto on a loopback port, logins from a password file only (no anonymous
    clients), nothing persisted: a restart forgets every retained message, so what a client
    sees retained after one was published again."""

    def __init__(self, base: Path, users: dict[str, str], tls: TlsFiles | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.port = free_port()
        # With `tls`, a second listener speaks MQTT over TLS (mqtts://) with that certificate.
        self.tls_port = free_port() if tls is not None else None
        self.log = base / "mosquitto.log"
        passwd = base / "passwd"
        for i, (user, password) in enumerate(users.items()):
            subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd),
                            user, password], check=True, capture_output=True)
        passwd.chmod(0o600)
        self.conf = base / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (f"listener {self.tls_port} 127.0.0.1\ncertfile {tls.server}\n"
               f"keyfile {tls.server}\n" if tls is not None else "")
            + "allow_anonymous false\n"
            f"password_file {passwd}\n"
            "persistence false\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            # Run as root by the tests' container: stay so, to read the files above.
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10)

    def _listening(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@dataclass
class MqttMessage:
    at: float  # time.monotonic() when it arrived
    topic: str
    payload: bytes
    retain: bool
    wall: float = 0.0  # time.time() when it arrived


class MqttWatcher:
    """A paho subscriber on the test's broker that keeps every message, and reconnects by
    itself (paho's loop_start) when the broker comes back."""

    def __init__(self, port: int, user: str, password: str, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[MqttMessage] = []
        self._lock = threading.Lock()
        self.connects = 0
        self._topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"test-watch-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(lambda: self.connects, 10)

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _props: Any) -> None:
        if not reason.is_failure:
            for t in self._topics:
                client.subscribe(t, qos=1)
            self.connects += 1

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(MqttMessage(time.monotonic(), msg.topic, bytes(msg.payload),
                                             bool(msg.retain), time.time()))

    def on(self, topic: str) -> list[MqttMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def matching(self, prefix: str) -> list[MqttMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1].payload if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
