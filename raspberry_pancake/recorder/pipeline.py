"""One camera's pipeline: wires its stages together, owns its encoder, stops them in dependency order."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from raspberry_pancake.recorder.catalog_writer import CatalogWriter
from raspberry_pancake.recorder.config import RecorderConfig
from raspberry_pancake.recorder.detect.result import Box, Detection, FaceTag
from raspberry_pancake.recorder.detect.runner import Detector, DetectorConfig, build_checks
from raspberry_pancake.recorder.diskguard import DiskGuard, DiskGuardConfig
from raspberry_pancake.recorder.emitter import Emitter
from raspberry_pancake.recorder.frames import Frame, LatestFrame, Packet, PacketHub
from raspberry_pancake.recorder.recording.clips import PRE_ROLL, ClipConfig, ClipWriter, Edge
from raspberry_pancake.recorder.recording.encode import EncoderThread
from raspberry_pancake.recorder.recording.segments import SegmentWriter, WriterHooks
from raspberry_pancake.recorder.recording.splits import create_unique, file_stem
from raspberry_pancake.recorder.sources.base import Camera, Outputs
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.jpeg import JpegEncoder
from raspberry_pancake.shared.events import Event
from raspberry_pancake.shared.faces import FaceStore, SeenFace, StoreError
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
# What the catalog records an edge as seeing when its detectors name nothing (a bool detect()).
LABELS = ("detection",)
# The motion detector's learned statistics in the catalog (per camera).
MOTION_KEY = "motion"
# The boxes drawn on the snapshot's second copy: a colour that stands out on most scenes, and
# a line about 1/200 of the picture's width, never thinner than 2 pixels.
BOX_COLOUR = (255, 48, 0)
BOX_LINE = 200
# A face's name over its box: white on the box colour, its letters 1/LABEL_TEXT of the
# picture's height (24 px at 480 lines: still legible on a phone), never under LABEL_MIN.
LABEL_COLOUR = (255, 255, 255)
LABEL_TEXT = 20
LABEL_MIN = 12


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


class _CatalogLearned:
    """The motion detector's statistics, kept in the catalog under this camera's name."""

    def __init__(self, catalog: CatalogWriter) -> None:
        self._catalog = catalog

    def load(self) -> str | None:
        return self._catalog.learned(MOTION_KEY)

    def save(self, text: str) -> None:
        self._catalog.save_learned(MOTION_KEY, text)


def draw_boxes(image: av.VideoFrame, boxes: tuple[Box, ...],
               faces: tuple[FaceTag, ...] = ()) -> av.VideoFrame:
    """A copy of the picture with each box (fractions of the frame) outlined, and each face's
    name written above its box ("Anna", "unknown", "Anna?"): motion's boxes have no label."""
    rgb: npt.NDArray[np.uint8] = np.array(image.to_ndarray(format="rgb24"), dtype=np.uint8)
    h, w = rgb.shape[:2]
    t = max(2, w // BOX_LINE)
    colour = np.array(BOX_COLOUR, np.uint8)
    for bx, by, bw, bh in (*boxes, *(f.box for f in faces if f.box not in boxes)):
        x0, y0 = int(bx * w), int(by * h)
        x1, y1 = min(w, max(x0 + 1, round((bx + bw) * w))), min(h, max(y0 + 1, round((by + bh) * h)))
        rgb[y0:min(y1, y0 + t), x0:x1] = colour
        rgb[max(y0, y1 - t):y1, x0:x1] = colour
        rgb[y0:y1, x0:min(x1, x0 + t)] = colour
        rgb[y0:y1, max(x0, x1 - t):x1] = colour
    if faces:
        rgb = _label_faces(rgb, faces)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _label_faces(rgb: npt.NDArray[np.uint8], faces: tuple[FaceTag, ...]) -> npt.NDArray[np.uint8]:
    """Each face's label on a band of the box colour, on the box's top edge (inside the box
    when there is no room above it). Without Pillow (it comes with the face stack), none."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return rgb
    h, w = rgb.shape[:2]
    size = max(LABEL_MIN, h // LABEL_TEXT)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=size)
    except (OSError, ValueError, TypeError):
        # No FreeType, or a Pillow before 10.1 (no size): its bitmap letters, small but a name.
        font = ImageFont.load_default()
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    pad = max(2, size // 6)
    for face in faces:
        text = face.label
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        x0, y0 = int(face.box[0] * w), int(face.box[1] * h)
        x = max(0, min(x0, w - tw))
        y = y0 - th if y0 - th >= 0 else y0
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=BOX_COLOUR)
        draw.text((x + pad - left, y + pad - top), text, font=font, fill=LABEL_COLOUR)
    return np.asarray(im, dtype=np.uint8)


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
        # The H.264 live view: every packet the recordings get, as it comes. A camera that
        # records nothing encodes nothing (its viewers get JPEG), and says so.
        self.packets = PacketHub()
        if cfg.recording:
            self.state.packets = self.packets
        self._stop = threading.Event()
        self._event: int | None = None  # the catalog's token of the detection on now
        hooks = WriterHooks(self.state.file_opened, self.state.file_closed, self._emit, catalog)
        self._hooks = hooks
        self.segments = self._segment_writer()
        # Guards segments, _retired and _started against set_continuous() from the page while
        # start() or stop() runs; _on_packet reads segments without it (one attribute read).
        self._control = threading.Lock()
        self._retired: list[SegmentWriter] = []  # stopped by set_continuous(False), to join
        self._started = False
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
        # Always made, even with no detector listed: an external trigger is a detection too.
        # ConfigError (one line) when a listed detector cannot be made here.
        checks, motion = build_checks(cfg)
        self.detector = Detector(
            DetectorConfig(cfg.detect_interval, cfg.detect_combine, checks, motion), self.hub,
            self._on_edge, self._stop, on_update=self._on_update,
            learned=_CatalogLearned(catalog) if catalog is not None else None, state=self.state,
            # The faces of each event, for the page to show and name: kept only with a
            # catalog (the page finds them through its events, and pruning by them).
            on_faces=self._on_faces if catalog is not None and cfg.faces_dir is not None
            else None)

    def _segment_writer(self) -> SegmentWriter | None:
        cfg = self.cfg
        if cfg.record_continuous is None:
            return None
        return SegmentWriter(cfg.record_continuous, cfg.record_split, self._hooks,
                             cfg.record_dirs)

    # -- what the page's controls call (from any thread; none of them waits) ---------------

    def set_armed(self, armed: bool) -> None:
        """Disarmed: the detectors are not run and no edge rises; a detection on is ended."""
        log.info("camera %s", "armed" if armed else "disarmed: no detection")
        if self.detector is not None:
            self.detector.set_armed(armed)

    def set_continuous(self, on: bool) -> None:
        """Off: the segment writer finishes its file (announced as usual) and writes nothing
        until on again, when a new file starts at the next keyframe."""
        if self.cfg.record_continuous is None:
            return
        with self._control:
            writer = self.segments
            if on == (writer is not None):
                return
            log.info("continuous recording %s", "on" if on else "off")
            if not on:
                assert writer is not None
                self.segments = None  # no packet reaches it from now on
                if self._started:
                    writer.stop()  # its thread writes what is queued, closes and announces
                    self._retired.append(writer)
            else:
                writer = self._segment_writer()
                assert writer is not None
                if self._started:
                    writer.start()
                self.segments = writer

    def trigger(self, label: str, seconds: float) -> None:
        """An external trigger: a detection labelled `label` for `seconds`; another trigger
        extends it. The caller checks label and seconds (the page's API)."""
        if self.detector is not None:
            self.detector.trigger(label, seconds)

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
        self.packets.publish(packet)
        segments = self.segments  # read once: set_continuous() may change it meanwhile
        if segments is not None:
            segments.put(packet)
        if self.clips is not None:
            self.clips.put(packet)

    def _on_edge(self, edge: Edge, found: Detection | None = None) -> None:
        self.state.detecting = edge.rising
        found = found if found is not None and edge.rising else None
        if found is not None and found.labels:
            log.info("detection on: %s", ", ".join(found.labels + found.names))
        else:
            log.info("detection %s", "on" if edge.rising else "off")
        catalog = self.catalog
        if catalog is not None and edge.rising:
            if found is not None:
                self._event = catalog.rose(edge.wall, found.labels or LABELS, found.names,
                                           found.boxes, found.score)
            else:
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
        if found is not None:
            if found.labels:
                event["labels"] = list(found.labels)
            if found.names:
                event["names"] = list(found.names)
            if found.boxes:
                event["boxes"] = [list(b) for b in found.boxes]
            if found.score is not None:
                event["score"] = found.score
        boxes = found.boxes if found is not None else ()
        shots = self._snapshot(edge, named, boxes, found.faces if found is not None else ())
        if shots is not None:
            snapshot, drawn = shots
            event["jpeg"] = str(snapshot)
            if catalog is not None and token is not None and edge.rising:
                catalog.snapshot(token, snapshot)
            if drawn is not None:
                event["jpeg_boxes"] = str(drawn)
                if catalog is not None and token is not None:
                    catalog.boxes_snapshot(token, drawn)
        self._emit(event)
        if catalog is not None and token is not None and not edge.rising:
            catalog.fell(token, edge.wall)
            self._event = None

    def _on_update(self, found: Detection, wall: float) -> None:
        """New labels or names while the detection is on (at most one a second)."""
        log.info("detection now: %s", ", ".join(found.labels + found.names))
        event = Event(update=True, labels=list(found.labels), names=list(found.names),
                      time=round(wall, 3))
        self._emit(event)
        if self.catalog is not None and self._event is not None:
            self.catalog.seen(self._event, found.labels, found.names, found.boxes or None,
                              found.score)

    def _on_faces(self, rise: float, seen: Sequence[SeenFace]) -> None:
        """Faces the event that rose at `rise` had not stored yet (the detector thread's: a
        write of a few crops, never on the frame path). A store that refuses is a logged line:
        detection and recording go on."""
        assert self.cfg.faces_dir is not None
        try:
            FaceStore(self.cfg.faces_dir).add_event_faces(self.cfg.name, rise, seen)
        except (StoreError, OSError) as exc:
            why = exc.strerror or exc if isinstance(exc, OSError) else exc
            _limit.log(log, logging.ERROR, "event-faces", "the faces of this event not stored "
                       "in %s: %s", self.cfg.faces_dir, why)
            return
        log.info("event faces stored: %s", ", ".join(f.probable + "?" if f.probable else f.name
                                                     for f in seen))

    def _snapshot(self, edge: Edge, clip: _ClipName | None,
                  boxes: tuple[Box, ...] = (),
                  faces: tuple[FaceTag, ...] = ()) -> tuple[Path, Path | None] | None:
        """A JPEG of the newest frame, for the alert's photo and the catalog's event: named
        for the clip around the edge (its sidecar), else for the edge; and when there are
        boxes, a second copy with them drawn, STEM-boxes.jpg."""
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
        return path, (self._boxes_snapshot(path, frame.image, boxes, faces) if boxes or faces
                      else None)

    def _boxes_snapshot(self, plain: Path, image: av.VideoFrame, boxes: tuple[Box, ...],
                        faces: tuple[FaceTag, ...] = ()) -> Path | None:
        """The same picture with the boxes drawn (and the faces' names), beside the plain one:
        STEM-boxes.jpg."""
        try:
            data = self._jpeg.encode(draw_boxes(image, boxes, faces))
        except (av.FFmpegError, ValueError) as exc:
            _limit.log(log, logging.ERROR, "boxes", "snapshot with boxes not made: %s", exc)
            return None
        path = plain.with_name(f"{plain.stem}-boxes.jpg")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except FileExistsError:
            return None  # never overwrite: the plain one's name was new, so this is odd
        except OSError as exc:
            _limit.log(log, logging.ERROR, "boxes", "snapshot with boxes not saved: %s", exc)
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
        with self._control:
            self._started = True
            for writer in (self.segments, self.clips):
                if writer is not None:
                    writer.start()
        wanted = self.camera.encoder_config()
        failed = self.state.source_failed
        outputs = Outputs(self._on_frame, self._on_packet, failed=failed)
        if wanted is not None:
            self.encoder = EncoderThread(wanted, [self._on_packet])
            self.encoder.start()
            outputs = Outputs(self._on_frame, self._on_packet, self.encoder.put,
                              self.encoder.restart, failed)
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
        with self._control:
            active = [self.segments, self.clips]
            writers = [*active, *self._retired]  # the retired ones are stopping already
            self._started = False  # a set_continuous() from now on starts nothing
        for writer in active:
            if writer is not None:
                writer.stop()
        for writer in writers:
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
