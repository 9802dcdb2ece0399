"""postproc → a real Mosquitto on loopback: detections, events, snapshots, Home Assistant discovery."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pancake, run_pancake, schedule_customize
from PIL import Image

from raspberry_pancake.postproc.config import parse
from raspberry_pancake.shared.cli import ConfigError
from tests.postproc_servers import (
    Mosquitto,
    MqttWatcher,
    PostprocProcess,
    bot_api,
    default_catalog,
    make_dirs,
    make_recording,
    make_tls,
    mosquitto_available,
    open_catalog,
    send_event,
    wait_for,
    wait_socket,
)

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

USER, PASSWORD = "pancake", "mqtt-pass-never-shown"
WATCHER, WATCHER_PASSWORD = "watcher", "watcher-pass"
TOKEN = "777:MQTT-test-token"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the module: each test publishes under its own --mqtt-topic and node."""
    base = tmp_path_factory.mktemp("mosquitto")
    server = Mosquitto(base, {USER: PASSWORD, WATCHER: WATCHER_PASSWORD},
                       tls=make_tls(base / "tls"))
    yield server
    server.stop()


@pytest.fixture
def ids() -> tuple[str, str]:
    """A topic and a node of the test's own, so retained messages of another test never count."""
    tag = uuid.uuid4().hex[:8]
    return f"pk-{tag}", f"node-{tag}"


def _watch(broker: Mosquitto, topic: str, node: str) -> MqttWatcher:
    return MqttWatcher(broker.port, WATCHER, WATCHER_PASSWORD,
                       [f"{topic}/#", f"homeassistant/+/pancake_{node}/#"])


