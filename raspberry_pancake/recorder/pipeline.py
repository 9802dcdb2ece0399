"""One camera's pipeline: wires its stages together, owns its encoder, stops them in dependency order."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import av

from raspberry_pancake.recorder.catalog_writer import CatalogWriter
from raspberry_pancake.recorder.config import RecorderConfig
from raspberry_pancake.recorder.detect.runner import Detector
from raspberry_pancake.recorder.diskguard import DiskGuard, DiskGuardConfig
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.frames import Frame, LatestFrame, Packet
from raspberry_pancake.recorder.recording.clips import PRE_ROLL, ClipConfig, ClipWriter, Edge
from raspberry_pancake.recorder.recording.encode import EncoderThread
from raspberry_pancake.recorder.recording.segments import SegmentWriter, WriterHooks
from raspberry_pancake.recorder.recording.splits import create_unique, file_stem
from raspberry_pancake.recorder.sources.base import Camera, Outputs
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.jpeg import JpegEncoder
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

# Joining a writer on shutdown: long enough to write what is queued, short enough for systemd.
JOIN_TIMEOUT = 1.5
# The catalog's last writes (files closed at stop): each an fsync, a few on a slow SD card.
CATALOG_JOIN = 3.0
# How long after an edge's merge window the clip writer waits for detector latency.
EDGE_LATENCY_MARGIN = 0.3
# How long the edge waits for the clip writer to name the clip around it, so that the snapshot
# takes the clip's name (its sidecar for retention); the writer answers in milliseconds unless
# the disk stalls it, and then the snapshot keeps the edge's own name and the message leaves.
SNAPSHOT_WAIT = 0.3
# What the catalog records an edge as seeing until the detectors report their own labels.
LABELS = ("detection",)


class _ClipName:
    """The clip writer's answer to one edge, waited for by the detector thread."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._path: Path | None = None

    def set(self, path: Path | None) -> None:
        self._path = path
        self._done.set()

    def wait(self, timeout: float) -> Path | None:
        self._done.wait(timeout)
        return self._path


