"""postproc.py: wires receiver → converter → uploads and alerts, and stops them in order."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from raspberry_pancake.postproc import ledger
from raspberry_pancake.postproc.config import PostprocConfig, parse
from raspberry_pancake.postproc.convert import (
    Converter,
    ConvertSettings,
    Job,
    pending,
    remove_stale_temporaries,
)
from raspberry_pancake.postproc.receiver import Accepted, PathPolicy, Receiver, ReceiverError, open_socket
from raspberry_pancake.postproc.supervise import CHECK_INTERVAL, Supervisor
from raspberry_pancake.postproc.upload.destination import Destination
from raspberry_pancake.postproc.upload.ftp import FtpDestination
from raspberry_pancake.postproc.upload.rclone import RcloneDestination
from raspberry_pancake.postproc.upload.sftp import SftpDestination
from raspberry_pancake.postproc.upload.trigger import UploadTrigger
from raspberry_pancake.postproc.upload.worker import Mp4, UploadWorker
from raspberry_pancake.shared.catalog import Catalog, CatalogError, read_journals
from raspberry_pancake.shared.cli import ConfigError
from raspberry_pancake.shared.credentials import install_redaction
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.logs import setup_logging
from raspberry_pancake.shared.signals import StopOnSignal

if TYPE_CHECKING:
    from raspberry_pancake.postproc.mqtt import Publisher
    from raspberry_pancake.postproc.notify import Notifier

log = logging.getLogger("postproc")

# systemd waits 90 s by default, but a stop must not hold up a reboot: everything is joined
# within this, the conversion in hand included (a 15-minute segment remuxes in a few seconds).
STOP_DEADLINE = 4.5


class _Stage(Protocol):
    def join(self, timeout: float) -> bool: ...


class Postproc:
    """The running post-processor: its stages, their threads, and the order they stop in."""

    def __init__(self, cfg: PostprocConfig, sock: socket.socket, catalog: Catalog,
                 stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.stop_event = stop = threading.Event() if stop is None else stop
        self.notifiers: list[Notifier] = []
        if cfg.notify_telegram:
            # Imported only when needed (its TLS context reads the system's CA roots).
            from raspberry_pancake.postproc.notify import Notifier

            self.notifiers = [Notifier(t, cfg.telegram_api_url, cfg.public_bot_api,
                                       cfg.notify_queue_size, stop, record=self._record_alert)
                              for t in cfg.notify_telegram]
        self.mqtt: Publisher | None = None
        if cfg.mqtt is not None:
            # Imported only when needed, like Telegram: paho is a few MB of RSS.
            from raspberry_pancake.postproc.mqtt import Publisher

            self.mqtt = Publisher(cfg.mqtt, stop, title=self._title, record=self._record_alert)
        dests: list[Destination] = [SftpDestination(d, cfg.known_hosts, cfg.ssh_key)
                                    for d in cfg.upload_scp]
        dests += [FtpDestination(d) for d in cfg.upload_ftp]
        dests += [RcloneDestination(d) for d in cfg.upload_rclone]
        # The journals of versions before the catalog: imported once (start()), and their
        # names still honoured in case that import ran before pancake had filled the catalog.
        # No longer written: the catalog is the record.
        try:
            legacy = read_journals(cfg.mp4_dir) if dests else {}
        except OSError as exc:
            log.error("cannot read the old upload journals of %s: %s", cfg.mp4_dir,
                      exc.strerror or exc)
            legacy = {}
        self.workers = [UploadWorker(d, cfg.upload_queue_size, stop, catalog, cfg.mp4_dir,
                                     backoff_first=cfg.upload_backoff_first,
                                     max_attempts=cfg.upload_attempts,
                                     legacy=legacy.get(d.label, ()))
                        for d in dests]
        self.trigger = UploadTrigger(self.workers, cfg.upload_after_convert, cfg.upload_minutes,
                                     stop)
        rescan = (lambda: pending(catalog, cfg.h264_dirs)) if cfg.h264_dirs else None
        self.converter = Converter(ConvertSettings(cfg.mp4_dir, cfg.fps, cfg.mp4box), catalog,
                                   stop, self._converted, rescan=rescan)
        self.receiver = Receiver(sock, cfg.allow_uids, PathPolicy(cfg.h264_dirs),
                                 self._received, stop)
        self.supervisor = Supervisor(stop)
        for thread in [self.receiver.thread, self.converter.thread, self.trigger.thread,
                       *(w.thread for w in self.workers), *(n.thread for n in self.notifiers),
                       *([self.mqtt.thread] if self.mqtt is not None else [])]:
            self.supervisor.watch(thread)

    def _title(self, camera: str) -> str | None:
        """The camera's title for people ("Front door"), when pancake's page set one."""
        settings = self.catalog.camera_settings(camera)
        return settings.title if settings is not None and settings.title else None

    def _place(self, event: Event) -> str | None:
        """Where an alert says it happened: the camera's title, else its name; nothing for the
        single camera of the original's command line, which has neither."""
        return self._where(event.get("camera"))

    def _where(self, camera: str | None) -> str | None:
        try:
            title = self._title(camera or ledger.DEFAULT_CAMERA)
        except CatalogError as exc:
            log.warning("no title for camera %s: %s", camera, exc)
            title = None
        return title or camera

    def _record_alert(self, camera: str, rise: float, channel: str) -> bool:
        """Runs on the alerting thread: the alert for the event that rose then is recorded;
        False while the catalog has no such event yet (pancake writes it as it sends)."""
        found = self.catalog.event_at(camera, rise)
        if found is None:
            return False
        self.catalog.alert_sent(found.id, channel)
        return True

    def _received(self, acc: Accepted) -> None:
        """Runs on the receiver thread: only hands work to queues, never waits."""
        event = acc.event
        if "disk" in event:
            place = self._place(event) if self.notifiers else None
            text = (f"Low disk: {event.get('dir')} has {event.get('free', 0) / 1e6:.0f} MB free"
                    + (f" ({place})" if place else ""))
            for n in self.notifiers:
                n.text(text)
        mqtt = self.mqtt
        camera = event.get("camera", ledger.DEFAULT_CAMERA)
        if "health" in event:
            if mqtt is not None:
                mqtt.health(event)
            if self.notifiers:
                where = self._place(event) or camera
                for n in self.notifiers:
                    n.health(camera, event["health"], where, event.get("time"))
            return
        if acc.h264 is not None:
            self.converter.submit(Job(acc.h264, acc.pts, clip="detection" in event,
                                      camera=camera))
            if mqtt is not None:
                mqtt.seen(event)
        elif event.get("update"):
            # New labels or names during a detection: MQTT only (the photo went at the edge).
            if mqtt is not None:
                mqtt.update(event)
        elif "detection" in event:
            if mqtt is not None:
                mqtt.edge(event, acc.jpeg)
            if self.notifiers:
                place = self._place(event)
                photo = acc.jpeg_boxes or acc.jpeg
                for n in self.notifiers:
                    n.detection(event, camera, place, photo)
        elif mqtt is not None:
            mqtt.seen(event)

    def _converted(self, job: Job, recording: int, mp4: Path) -> None:
        """Runs on the converter thread."""
        self.trigger.converted(Mp4(recording, mp4))
        if job.clip:
            if self.mqtt is not None:
                self.mqtt.clip({"camera": job.camera, "h264": str(job.h264)}, mp4)
            if self.notifiers:
                # A camera other than the original's single one is named (its title).
                place = self._where(None if job.camera == ledger.DEFAULT_CAMERA else job.camera)
                for n in self.notifiers:
                    n.clip(mp4, place)

    def start(self) -> None:
        remove_stale_temporaries(self.cfg.mp4_dir)
        if self.workers:
            ledger.import_old_journals(self.catalog, self.cfg.mp4_dir)
        for n in self.notifiers:
            n.start()
        if self.mqtt is not None:
            try:
                cameras = self.catalog.cameras()
            except CatalogError as exc:
                log.error("MQTT: the catalog's cameras: %s (each is announced when heard of)",
                          exc)
                cameras = []
            self.mqtt.cameras(cameras)
            self.mqtt.start()
        for w in self.workers:
            w.start()
            # mp4s converted before this start but never uploaded there (dropped from a full
            # queue, given up, or converted just before a stop) go first, oldest first.
            w.catch_up()
        self.trigger.start()
        if self.cfg.h264_dirs:
            try:
                jobs = pending(self.catalog, self.cfg.h264_dirs)
            except CatalogError as exc:
                log.error("catch-up: %s (the next rescan tries again)", exc)
                jobs = []
            if jobs:
                log.info("catch-up: %d recording(s) finished and not converted", len(jobs))
            self.converter.catch_up(jobs)
        self.converter.start()
        self.receiver.start()

    def stop(self) -> bool:
        """Stop in dependency order; True if every thread ended within the deadline."""
        self.stop_event.set()
        # A transfer in progress is cut off now (it leaves only the remote .part); the
        # conversion in hand is finished.
        for w in self.workers:
            w.abort()
        deadline = time.monotonic() + STOP_DEADLINE
        stages: list[tuple[str, _Stage]] = [("receiver", self.receiver),
                                            ("converter", self.converter),
                                            ("upload clock", self.trigger)]
        stages += [(w.dest.label, w) for w in self.workers]
        stages += [(n.target.label, n) for n in self.notifiers]
        if self.mqtt is not None:
            stages.append(("MQTT", self.mqtt))
        clean = True
        for name, stage in stages:
            left = max(0.0, deadline - time.monotonic())
            if not stage.join(left):
                log.warning("%s did not stop within the deadline", name)
                clean = False
        return clean


