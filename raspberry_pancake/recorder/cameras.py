"""The cameras of one pancake: a pipeline each, opened and retried on its own thread; their health."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raspberry_pancake.recorder.catalog_writer import CatalogConfig, CatalogWriter
from raspberry_pancake.recorder.config import RecorderConfig, read_mask_bytes
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.frames import LatestFrame
from raspberry_pancake.recorder.pipeline import Pipeline
from raspberry_pancake.recorder.sources.base import BACKOFF_MAX, BACKOFF_START, Camera, SourceError
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.recorder.state import LIVE, RecorderState
from raspberry_pancake.shared.catalog import Catalog, CatalogError
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.faces import UNKNOWN, FaceStore, StoreError
from raspberry_pancake.shared.logs import RateLimiter, camera_scope, with_camera
from raspberry_pancake.shared.statedir import MODE as STATE_MODE
from raspberry_pancake.shared.statedir import ensure as ensure_state_dir

log = logging.getLogger("pancake.cameras")
_limit = RateLimiter(300.0)

# DESIGN.md "Messages": a camera that has delivered nothing for this long is reported offline
# (once), and live again at its next frame.
HEALTH_OFFLINE_AFTER = 60.0
# How often the health thread looks at every camera (and at catalogs not yet read).
HEALTH_TICK = 1.0
# Stopping: an opener stuck in a network open (up to the source's connect timeout) is left.
OPENER_JOIN = 0.5
STOP_JOIN = 5.0
# The faces of events the catalog no longer has (retention deleted them, or the page) are
# deleted at start and then this often: they are biometric data nobody can see any more.
PRUNE_EVERY = 3600.0
# An event this recent is kept whatever the catalog says: its rise may still be queued for
# the catalog's thread while its faces are already stored.
PRUNE_GRACE = 600.0
# How long the pruning waits for a camera's catalog to open at start (else: next hour).
PRUNE_WAIT = 30.0


class _OwnCatalog(CatalogWriter):
    """A camera's catalog writer, started before its camera opens (the page's switches and the
    health notes need it while the camera is still unreachable): the pipeline's own start()
    then finds it running and leaves it."""

    def start(self) -> None:
        if self.is_alive():
            return
        super().start()


class CameraRun:
    """One camera: its pipeline, and the thread that opens the camera until it opens.

    A camera that opened at start (the single-camera command line, where a source that cannot
    be opened is exit 2) starts at once; one that did not is retried with backoff on its own
    thread, shown offline, and never delays the others. Once open, the source reopens itself
    (sources/pyav.py, sources/picam.py)."""

    def __init__(self, cfg: RecorderConfig, camera: Camera, opened: bool) -> None:
        self.cfg = cfg
        self.camera = camera
        self.emitter = Emitter(cfg.emit, Emitter.camera_of(cfg.multi, cfg.name))
        # Under --config, this camera's threads name it in their log lines; one camera from
        # flags logs as it always did.
        self.log_camera = cfg.name if cfg.multi else None
        self.catalog: CatalogWriter | None = None
        with camera_scope(self.log_camera):  # the stages made here inherit it
            if cfg.catalog is not None:  # opened on its own thread: never stops us
                self.catalog = _OwnCatalog(CatalogConfig(cfg.catalog, cfg.state_dir,
                                                         cfg.record_dirs, camera=cfg.name))
            self.pipeline = Pipeline(cfg, camera, self.emitter, self.catalog)
        self.state: RecorderState = self.pipeline.state
        self.state.control = self.control
        self.state.trigger = self.pipeline.trigger
        # No motion detector, no mask to edit: the page says motion detection is off.
        self.state.set_mask = self.set_mask if "motion" in cfg.detectors else None
        # The Faces page's "add from camera" (the web may not import the detectors: a hook).
        self.state.faces_in_view = self.faces_in_view if "faces" in cfg.detectors else None
        self._faces: Any = None  # a FaceDetector of our own, made at the page's first look
        self._faces_lock = threading.Lock()
        # Held across a mask's write and its swap into the detector: with two saves at once,
        # the file kept and the mask in use are the same one.
        self._mask_lock = threading.Lock()
        self._opened = opened
        # Guards _started and _stopping: the opener starts the pipeline only if stop() has not
        # begun, and stop() stops it only if the opener started it.
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self._stop = threading.Event()
        self._opener: threading.Thread | None = None
        self.settings_read = self.catalog is None
        # The health thread's alone:
        self.reported_offline = False

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def hub(self) -> LatestFrame:
        return self.pipeline.hub

    @property
    def started(self) -> bool:
        with self._lock:
            return self._started

    def start(self) -> None:
        with camera_scope(self.log_camera):
            self._start()

    def _start(self) -> None:
        if self.catalog is not None:
            self.catalog.start()
            # The title people read, for postproc's captions and Home Assistant's device name.
            self.catalog.set_camera(title=self.cfg.title)
        if self._opened:
            self._start_pipeline()
            return
        self._opener = threading.Thread(target=with_camera(self._open_loop),
                                        name=f"open-{self.name}", daemon=True)
        self._opener.start()

    def _start_pipeline(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self.pipeline.start()
            self._started = True

    def _open_loop(self) -> None:
        backoff = BACKOFF_START
        since = time.monotonic()
        while not self._stop.is_set():
            try:
                self.camera.open()
            except SourceError as exc:
                first = self.state.source_error is None
                self.state.source_failed(str(exc))
                if first:
                    log.warning("camera %s: %s; retrying with backoff, shown offline meanwhile",
                                self.name, exc)
                    self.note(f"{self.name} cannot be opened ({exc}): retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self.state.source_error is not None:
                log.info("camera %s opened after %.0f s", self.name, time.monotonic() - since)
                self.note(f"{self.name} opened after {time.monotonic() - since:.0f} s")
            self.state.source_failed(None)
            self._start_pipeline()
            if not self.started:  # stop() came first: let go of the device
                self.camera.stop()
            return

    def note(self, text: str) -> None:
        if self.catalog is not None:
            self.catalog.note("camera", text)

    def control(self, armed: bool | None, continuous: bool | None) -> None:
        """The page's switches (any thread): applied now, kept in the catalog for restarts."""
        # The page's word is newer than what the catalog kept: never overwrite it with that.
        self.settings_read = True
        self._apply(armed, continuous)
        if self.catalog is not None:
            self.catalog.set_camera(armed=armed, continuous=continuous)
        said = [f"detection {'armed' if armed else 'disarmed'}" if armed is not None else "",
                f"continuous recording {'on' if continuous else 'off'}"
                if continuous is not None else ""]
        text = f"{self.name}: {', '.join(s for s in said if s)}"
        log.info("camera %s", text)
        self.note(text)

    def set_mask(self, data: bytes) -> None:
        """A motion mask from the page (a PNG's bytes, any thread): checked, kept in the state
        directory (masks/NAME.png, 0600; it replaces --motion-mask at the next start), then
        applied to the running detector. ValueError (MaskError: one line saying why) when it
        cannot be used, OSError when it cannot be kept (then it is not applied either)."""
        grey = read_mask_bytes(data)
        self.pipeline.detector.check_mask(grey)
        path = self.cfg.stored_mask
        if path is None:
            raise ValueError("no state directory to keep the mask in")
        with self._mask_lock:
            _write_private(path, data)
            self.pipeline.detector.set_mask(grey)
        log.info("camera %s: motion mask saved from the page (%s), applied now and at every "
                 "start in place of --motion-mask", self.name, path)
        self.note(f"{self.name}: motion mask saved from the page")

    def faces_in_view(self) -> list[dict[str, Any]]:
        """The faces in the camera's newest frame, largest first (any thread but the loop:
        a face costs ~0.1 s): each {box: [x, y, w, h] as fractions, name (a known person or
        "unknown"), crop: JPEG bytes, embedding: 128 floats, or None for a face too small to
        enrol}. The models are the process's, already loaded by the detector; ValueError
        (one line) if they cannot be loaded."""
        # Imported here: the face stack is an extra, and only a camera that searches faces
        # gets this hook.
        from raspberry_pancake.recorder.detect import faces as face_stack

        frame = self.hub.latest()
        if frame is None:
            return []
        with self._faces_lock:
            if self._faces is None:
                # Our own detector (the models are shared, loaded once per process): it names
                # faces from the same store, with the same threshold, as the camera's.
                faces_dir = self.cfg.faces_dir or Path("faces").absolute()
                try:
                    self._faces = face_stack.FaceDetector(
                        face_stack.FaceConfig(faces_dir, self.cfg.face_match))
                except face_stack.FaceError as exc:  # the web knows no detector's errors
                    raise ValueError(str(exc)) from None
            detector = self._faces
            # Always re-read: the user may have just added someone (the detector's own
            # check is throttled to a stat a second).
            detector.reload(force=True)
            rgb = np.ascontiguousarray(frame.image.reformat(format="rgb24").to_ndarray(),
                                       dtype=np.uint8)
            h, w = rgb.shape[:2]
            found = sorted(detector.models.find(rgb), key=lambda f: -f.w * f.h)
            out: list[dict[str, Any]] = []
            for face in found[:face_stack.MAX_EMBED]:
                box = face_stack._fraction(face, w, h)
                if box is None:
                    continue
                name, embedding = UNKNOWN, None
                if face.size >= detector.cfg.min_size:
                    vec = detector.models.embed(rgb, face)
                    name = detector.name_of(vec)[0]
                    embedding = [float(v) for v in vec]
                out.append({"box": list(box), "name": name, "crop": face_stack.crop_jpeg(rgb, face),
                            "embedding": embedding, "score": round(face.score, 3)})
            return out

    def _apply(self, armed: bool | None, continuous: bool | None) -> None:
        if armed is not None:
            self.pipeline.set_armed(armed)
        if continuous is not None:
            self.pipeline.set_continuous(continuous)
        self.state.set_switches(armed, continuous)

    def read_settings(self) -> None:
        """What the page set before a restart (the catalog), once it is open."""
        if self.settings_read or self.catalog is None or not self.catalog.wait_ready(0):
            return
        self.settings_read = True
        saved = self.catalog.camera_settings()
        if saved is None:
            return
        continuous = saved.continuous if self.cfg.record_continuous is not None else None
        self._apply(saved.armed, continuous)

    def stages(self) -> list[Stage]:
        if self.started:
            return self.pipeline.stages()
        return [self.catalog] if self.catalog is not None else []

    def stop(self) -> None:
        with camera_scope(self.log_camera):
            self._stop_camera()

    def _stop_camera(self) -> None:
        self._stop.set()
        with self._lock:
            self._stopping = True
            started = self._started
        if self._opener is not None:
            self._opener.join(OPENER_JOIN)
        if started:
            self.pipeline.stop()
        else:
            self.pipeline.hub.close()
            if self.catalog is not None:
                self.catalog.stop()
                self.catalog.join(timeout=STOP_JOIN)
        self.emitter.close()