class Pipeline:
    """Camera → (frames → live view, detector) and (frames → encoder, or the camera's own
    packets → segments, clips); edges → events."""

    def __init__(self, cfg: RecorderConfig, camera: Camera, emitter: Emitter,
                 catalog: CatalogWriter | None = None) -> None:
        self.cfg = cfg
        self.camera = camera
        self.emitter = emitter
        self.catalog = catalog  # None: no catalog kept (an in-process test)
        self.hub = LatestFrame()
        self.state = RecorderState(cfg, camera.name, self.hub)
        self._stop = threading.Event()
        self._event: int | None = None  # the catalog's token of the detection on now
        hooks = WriterHooks(self.state.file_opened, self.state.file_closed, self._emit, catalog)
        self.segments = (SegmentWriter(cfg.record_continuous, cfg.record_split, hooks,
                                       cfg.record_dirs)
                         if cfg.record_continuous is not None else None)
        self.clips: ClipWriter | None = None
        self.encoder: EncoderThread | None = None  # made at start, when the camera needs one
        if cfg.detection_dir is not None and cfg.detection_mode is not None:
            merge_wait = PRE_ROLL + min(cfg.detect_interval, 2.0) + EDGE_LATENCY_MARGIN
            self.clips = ClipWriter(ClipConfig(cfg.detection_dir, cfg.detection_mode, merge_wait,
                                               cfg.record_dirs), hooks)
        self.guard = (DiskGuard(DiskGuardConfig(cfg.record_dirs, cfg.min_free), self._stop,
                                self._emit, is_open=self._is_open, catalog=catalog)
                      if cfg.recording else None)
        # Edge snapshots go beside the clips (or the segments); none when nothing is recorded.
        self._snapshot_dir = cfg.detection_dir or cfg.record_continuous
        self._jpeg = JpegEncoder()  # the detector thread's alone
        self.detector: Detector | None = None
        if cfg.detect is not None and cfg.detect_fn is not None:
            self.detector = Detector(cfg.detect_fn, cfg.detect == "image", cfg.detect_resize,
                                     cfg.detect_interval, self.hub, self._on_edge, self._stop)

    def _is_open(self, path: str) -> bool:
        return path in self.state.open_files()

    def _emit(self, event: Event) -> None:
        self.emitter.emit(event)
        if self.catalog is not None and event.get("disk") == "low":
            self.catalog.note("disk", f"{event.get('dir')}: {event.get('free')} bytes free, "
                              "deleting the oldest recordings")

    def _on_frame(self, frame: Frame) -> None:
        self.hub.publish(frame)
        self.state.capture_rate.tick(frame.mono)

    def _on_packet(self, packet: Packet) -> None:
        if self.segments is not None:
            self.segments.put(packet)
        if self.clips is not None:
            self.clips.put(packet)

    def _on_edge(self, edge: Edge) -> None:
        self.state.detecting = edge.rising
        log.info("detection %s", "on" if edge.rising else "off")
        catalog = self.catalog
        if catalog is not None and edge.rising:
            self._event = catalog.rose(edge.wall, LABELS)
        token = self._event
        named: _ClipName | None = None
        if self.clips is not None:
            named = _ClipName()

            def on_clip(path: Path | None, answer: _ClipName = named) -> None:
                answer.set(path)
                if catalog is not None and token is not None and path is not None:
                    catalog.clip(token, path)
            self.clips.edge(edge, on_clip)
        event = Event(detection=edge.rising, time=round(edge.wall, 3))
        snapshot = self._snapshot(edge, named)
        if snapshot is not None:
            event["jpeg"] = str(snapshot)
            if catalog is not None and token is not None and edge.rising:
                catalog.snapshot(token, snapshot)
        self._emit(event)
        if catalog is not None and token is not None and not edge.rising:
            catalog.fell(token, edge.wall)
            self._event = None

    def _snapshot(self, edge: Edge, clip: _ClipName | None) -> Path | None:
        """A JPEG of the newest frame, for the alert's photo and the catalog's event: named
        for the clip around the edge (its sidecar), else for the edge."""
        frame = self.hub.latest()
        directory = self._snapshot_dir
        if directory is None or frame is None or not (self.cfg.emit or self.catalog):
            return None
        try:
            data = self._jpeg.encode(frame.image)
        except (av.FFmpegError, ValueError) as exc:
            _limit.log(log, logging.ERROR, "snapshot", "edge snapshot not made: %s", exc)
            return None
        try:
            path = self._beside_clip(clip.wait(SNAPSHOT_WAIT), data) if clip else None
            if path is None:
                # Not a name a recording has: the snapshot would pass for its sidecar.
                path, f = create_unique(directory, file_stem(edge.wall, True), ".jpg",
                                        used=lambda s: (directory / f"{s}.h264").exists())
                with f:
                    f.write(data)
        except OSError as exc:
            _limit.log(log, logging.ERROR, "snapshot", "edge snapshot not saved: %s", exc)
            return None
        return path

    @staticmethod
    def _beside_clip(clip: Path | None, data: bytes) -> Path | None:
        """The clip's own `.jpg`, unless the clip has one already (an edge merged into it)."""
        if clip is None:
            return None
        path = clip.with_suffix(".jpg")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def start(self) -> None:
        if self.catalog is not None:
            self.catalog.start()
        for writer in (self.segments, self.clips):
            if writer is not None:
                writer.start()
        wanted = self.camera.encoder_config()
        outputs = Outputs(self._on_frame, self._on_packet)
        if wanted is not None:
            self.encoder = EncoderThread(wanted, [self._on_packet])
            self.encoder.start()
            outputs = Outputs(self._on_frame, self._on_packet, self.encoder.put, self.encoder.restart)
        self.camera.start(outputs)
        if self.detector is not None:
            self.detector.start()
        if self.guard is not None:
            self.guard.start()

    def stages(self) -> list[Stage]:
        """The threads recording depends on, for the watchdog to supervise (the camera's own
        threads are watched through the frames they deliver)."""
        started = [self.encoder, self.segments, self.clips, self.detector, self.guard,
                   self.catalog]
        return [s for s in started if s is not None]

    def stop(self) -> None:
        """Camera first, then the encoder (it flushes into the writers), then detector, then
        writers: each writer closes its file and emits its message before the process exits.
        A stage that died is not waited for: its file in hand was finished when it died."""
        self._stop.set()
        if self.detector is not None:
            self.detector.stop()
        if self.guard is not None:
            self.guard.stop()
        self.camera.stop()
        if self.encoder is not None:
            self.encoder.stop()
            self.encoder.join(timeout=JOIN_TIMEOUT)
            if self.encoder.is_alive():
                log.error("encoder did not finish in time")
        self.hub.close()
        if self.detector is not None:
            self.detector.join(timeout=0.5)
            if self.detector.is_alive():
                log.warning("detect() has not returned; not waiting for it")
        for writer in (self.segments, self.clips):
            if writer is not None:
                writer.stop()
        for writer in (self.segments, self.clips):
            if writer is not None:
                writer.join(timeout=JOIN_TIMEOUT)
                if writer.is_alive():
                    log.error("%s writer did not finish in time", writer.name)
        if self.guard is not None:
            self.guard.join(timeout=JOIN_TIMEOUT)
        if self.catalog is not None:  # last: the writers' closings are its last writes
            self.catalog.stop()
            self.catalog.join(timeout=CATALOG_JOIN)
            if self.catalog.is_alive():
                log.error("catalog writes did not finish in time")