def _describe(cfg: PostprocConfig) -> None:
    log.info("postproc on @%s: mp4 into %s (%s, %g fps without a sidecar)", cfg.socket_name,
             cfg.mp4_dir, cfg.converter, cfg.fps)
    log.info("catalog %s", cfg.catalog)
    if cfg.h264_dirs:
        log.info("accepting .h264 in %s", ", ".join(str(d) for d in cfg.h264_dirs))
    else:
        log.warning("no --h264-dir: accepting any .h264 file the allowed uids name, no catch-up")
    for label in ([d.label for d in cfg.upload_scp] + [d.label for d in cfg.upload_ftp]
                  + [d.label for d in cfg.upload_rclone]):
        log.info("upload to %s", label)
    for t in cfg.notify_telegram:
        log.info("alerts to %s", t.label)
    if cfg.mqtt is not None:
        log.info("MQTT to %s, topic %s, node %s", cfg.mqtt.label, cfg.mqtt.topic, cfg.mqtt.node)
    for secret in cfg.secrets():
        if secret.from_command_line:
            log.warning("a secret was given on the command line, where `ps` shows it: "
                        "prefer @/path/to/file or env:VARNAME")
            break


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse(argv)
    except ConfigError as exc:
        print(f"postproc.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(cfg.log)
    except OSError as exc:
        print(f"postproc.py: error: --log: {exc.strerror or exc}: {cfg.log}", file=sys.stderr)
        return 2
    install_redaction(cfg.secrets())
    try:
        sock = open_socket(cfg.socket_name)
    except ReceiverError as exc:
        print(f"postproc.py: error: {exc}", file=sys.stderr)
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    signals = StopOnSignal(stop)
    signals.start()
    _describe(cfg)
    try:
        catalog = ledger.open_catalog(cfg.catalog, cfg.state_dir, stop, cfg.h264_dirs,
                                      cfg.mp4_dir)
    except CatalogError as exc:
        log.error("catalog: %s", exc)
        signals.close()
        sock.close()
        logging.shutdown()
        return 1
    if catalog is None:  # stopped while waiting for it
        log.info("stopped before the catalog was available")
        signals.close()
        sock.close()
        logging.shutdown()
        return 0
    app = Postproc(cfg, sock, catalog, stop)
    app.start()
    code = 0
    while not app.stop_event.wait(CHECK_INTERVAL):
        if not app.supervisor.check():
            code = 1  # a stage keeps dying: systemd's Restart=on-failure takes over
            break
    log.info("stopping")
    clean = app.stop()
    catalog.close()
    signals.close()
    log.info("stopped%s%s", "" if clean else " (some threads were still busy)",
             f" after stage {app.supervisor.failed} kept failing: exit {code}" if code else "")
    logging.shutdown()
    return code
