"""pancake.py's main: check the command line, open the camera, run until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from raspberry_pancake.recorder import selfcheck
from raspberry_pancake.recorder.catalog_writer import CatalogConfig, CatalogWriter
from raspberry_pancake.recorder.config import ConfigError, parse
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.pipeline import Pipeline
from raspberry_pancake.recorder.sources.base import SourceError
from raspberry_pancake.recorder.sources.choose import open_camera, resolve
from raspberry_pancake.recorder.sources.picam import EXIT_CAMERA_STUCK, Picamera2Camera
from raspberry_pancake.recorder.watchdog import EXIT_STAGE_DIED, Watchdog
from raspberry_pancake.recorder.web import app as web
from raspberry_pancake.shared.logs import setup_logging
from raspberry_pancake.shared.sdnotify import Notifier
from raspberry_pancake.shared.signals import StopOnSignal

log = logging.getLogger("pancake")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse(argv)
        if cfg.self_check:  # before any port is bound: it only reports and exits
            return selfcheck.run()
        web.prepare(cfg)
        sockets = web.listen(cfg.port, cfg.bind)
    except ConfigError as exc:
        print(f"pancake.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(cfg.log)
    except OSError as exc:
        print(f"pancake.py: error: --log: {exc.strerror or exc}: {cfg.log}", file=sys.stderr)
        return 2
    try:
        spec = resolve(cfg.source)
        if spec.kind == "picamera2":
            selfcheck.log_report()  # the versions a Pi camera depends on, in every start's log
        camera = open_camera(spec, cfg)
        camera.open()
    except SourceError as exc:
        print(f"pancake.py: error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    signals = StopOnSignal(stop)
    signals.start()

    emitter = Emitter(cfg.emit)
    catalog = None
    if cfg.catalog is not None:  # opened on its own thread: an unusable one never stops us
        catalog = CatalogWriter(CatalogConfig(cfg.catalog, cfg.state_dir, cfg.record_dirs,
                                              camera=cfg.name))
    recorder = Pipeline(cfg, camera, emitter, catalog)
    log.info("%s at %s, %g fps; live view on port %d", camera.name, cfg.frame_size,
             cfg.fps, cfg.port)
    recorder.start()
    notifier = Notifier()
    watchdog = Watchdog(recorder.hub, notifier, stop, recorder.stages)
    watchdog.start()
    try:
        web.run(recorder.state, stop, address=cfg.bind, sockets=sockets)  # until stop is set
    finally:
        stop.set()
        # The watchdog first: it must not take the stages' ends for deaths and restart them.
        watchdog.join(timeout=2.0)
        notifier.stopping()
        recorder.stop()
        notifier.close()
        emitter.close()
        signals.close()
        code = 0 if watchdog.fatal is None else EXIT_STAGE_DIED
        if code == 0 and isinstance(camera, Picamera2Camera) and camera.stop_failed:
            code = EXIT_CAMERA_STUCK  # picamera2 did not let go in time (its loop died)
        log.info("stopped, exit code %d", code)
    return code
