"""One camera's pipeline: wires its stages together, owns its encoder, stops them in dependency order."""

from __future__ import annotations

import logging
import threading

import av

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
# How long after an edge's merge window the clip writer waits for detector latency.
EDGE_LATENCY_MARGIN = 0.3


class Pipeline:
    """Camera → (frames → live view, detector) and (frames → encoder, or the camera's own
    packets → segments, clips); edges → events."""

    def __init__(self, cfg: RecorderConfig, camera: Camera, emitter: Emitter) -> None:
        self.cfg = cfg
        self.camera = camera
        self.emitter = emitter
        self.hub = LatestFrame()
        self.state = RecorderState(cfg, camera.name, self.hub)
        self._stop = threading.Event()
        hooks = WriterHooks(self.state.file_opened, self.state.file_closed, self._emit)
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
                                self._emit, is_open=self._is_open)
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
        event = Event(detection=edge.rising, time=round(edge.wall, 3))
        snapshot = self._snapshot(edge)
        if snapshot is not None:
            event["jpeg"] = snapshot
        self._emit(event)
        if self.clips is not None:
            self.clips.edge(edge)

    def _snapshot(self, edge: Edge) -> str | None:
        """A JPEG of the newest frame, named for the edge, for the alert's photo."""
        frame = self.hub.latest()
        if self._snapshot_dir is None or frame is None or not self.cfg.emit:
            return None
        try:
            data = self._jpeg.encode(frame.image)
            path, f = create_unique(self._snapshot_dir, file_stem(edge.wall, True), ".jpg")
            with f:
                f.write(data)
        except (OSError, av.FFmpegError, ValueError) as exc:
            _limit.log(log, logging.ERROR, "snapshot", "edge snapshot not saved: %s", exc)
            return None
        return str(path)

    def start(self) -> None:
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
        started = [self.encoder, self.segments, self.clips, self.detector, self.guard]
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