def _postproc(tmp_path: Path, broker: Mosquitto, topic: str, node: str,
              password: str = PASSWORD, extra: list[str] | None = None,
              env: dict[str, str] | None = None, url: str | None = None
              ) -> tuple[PostprocProcess, str, Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    h264, mp4 = make_dirs(tmp_path)
    secret = tmp_path / "mqtt-password"
    secret.write_text(password + "\n")
    name = f"pp-mqtt-{uuid.uuid4().hex[:10]}"
    proc = PostprocProcess(
        [name, "--convert", str(mp4), "12", "--h264-dir", str(h264),
         "--mqtt", url or f"mqtt://{USER}@127.0.0.1:{broker.port}",
         "--mqtt-password", f"@{secret}",
         "--mqtt-topic", topic, "--mqtt-node", node, *(extra or [])],
        tmp_path / "postproc.log", env=env)
    try:
        wait_socket(name)
    except BaseException:
        proc.close()
        raise
    return proc, name, h264, mp4


def _configs(watch: MqttWatcher, node: str) -> dict[str, dict[str, object]]:
    """The latest discovery config of each entity, all retained."""
    out: dict[str, dict[str, object]] = {}
    for m in watch.matching("homeassistant/"):
        if m.payload:
            out[m.topic] = json.loads(m.payload)
    return out


def _secret_hidden(proc: PostprocProcess, password: str) -> None:
    assert password not in proc.log_text()
    cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline
    assert b"--mqtt-password" in cmdline  # it is the process we think


def test_pancake_edges_reach_mqtt_with_discovery(tmp_path: Path, broker: Mosquitto,
                                                 ids: tuple[str, str],
                                                 pancakes: list[Pancake]) -> None:
    topic, node = ids
    watch = _watch(broker, topic, node)
    post, name, h264, mp4 = _postproc(tmp_path, broker, topic, node)
    try:
        wait_for(lambda: watch.last(f"{topic}/availability") == b"online", 15)
        t0 = time.time() + 4.0
        custom = schedule_customize(tmp_path / "customize.py", [(0.0, 3.0)], t0)
        pancake = run_pancake(pancakes, [
            "--source", "testsrc", "--fps", "12", "--record-detection", "edge", str(h264),
            "--detect", "no-image", "--customize", str(custom), "--emit", name], tmp_path)
        det = f"{topic}/cam/detection"
        wait_for(lambda: watch.last(det) == b"OFF", 30)
        on = [m for m in watch.on(det) if m.payload == b"ON"]
        off = [m for m in watch.on(det) if m.payload == b"OFF"]
        assert len(on) == 1 and len(off) == 1 and on[0].at < off[0].at
        events = wait_for(lambda: len(watch.on(f"{topic}/cam/event")) >= 2
                          and [json.loads(m.payload) for m in watch.on(f"{topic}/cam/event")], 10)
        assert [e["type"] for e in events[:2]] == ["start", "end"]
        # The edge is stamped once detect() turned True (at t0), not before.
        assert events[0]["camera"] == "cam" and t0 - 0.5 <= events[0]["time"] < t0 + 2.0
        for e in events:
            assert isinstance(e["labels"], list) and isinstance(e["names"], list)
            assert isinstance(e["boxes"], list)
        # The edge's snapshot, as bytes: a JPEG that decodes.
        shots = wait_for(lambda: watch.on(f"{topic}/cam/snapshot"), 10)
        picture = Image.open(io.BytesIO(shots[0].payload))
        picture.load()
        assert picture.format == "JPEG" and picture.width > 0
        # The clip, once converted: the event again with its mp4.
        pancake.stop()
        clip = wait_for(lambda: [e for e in (json.loads(m.payload) for m in
                                             watch.on(f"{topic}/cam/event"))
                                 if e["type"] == "clip"], 30)[0]
        assert Path(clip["mp4"]).is_relative_to(mp4) and Path(clip["mp4"]).exists()
        # Discovery: one device, four entities, every topic they name published.
        configs = _configs(watch, node)
        assert len(configs) == 4, configs.keys()
        # Retained: a subscriber arriving now (Home Assistant starting) gets them all, and the
        # detection, health and availability states.
        late = _watch(broker, topic, node)
        try:
            wanted = {*configs, det, f"{topic}/cam/health", f"{topic}/availability"}
            wait_for(lambda: wanted <= {m.topic for m in late.messages if m.retain}, 10)
            assert late.last(det) == b"OFF"
        finally:
            late.close()
        kinds = sorted(t.split("/")[1] for t in configs)
        assert kinds == ["binary_sensor", "image", "sensor", "sensor"]
        seen = {m.topic for m in watch.matching(f"{topic}/")}
        for cfg in configs.values():
            state = cfg.get("state_topic") or cfg.get("image_topic")
            # Nobody was recognised (a detect() that returns True): no names yet.
            assert state in seen or state == f"{topic}/cam/names", (state, seen)
            assert cfg["availability_topic"] == f"{topic}/availability" in seen
            assert node in str(cfg["unique_id"])
            device = cfg["device"]
            assert isinstance(device, dict)
            assert device["identifiers"] == [f"pancake_{node}_cam"]
        binary = next(c for t, c in configs.items() if "/binary_sensor/" in t)
        assert binary["state_topic"] == det and binary["device_class"] == "motion"
        assert watch.last(f"{topic}/cam/health") == b"live"
        _secret_hidden(post, PASSWORD)
    finally:
        code = post.terminate()
        watch.close()
    assert code == 0
    # A clean stop says offline itself, retained.
    assert watch.last(f"{topic}/availability") == b"offline"


def test_broker_restart_reconnects_and_never_delays_conversion(
        tmp_path: Path, broker: Mosquitto, ids: tuple[str, str]) -> None:
    topic, node = ids
    watch = _watch(broker, topic, node)
    post, name, h264, mp4 = _postproc(tmp_path, broker, topic, node)
    try:
        wait_for(lambda: watch.last(f"{topic}/availability") == b"online", 15)
        send_event(name, {"detection": True, "time": time.time(), "camera": "front"})
        wait_for(lambda: watch.last(f"{topic}/front/detection") == b"ON", 10)
        broker.stop()
        down = time.monotonic()
        # With the broker gone: a recording is converted as fast as ever, and an edge waits.
        rec = make_recording(h264 / "20260101-120000.h264")
        send_event(name, {"h264": str(rec), "camera": "front"})
        wait_for(lambda: list(mp4.rglob("20260101-120000.mp4")), 15)
        converted_in = time.monotonic() - down
        send_event(name, {"detection": False, "time": time.time(), "camera": "front"})
        time.sleep(1.0)
        before = len(watch.messages)
        broker.start()
        # The broker forgot everything (no persistence): what it holds now postproc sent again.
        wait_for(lambda: [m for m in watch.messages[before:]
                          if m.topic == f"{topic}/availability" and m.payload == b"online"], 30)
        wait_for(lambda: watch.last(f"{topic}/front/detection") == b"OFF", 10)
        after = [m for m in watch.messages[before:]]
        assert [m.payload for m in after if m.topic == f"{topic}/front/detection"] == [b"OFF"]
        assert any(m.topic.startswith("homeassistant/binary_sensor/") for m in after)
        events = [json.loads(m.payload) for m in after if m.topic == f"{topic}/front/event"]
        assert [e["type"] for e in events] == ["end"]
        log = post.log_text()
        assert "MQTT: lost mqtt://pancake@127.0.0.1" in log
        assert "MQTT: reconnected to" in log
    finally:
        if broker.proc is None:
            broker.start()  # the next test shares it
        assert post.terminate() == 0
        watch.close()
    assert converted_in < 10.0


def test_wrong_password_is_one_clear_line_retried_with_backoff(
        tmp_path: Path, broker: Mosquitto, ids: tuple[str, str]) -> None:
    topic, node = ids
    wrong = "wrong-pass-never-shown"
    post, name, h264, mp4 = _postproc(tmp_path, broker, topic, node, password=wrong)
    try:
        post.wait_log("(attempt 3)", 20)
        lines = [ln for ln in post.log_text().splitlines() if "refused the connection" in ln]
        assert "Not authorized" in lines[0] or "Bad user name or password" in lines[0], lines
        assert "check the user in --mqtt and --mqtt-password" in lines[0]
        # 1 s, then 2 s: backoff, not a tight loop.
        stamps = [time.mktime(time.strptime(ln[:19], "%Y-%m-%d %H:%M:%S")) for ln in lines[:3]]
        assert stamps[2] - stamps[0] >= 2.0, lines
        # And the rest of postproc goes on.
        rec = make_recording(h264 / "20260101-130000.h264")
        send_event(name, {"h264": str(rec)})
        wait_for(lambda: list(mp4.rglob("20260101-130000.mp4")), 15)
        _secret_hidden(post, wrong)
    finally:
        assert post.terminate() == 0


def test_mqtts_checks_the_broker_certificate(tmp_path: Path, broker: Mosquitto,
                                             ids: tuple[str, str]) -> None:
    topic, node = ids
    url = f"mqtts://{USER}@127.0.0.1:{broker.tls_port}"
    # The system's CA roots do not know the test's CA: refused, said in one line, retried.
    untrusted, _, _, _ = _postproc(tmp_path / "system", broker, topic, node, url=url)
    try:
        untrusted.wait_log("the broker's certificate is not trusted: unable to get local "
                           "issuer certificate (--mqtt-ca names the CA", 15)
        assert "MQTT: connected" not in untrusted.log_text()
    finally:
        assert untrusted.terminate() == 0
    watch = _watch(broker, topic, node)
    trusted, _, _, _ = _postproc(tmp_path / "ca", broker, topic, node, url=url,
                                 extra=["--mqtt-ca", str(broker.base / "tls" / "ca.pem")])
    try:
        wait_for(lambda: watch.last(f"{topic}/availability") == b"online", 15)
        assert f"MQTT: connected to {url}" in trusted.log_text()
    finally:
        assert trusted.terminate() == 0
        watch.close()


@pytest.mark.parametrize(("args", "needle"), [
    (["--mqtt", "mqtt://u:hunter2@host"], "the URL holds a password"),
    (["--mqtt", "http://host"], "is not mqtt://"),
    (["--mqtt", "mqtt://host/x"], "has no path"),
    (["--mqtt", "mqtt://host:70000"], "port that is not in 1..65535"),
    (["--mqtt", "mqtt://host", "--mqtt-password", "env:PK_NONE"], "needs a user name"),
    (["--mqtt", "mqtt://u@host", "--mqtt-password", "env:PK_NONE_SET"], "not set or empty"),
    (["--mqtt", "mqtt://host", "--mqtt-ca", "/etc/hostname"], "for an mqtts:// broker"),
    (["--mqtt", "mqtt://host", "--mqtt-topic", "a/#"], "is not a topic"),
    (["--mqtt", "mqtt://host", "--mqtt-node", "a.b"], "letters, digits"),
    (["--mqtt-topic", "x", "--mqtt-node", "n"], "--mqtt-node is for --mqtt"),
])
def test_bad_mqtt_flags_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(["sock", "--convert", str(tmp_path), "12", *args])
    assert needle in str(err.value)
    assert "hunter2" not in str(err.value)


def test_mqtt_flags_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PK_MQTT", "s3cret")
    cfg = parse(["sock", "--convert", str(tmp_path), "12", "--mqtt", "mqtts://cam@broker.lan",
                 "--mqtt-password", "env:PK_MQTT", "--mqtt-topic", "home/pancake"])
    m = cfg.mqtt
    assert m is not None and m.tls and m.port == 8883 and m.username == "cam"
    assert m.password is not None and m.password.reveal() == "s3cret"
    assert m.label == "mqtts://cam@broker.lan:8883" and m.topic == "home/pancake"
    assert m.client_id.startswith("pancake-") and m.node in m.client_id
    assert m.password in cfg.secrets()


def _jpeg(path: Path, size: tuple[int, int]) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path, "JPEG")
    return path


