"""MQTT publisher: detections, events, snapshots and health per camera, with Home Assistant discovery."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from raspberry_pancake.postproc.config import MqttTarget
from raspberry_pancake.postproc.supervise import StageThread
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)

DEFAULT_CAMERA = "cam"
DISCOVERY_PREFIX = "homeassistant"
# What waits while the broker is away: the newest messages are kept, the oldest dropped (the
# retained state is kept apart and is always re-published whole on reconnect).
QUEUE_SIZE = 100
# Messages handed to paho and not yet acknowledged by the broker: beyond this, ours wait in
# our own bounded queue rather than pile up in paho's unbounded one.
MAX_UNACKED = 20
KEEPALIVE = 30
CONNECT_TIMEOUT = 3.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# The stop deadline is 4.5 s: the `offline` and the DISCONNECT get at most this long.
FLUSH_AT_STOP = 1.0
# A snapshot over this is not a snapshot (pancake writes ~50 KB JPEGs); brokers cap at 256 MB
# and Home Assistant would choke long before.
MAX_SNAPSHOT = 8 * 1024 * 1024
# Camera names as DESIGN.md "Cameras and names" defines them: safe in a topic and in an id.
_CAMERA = re.compile(r"[a-z0-9_-]{1,32}")
QOS = 1
CHANNEL = "mqtt"
# pancake writes the event into the catalog as it sends the edge: how long a publication
# looks for it before it gives up on recording it.
RECORD_WITHIN = 10.0


@dataclass(frozen=True, slots=True)
class _Out:
    topic: str
    payload: bytes | Path  # a Path is a snapshot, read when it is sent
    retain: bool
    event: tuple[str, float] | None = None  # (camera, rise) of a detection's start


def camera_of(event: Mapping[str, object]) -> str:
    """A message's camera; one without `camera` is camera `cam` (DESIGN.md "Cameras and names")."""
    name = event.get("camera")
    return name if isinstance(name, str) else DEFAULT_CAMERA


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def event_payload(kind: str, camera: str, event: Mapping[str, object],
                  **extra: object) -> dict[str, Any]:
    """The JSON published on <topic>/<camera>/event. `type` is start, update, end or clip;
    labels, names and boxes are always there (empty lists when the detector said nothing), so
    a Home Assistant template never meets a missing key."""
    out: dict[str, Any] = {"type": kind, "camera": camera}
    when = event.get("time")
    if isinstance(when, int | float) and not isinstance(when, bool):
        out["time"] = when
    out["labels"] = _strings(event.get("labels"))
    out["names"] = _strings(event.get("names"))
    boxes = event.get("boxes")
    out["boxes"] = boxes if isinstance(boxes, list) else []
    score = event.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        out["score"] = score
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


