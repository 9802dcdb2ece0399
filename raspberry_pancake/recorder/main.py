"""pancake.py's main: check the command line (or --config), open the cameras, run until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from raspberry_pancake.recorder import camconfig, selfcheck
from raspberry_pancake.recorder.cameras import CameraRun, Cameras
from raspberry_pancake.recorder.config import ConfigError, RecorderConfig, parse
from raspberry_pancake.recorder.sources.base import Camera, SourceError
from raspberry_pancake.recorder.sources.choose import list_cameras, open_camera, resolve
from raspberry_pancake.recorder.sources.picam import EXIT_CAMERA_STUCK, Picamera2Camera
from raspberry_pancake.recorder.watchdog import EXIT_STAGE_DIED, Watchdog
from raspberry_pancake.recorder.web import app as web
from raspberry_pancake.shared.logs import setup_logging
from raspberry_pancake.shared.sdnotify import Notifier
from raspberry_pancake.shared.signals import StopOnSignal

log = logging.getLogger("pancake")


def _configs(argv: Sequence[str]) -> list[RecorderConfig]:
    """One camera from flags, or the cameras of --config FILE (ConfigError: one line)."""
    path, rest = camconfig.split_argv(argv)
    if path is None:
        return [parse(rest)]
    return camconfig.load(path, rest)


def _cameras(cfgs: list[RecorderConfig]) -> list[tuple[RecorderConfig, Camera]]:
    """Each camera's source object; SourceError for a source that is wrong as written."""
    made = []
    for cfg in cfgs:
        try:
            spec = resolve(cfg.source)
            made.append((cfg, open_camera(spec, cfg)))
        except SourceError as exc:
            if cfg.multi:
                raise SourceError(f"[camera.{cfg.name}] source: {exc}") from None
            raise
    return made


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--list-cameras" in args:  # before anything else: it only reports and exits
        return list_cameras(sys.stdout)
    try:
        cfgs = _configs(args)
        cfg = cfgs[0]  # the process-wide flags are every camera's
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
    multi = cfg.multi
    try:
        cameras = _cameras(cfgs)
        if any(isinstance(c, Picamera2Camera) for _, c in cameras):
            selfcheck.log_report()  # the versions a Pi camera depends on, in every start's log
        if not multi:
            # One camera from flags: a source that cannot be opened is exit 2, as always. Under
            # --config, each camera is opened (and retried) on its own thread instead.
            cameras[0][1].open()
        # The pipelines make their detectors here: a GPIO pin that cannot be had, a face model
        # missing, a mask file gone since the command line was read: one line, exit 2.
        runs = Cameras([CameraRun(c, camera, opened=not multi) for c, camera in cameras])
    except (SourceError, ConfigError) as exc:
        print(f"pancake.py: error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    signals = StopOnSignal(stop)
    signals.start()

    for run in runs.runs:
        if multi:
            log.info("camera %s (%s): %s, %g fps", run.name, run.camera.name,
                     run.cfg.frame_size, run.cfg.fps)
    if multi:
        log.info("%d cameras; live view on port %d", len(runs.runs), cfg.port)
    else:
        log.info("%s at %s, %g fps; live view on port %d", cameras[0][1].name, cfg.frame_size,
                 cfg.fps, cfg.port)
    runs.start()
    notifier = Notifier()
    watchdog = Watchdog(runs.hubs, notifier, stop, runs.stages)
    watchdog.start()
    try:
        web.run(runs.states, stop, address=cfg.bind, sockets=sockets)  # until stop is set
    finally:
        stop.set()
        # The watchdog first: it must not take the stages' ends for deaths and restart them.
        watchdog.join(timeout=2.0)
        notifier.stopping()
        runs.stop()
        notifier.close()
        signals.close()
        code = 0 if watchdog.fatal is None else EXIT_STAGE_DIED
        if code == 0 and any(isinstance(c, Picamera2Camera) and c.stop_failed
                             for _, c in cameras):
            code = EXIT_CAMERA_STUCK  # picamera2 did not let go in time (its loop died)
        log.info("stopped, exit code %d", code)
    return code