def _write_private(path: Path, data: bytes) -> None:
    """`data` as `path`, 0600, whole or not at all (a temporary file, fsynced, renamed); its
    directory made 0700 (the state directory's rules) if missing."""
    ensure_state_dir(path.parent.parent)
    path.parent.mkdir(mode=STATE_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp makes it 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)  # the rename itself survives a power cut
    finally:
        os.close(dirfd)


class Cameras:
    """Every camera of the process, and the `camera-health` thread: each camera's offline
    (no frame for HEALTH_OFFLINE_AFTER) and its return, as `health` messages and catalog notes."""

    def __init__(self, runs: Sequence[CameraRun]) -> None:
        self.runs = list(runs)
        self._stop = threading.Event()
        self._health = threading.Thread(target=self._watch, name="camera-health", daemon=True)
        self._started_at = time.monotonic()
        # Only cameras that search faces and keep a catalog have event faces to prune.
        self._pruned = [r for r in self.runs
                        if r.cfg.faces_dir is not None and r.catalog is not None]
        self._prune = (threading.Thread(target=self._prune_loop, name="faces-prune", daemon=True)
                       if self._pruned else None)

    @property
    def states(self) -> list[RecorderState]:
        return [r.state for r in self.runs]

    @property
    def hubs(self) -> list[LatestFrame]:
        return [r.hub for r in self.runs]

    def start(self) -> None:
        self._started_at = time.monotonic()
        for run in self.runs:
            run.start()
        self._health.start()
        if self._prune is not None:
            self._prune.start()

    def stages(self) -> list[Stage]:
        return [s for run in self.runs for s in run.stages()]

    def _watch(self) -> None:
        while not self._stop.wait(HEALTH_TICK):
            now = time.monotonic()
            for run in self.runs:
                with camera_scope(run.log_camera):
                    run.read_settings()
                    self._check(run, now)

    def _check(self, run: CameraRun, now: float) -> None:
        state, age = run.state.health(now)
        silent = now - self._started_at if age is None else age
        if not run.reported_offline and silent >= HEALTH_OFFLINE_AFTER:
            run.reported_offline = True
            log.warning("camera %s offline: no frame for %.0f s", run.name, silent)
            run.note(f"{run.name} offline: no frame for {silent:.0f} s")
            run.emitter.emit(Event(health="offline", time=round(time.time(), 3)))
        elif run.reported_offline and state == LIVE:
            run.reported_offline = False
            log.info("camera %s live again", run.name)
            run.note(f"{run.name} live again")
            run.emitter.emit(Event(health="live", time=round(time.time(), 3)))

    def _prune_loop(self) -> None:
        deadline = time.monotonic() + PRUNE_WAIT
        for run in self._pruned:  # the first pass once the catalogs are open (or not coming)
            assert run.catalog is not None
            if self._stop.is_set() or not run.catalog.wait_ready(
                    max(0.0, deadline - time.monotonic())):
                break
        while not self._stop.is_set():
            self.prune_faces()
            self._stop.wait(PRUNE_EVERY)

    def prune_faces(self) -> int:
        """Deletes the stored faces of events the catalog no longer has, for every camera that
        searches faces and whose catalog is open now (another camera's are left alone: its
        catalog cannot say). Returns how many events' faces went."""
        stores: dict[Path, dict[str, Catalog]] = {}
        for run in self._pruned:
            catalog = run.catalog.current() if run.catalog is not None else None
            if catalog is not None and run.cfg.faces_dir is not None:
                stores.setdefault(run.cfg.faces_dir, {})[run.name] = catalog
        gone = 0
        for directory, catalogs in stores.items():
            recent = time.time() - PRUNE_GRACE

            def keep(camera: str, rise: float, catalogs: dict[str, Catalog] = catalogs,
                     recent: float = recent) -> bool:
                catalog = catalogs.get(camera)
                if catalog is None or rise >= recent:
                    return True
                try:
                    return catalog.event_at(camera, rise) is not None
                except CatalogError as exc:  # cannot say: nothing is deleted on a guess
                    _limit.log(log, logging.WARNING, "prune-read", "faces of past events not "
                               "pruned: the catalog cannot be read (%s)", exc)
                    return True
            try:
                n = FaceStore(directory).prune_events(keep)
            except (StoreError, OSError) as exc:
                why = exc.strerror or exc if isinstance(exc, OSError) else exc
                _limit.log(log, logging.ERROR, "prune", "faces of past events in %s not "
                           "pruned: %s", directory, why)
                continue
            if n:
                log.info("faces of %d deleted event(s) removed from %s", n, directory)
            gone += n
        return gone

    def stop(self) -> None:
        """Every camera at once: each pipeline's stop waits for its writers, and eight in a
        row would outlast systemd's stop timeout."""
        self._stop.set()
        self._health.join(timeout=2 * HEALTH_TICK)
        if self._prune is not None and self._prune.is_alive():
            self._prune.join(timeout=STOP_JOIN)
            if self._prune.is_alive():
                log.error("%s did not stop in time", self._prune.name)
        if len(self.runs) == 1:
            self.runs[0].stop()
            return
        threads = [threading.Thread(target=run.stop, name=f"stop-{run.name}", daemon=True)
                   for run in self.runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(STOP_JOIN)
            if t.is_alive():
                log.error("%s did not stop in time", t.name)