def test_labelled_events_alerts_and_health(tmp_path: Path, broker: Mosquitto,
                                           ids: tuple[str, str]) -> None:
    topic, node = ids
    # The catalog as pancake leaves it: the camera's title, and the event of the edge.
    rise = round(time.time(), 3)
    (tmp_path / "state" / "pancake").mkdir(parents=True)
    with open_catalog(default_catalog(tmp_path)) as catalog:
        catalog.set_camera("front", title="Front door")
        event = catalog.event_rose("front", rise, labels=["motion"],
                                   boxes=[(0.1, 0.1, 0.3, 0.4)])
    watch = _watch(broker, topic, node)
    with bot_api() as api:
        post, name, h264, _mp4 = _postproc(
            tmp_path, broker, topic, node,
            extra=["--notify-telegram", "env:PK_TOKEN", "42", "--telegram-api-url",
                   api.base_url], env={"PK_TOKEN": TOKEN})
        try:
            wait_for(lambda: watch.last(f"{topic}/availability") == b"online", 15)
            plain = _jpeg(h264 / "20260101-101502.jpg", (64, 48))
            drawn = _jpeg(h264 / "20260101-101502-boxes.jpg", (320, 240))
            send_event(name, {"detection": True, "time": rise, "camera": "front",
                              "labels": ["motion"], "boxes": [[0.1, 0.1, 0.3, 0.4]],
                              "score": 0.7, "jpeg": str(plain), "jpeg_boxes": str(drawn)})
            send_event(name, {"update": True, "time": rise + 1, "camera": "front",
                              "labels": ["motion", "face"], "names": ["Anna"]})
            photo = wait_for(lambda: api.calls_to("sendPhoto"), 15)[0]
            assert photo.fields["caption"].startswith(
                "motion, 12 % of the picture, Front door\n")
            assert photo.files["photo"] == drawn.stat().st_size  # the one with the boxes
            events = wait_for(lambda: len(watch.on(f"{topic}/front/event")) >= 2 and [
                json.loads(m.payload) for m in watch.on(f"{topic}/front/event")], 10)
            assert events[0]["type"] == "start" and events[0]["boxes"] == [[0.1, 0.1, 0.3, 0.4]]
            assert events[0]["score"] == 0.7 and events[0]["time"] == rise
            assert events[1]["type"] == "update" and events[1]["names"] == ["Anna"]
            # The snapshot topic has the edge's plain JPEG.
            shot = wait_for(lambda: watch.last(f"{topic}/front/snapshot"), 10)
            assert shot == plain.read_bytes()
            # A face seen: the detection sensor becomes an occupancy sensor, same unique id.
            def binary() -> list[dict[str, object]]:
                return [json.loads(m.payload) for m in watch.matching(
                    f"homeassistant/binary_sensor/pancake_{node}/front_")]
            wait_for(lambda: binary() and binary()[-1]["device_class"] == "occupancy", 10)
            assert {b["unique_id"] for b in binary()} == {f"pancake_{node}_front_detection"}
            assert binary()[-1]["device"]["name"] == "Front door"  # type: ignore[index]
            # Who was seen: retained on its own topic, the "Last seen" sensor's.
            wait_for(lambda: watch.last(f"{topic}/front/names") == b"Anna", 10)
            configs = _configs(watch, node)
            seen = {m.topic for m in watch.matching(f"{topic}/")}
            for cfg in configs.values():
                assert (cfg.get("state_topic") or cfg.get("image_topic")) in seen
            # Health: Telegram once per camera per 10 minutes, MQTT every time.
            send_event(name, {"health": "offline", "time": rise + 2, "camera": "front"})
            wait_for(lambda: watch.last(f"{topic}/front/health") == b"offline", 10)
            send_event(name, {"health": "live", "time": rise + 3, "camera": "front"})
            wait_for(lambda: watch.last(f"{topic}/front/health") == b"live", 10)
            wait_for(lambda: api.calls_to("sendMessage"), 10)
            time.sleep(1.0)  # the return is held, not sent
            texts = [c.fields["text"] for c in api.calls_to("sendMessage")]
            assert len(texts) == 1 and texts[0].startswith("Front door: no picture"), texts
            # A low disk says which camera's directory.
            send_event(name, {"disk": "low", "free": 50_000_000, "dir": str(h264),
                           "camera": "front"})
            wait_for(lambda: len(api.calls_to("sendMessage")) == 2, 10)
            assert api.calls_to("sendMessage")[1].fields["text"] == \
                f"Low disk: {h264} has 50 MB free (Front door)"
            # The update sent no second photo; both channels are in the catalog.
            assert len(api.calls_to("sendPhoto")) == 1
            with open_catalog(default_catalog(tmp_path)) as catalog:
                wait_for(lambda: catalog.alerted(event, "telegram")
                         and catalog.alerted(event, "mqtt"), 10)
            assert TOKEN not in post.log_text()
        finally:
            assert post.terminate() == 0
            watch.close()