class Topics:
    """Every topic and Home Assistant discovery config, from --mqtt-topic and --mqtt-node.

    Commands are a later step; they will live under <topic>/<camera>/set/<what> (for instance
    set/armed = ON/OFF, its state on <topic>/<camera>/armed), which nothing here publishes to.
    """

    def __init__(self, base: str, node: str) -> None:
        self.base = base
        self.node = node
        self.availability = f"{base}/availability"

    def detection(self, camera: str) -> str:
        return f"{self.base}/{camera}/detection"

    def event(self, camera: str) -> str:
        return f"{self.base}/{camera}/event"

    def snapshot(self, camera: str) -> str:
        return f"{self.base}/{camera}/snapshot"

    def health(self, camera: str) -> str:
        return f"{self.base}/{camera}/health"

    def names(self, camera: str) -> str:
        """Who was last recognised ("Anna, unknown"): retained, published only by detections
        that name somebody, so it keeps the last names across detections and restarts."""
        return f"{self.base}/{camera}/names"

    def discovery(self, camera: str, title: str | None,
                  occupancy: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """(config topic, config) for each entity of one camera's device."""
        device = {"identifiers": [f"pancake_{self.node}_{camera}"],
                  "name": title or camera,
                  "manufacturer": "Raspberry Pancake",
                  "model": f"camera {camera} on {self.node}"}
        common = {"availability_topic": self.availability, "payload_available": "online",
                  "payload_not_available": "offline", "device": device,
                  "origin": {"name": "Raspberry Pancake postproc"}}

        def entity(component: str, key: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            uid = f"pancake_{self.node}_{camera}_{key}"
            topic = f"{DISCOVERY_PREFIX}/{component}/pancake_{self.node}/{camera}_{key}/config"
            # No object_id: Home Assistant names the entity from the device and the entity
            # ("binary_sensor.front_door_detection").
            return topic, {**config, "unique_id": uid, **common}

        return [
            entity("binary_sensor", "detection", {
                "name": "Detection", "state_topic": self.detection(camera),
                "payload_on": "ON", "payload_off": "OFF",
                "device_class": "occupancy" if occupancy else "motion"}),
            entity("image", "snapshot", {
                "name": "Snapshot", "image_topic": self.snapshot(camera),
                "content_type": "image/jpeg"}),
            entity("sensor", "names", {
                "name": "Last seen", "state_topic": self.names(camera), "icon": "mdi:account"}),
            entity("sensor", "health", {
                "name": "Health", "state_topic": self.health(camera),
                "device_class": "enum", "options": ["live", "delay", "error", "offline"],
                "entity_category": "diagnostic"}),
        ]


def _reason(code: ReasonCode | int) -> str:
    if isinstance(code, ReasonCode):
        # paho's word for a connection that simply closed (the broker went away).
        return "the connection closed" if code.value == 128 else str(code)
    return paho.connack_string(code)


class Publisher:
    """One broker connection, in its own thread ("mqtt"), with its own bounded queue.

    Callers (the receiver and converter threads) only put messages in the queue and never
    wait: a broker that is down or slow delays nothing else. The retained state (discovery
    configs, detection ON/OFF, health) is also kept here and re-published whole on every
    (re)connect, after `online` on the availability topic (whose last will is `offline`).
    """

    def __init__(self, target: MqttTarget, stop: threading.Event,
                 title: Callable[[str], str | None] | None = None,
                 record: Callable[[str, float, str], bool] | None = None,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.target = target
        self.topics = Topics(target.topic, target.node)
        self._stop = stop
        self._title = title
        self._record = record
        self._unrecorded: list[tuple[str, float, float]] = []  # camera, rise, give up at
        self._lock = threading.Lock()  # guards the queue, the retained state and the cameras
        self._queue: deque[_Out] = deque()
        self._queue_size = queue_size
        self._retained: dict[str, bytes] = {}
        self._cameras: set[str] = set()
        self._occupancy: set[str] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._limiter = RateLimiter()
        self._thread = StageThread("mqtt", self._run)
        self._connected = False
        self._fresh = False  # CONNACK accepted: the loop publishes the retained state
        self._unacked = 0
        self._backoff = BACKOFF_FIRST
        self._refusals = 0
        self.connects = 0
        self.published = 0
        self.dropped = 0

    # ---- for postproc's other threads: never blocking

    @property
    def thread(self) -> StageThread:
        """For the supervisor, which restarts it."""
        return self._thread

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> bool:
        done = self._thread.join(timeout)
        if done:
            self._wake_r.close()
            self._wake_w.close()
        return done

    def cameras(self, names: Iterable[str]) -> None:
        """Announce cameras to Home Assistant (the catalog's, at start)."""
        for name in names:
            self._camera(name)

    def edge(self, event: Mapping[str, object], jpeg: Path | None) -> None:
        """A detection edge: ON/OFF (retained), the event, and the edge's snapshot."""
        camera = self._camera(camera_of(event))
        if camera is None:
            return
        on = event.get("detection") is True
        self._live_if_unknown(camera)
        self._faces(camera, event)
        self._put(self.topics.detection(camera), b"ON" if on else b"OFF", retain=True)
        self._names(camera, event)
        when = event.get("time")
        rise = (camera, float(when)) if on and isinstance(when, int | float) else None
        self._put_event(event_payload("start" if on else "end", camera, event), camera, rise)
        if jpeg is not None:
            self._put(self.topics.snapshot(camera), jpeg)

    def update(self, event: Mapping[str, object]) -> None:
        """New labels or names while a detection is on."""
        camera = self._camera(camera_of(event))
        if camera is None:
            return
        self._faces(camera, event)
        self._names(camera, event)
        self._put_event(event_payload("update", camera, event), camera)

    def clip(self, event: Mapping[str, object], mp4: Path) -> None:
        """The clip around a detection, converted: the event again, with its mp4."""
        camera = self._camera(camera_of(event))
        if camera is None:
            return
        h264 = event.get("h264")
        self._put_event(event_payload("clip", camera, event, mp4=str(mp4),
                                      h264=h264 if isinstance(h264, str) else None), camera)

    def health(self, event: Mapping[str, object]) -> None:
        camera = self._camera(camera_of(event))
        state = event.get("health")
        if camera is None or not isinstance(state, str):
            return
        self._put(self.topics.health(camera), state.encode(), retain=True)

    def seen(self, event: Mapping[str, object]) -> None:
        """Any other message from a camera: it is announced, and counts as live when its health
        is not known yet (it is sending, so it delivers frames)."""
        camera = self._camera(camera_of(event))
        if camera is not None:
            self._live_if_unknown(camera)

    def _live_if_unknown(self, camera: str) -> None:
        topic = self.topics.health(camera)
        with self._lock:
            known = topic in self._retained
        if not known:
            self._put(topic, b"live", retain=True)

    def _names(self, camera: str, event: Mapping[str, object]) -> None:
        names = list(dict.fromkeys(_strings(event.get("names"))))
        if names:
            self._put(self.topics.names(camera), ", ".join(names).encode(), retain=True)

    def _put_event(self, payload: dict[str, Any], camera: str,
                   rise: tuple[str, float] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        self._put(self.topics.event(camera), data, event=rise)

    def _camera(self, name: str) -> str | None:
        """The camera's name once its discovery configs are queued; None for a name that is
        not one (a topic wildcard, a slash), which is dropped with a line."""
        if not _CAMERA.fullmatch(name):
            self._limiter.log(log, logging.WARNING, "camera", "MQTT: camera name %r is not "
                              "[a-z0-9_-]{1,32}: not published", name)
            return None
        with self._lock:
            if name in self._cameras:
                return name
            self._cameras.add(name)
        self._discover(name)
        return name

    def _discover(self, camera: str) -> None:
        title = None
        if self._title is not None:
            try:
                title = self._title(camera)
            except Exception as exc:  # noqa: BLE001 - a catalog read: the name will do
                log.warning("MQTT: no title for camera %s: %s", camera, exc)
        with self._lock:
            occupancy = camera in self._occupancy
        for topic, config in self.topics.discovery(camera, title, occupancy):
            self._put(topic, json.dumps(config, separators=(",", ":")).encode(), retain=True)

    def _faces(self, camera: str, event: Mapping[str, object]) -> None:
        """A camera whose detections see faces becomes an occupancy sensor in Home Assistant."""
        if "face" not in _strings(event.get("labels")) and not _strings(event.get("names")):
            return
        with self._lock:
            if camera in self._occupancy:
                return
            self._occupancy.add(camera)
        self._discover(camera)

    def _put(self, topic: str, payload: bytes | Path, retain: bool = False,
             event: tuple[str, float] | None = None) -> None:
        item = _Out(topic, payload, retain, event)
        with self._lock:
            if retain and isinstance(payload, bytes):
                self._retained[topic] = payload
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                dropped = True
            else:
                dropped = False
            self._queue.append(item)
        if dropped:
            self._limiter.log(log, logging.WARNING, "full", "MQTT: queue full (%d waiting for "
                              "%s): dropped the oldest message", self._queue_size,
                              self.target.label)
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake, or stopping

    # ---- the mqtt thread

    def _client(self) -> paho.Client:
        t = self.target
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=t.client_id,
                             protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        client.connect_timeout = CONNECT_TIMEOUT
        if t.username is not None:
            client.username_pw_set(t.username,
                                   t.password.reveal() if t.password is not None else None)
        client.will_set(self.topics.availability, b"offline", qos=QOS, retain=True)
        if t.tls:
            client.tls_set(ca_certs=str(t.ca_file) if t.ca_file is not None else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(t.host, t.port, keepalive=KEEPALIVE)
        return client

    def _on_connect(self, _client: paho.Client, _userdata: object, _flags: object,
                    reason: ReasonCode, _props: object) -> None:
        if reason.is_failure:
            self._refusals += 1
            what = ("check the user in --mqtt and --mqtt-password"
                    if reason.value in (4, 5, 134, 135) else "")
            log.error("MQTT %s refused the connection: %s%s; retry in %g s (attempt %d)",
                      self.target.label, _reason(reason), f" ({what})" if what else "",
                      self._backoff, self._refusals)
            return
        self._connected = True
        self._fresh = True
        self.connects += 1
        self._refusals = 0
        self._backoff = BACKOFF_FIRST
        log.info("MQTT: %s %s as %s", "connected to" if self.connects == 1 else "reconnected to",
                 self.target.label, self.target.client_id)

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: object,
                       reason: ReasonCode, _props: object) -> None:
        was = self._connected
        self._connected = False
        if was and not self._stop.is_set():
            log.warning("MQTT: lost %s (%s); reconnecting", self.target.label, _reason(reason))

    def _on_publish(self, _client: paho.Client, _userdata: object, _mid: int,
                    _reason: ReasonCode, _props: object) -> None:
        self._unacked = max(0, self._unacked - 1)

    def _run(self) -> None:
        client = self._client()
        next_try = 0.0
        try:
            while not self._stop.is_set():
                sock = client.socket()
                if sock is None:
                    self._connected = False
                    now = time.monotonic()
                    if now < next_try:
                        self._stop.wait(min(next_try - now, 0.25))
                        continue
                    if not self._connect(client):
                        next_try = time.monotonic() + self._backoff
                        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                    continue
                self._io(client, sock)
                if client.socket() is None:
                    # Lost (or refused at CONNACK): wait before the next attempt.
                    next_try = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                    continue
                if self._fresh:
                    self._fresh = False
                    self._republish(client)
                if self._connected:
                    self._send(client)
                self._record_pending()
        finally:
            self._close(client)

    def _connect(self, client: paho.Client) -> bool:
        """One attempt; False when the broker cannot be reached (logged)."""
        try:
            client.reconnect()
        except ssl.SSLCertVerificationError as exc:
            self._limiter.log(log, logging.ERROR, "connect", "MQTT: %s: the broker's "
                              "certificate is not trusted: %s (--mqtt-ca names the CA that "
                              "signed it); retry in %g s", self.target.label,
                              exc.verify_message or exc, self._backoff)
            return False
        except OSError as exc:  # ssl.SSLError included
            text = exc.strerror or str(exc) or type(exc).__name__
            self._limiter.log(log, logging.WARNING, "connect", "MQTT: cannot reach %s: %s; "
                              "retry in %g s", self.target.label, text, self._backoff)
            return False
        return True

    def _io(self, client: paho.Client, sock: Any, timeout: float = 1.0) -> None:
        """Wait for the broker, a queued message or a second (paho's keepalive), then let paho
        read, write and ping."""
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        wlist = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select([sock, self._wake_r], wlist, [],
                                                  0.0 if pending else timeout)
        except (OSError, ValueError):
            readable, writable = [sock], []  # closed under us: paho's read says so
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if pending or sock in readable:
            client.loop_read()
        if client.socket() is not None and (sock in writable or client.want_write()):
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()

    def _republish(self, client: paho.Client) -> None:
        """On every (re)connect: `online`, then the whole retained state. Retained messages
        still queued are older than that state, so they go (an ON then OFF replayed now would
        show a detection that is long over)."""
        self._unacked = 0
        with self._lock:
            self._queue = deque(o for o in self._queue if not o.retain)
            state = list(self._retained.items())
        self._publish(client, _Out(self.topics.availability, b"online", True))
        for topic, payload in state:
            self._publish(client, _Out(topic, payload, True))

    def _send(self, client: paho.Client) -> None:
        while self._unacked < MAX_UNACKED and client.socket() is not None:
            with self._lock:
                if not self._queue:
                    return
                item = self._queue.popleft()
            self._publish(client, item)

    def _publish(self, client: paho.Client, item: _Out) -> None:
        payload = item.payload
        if isinstance(payload, Path):
            try:
                with payload.open("rb") as f:
                    data = f.read(MAX_SNAPSHOT + 1)
            except OSError as exc:
                self._limiter.log(log, logging.WARNING, "snapshot", "MQTT: snapshot %s not "
                                  "published: %s", payload, exc.strerror or exc)
                return
            if len(data) > MAX_SNAPSHOT:
                self._limiter.log(log, logging.WARNING, "snapshot", "MQTT: snapshot %s not "
                                  "published: over %d bytes", payload, MAX_SNAPSHOT)
                return
            payload = data
        info = client.publish(item.topic, payload, qos=QOS, retain=item.retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._unacked += 1
            self.published += 1
            if item.event is not None and self._record is not None:
                self._unrecorded.append((*item.event, time.monotonic() + RECORD_WITHIN))
        elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # QoS 1: paho keeps it and sends it once connected again.
            self._unacked += 1
        else:
            self._limiter.log(log, logging.WARNING, "publish", "MQTT: %s not published: %s",
                              item.topic, paho.error_string(info.rc))

    def _record_pending(self) -> None:
        """The catalog's record of each detection published; an event pancake has not written
        yet is looked for again at the next turn (at least once a second), for a while."""
        if not self._unrecorded or self._record is None:
            return
        left = []
        for camera, rise, give_up in self._unrecorded:
            try:
                if self._record(camera, rise, CHANNEL):
                    continue
            except Exception as exc:  # noqa: BLE001 - the catalog's trouble: it was published
                log.warning("MQTT: publication not recorded in the catalog: %s", exc)
                continue
            if time.monotonic() < give_up:
                left.append((camera, rise, give_up))
            else:
                self._limiter.log(log, logging.WARNING, "unrecorded", "MQTT: publication "
                                  "not recorded: the catalog has no event of camera %s at "
                                  "%.3f", camera, rise)
        self._unrecorded = left

    def _close(self, client: paho.Client) -> None:
        """A clean stop says `offline` itself (the last will is only for a lost connection)."""
        if client.socket() is not None and self._connected:
            self._publish(client, _Out(self.topics.availability, b"offline", True))
            end = time.monotonic() + FLUSH_AT_STOP
            while (self._unacked and client.socket() is not None
                   and time.monotonic() < end):
                self._io(client, client.socket(), 0.05)
            left = len(self._queue)
            if left:
                log.info("MQTT: %d message(s) not published at stop", left)
        try:
            client.disconnect()
            if client.socket() is not None:
                client.loop_write()
        except OSError:
            pass
        self._connected = False
