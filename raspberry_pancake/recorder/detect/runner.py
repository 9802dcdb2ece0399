"""Detection edges: every listed detector run in one thread of its own, every --detect-interval."""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.config import ConfigError, RecorderConfig, Size
from raspberry_pancake.recorder.detect.gpio import GpioError, GpioSensor
from raspberry_pancake.recorder.detect.motion import Motion, MotionConfig, MotionDetector
from raspberry_pancake.recorder.detect.result import NOTHING, Detection, as_detection, combine
from raspberry_pancake.recorder.frames import Frame, LatestFrame
from raspberry_pancake.recorder.recording.clips import Edge
from raspberry_pancake.recorder.stage import Stage
from raspberry_pancake.recorder.state import Outlines, RecorderState
from raspberry_pancake.shared.faces import SeenFace
from raspberry_pancake.shared.logs import RateLimiter

__all__ = ["Check", "Detector", "DetectorConfig", "Learned", "build_checks"]

log = logging.getLogger(__name__)
_limit = RateLimiter(interval=30.0)

EdgeSink = Callable[[Edge, Detection], None]
UpdateSink = Callable[[Detection, float], None]
# The faces an event has not seen yet (the event's rise, as its edge carried it; the faces).
FacesSink = Callable[[float, Sequence[SeenFace]], None]
# While a detection is on, new labels or names go out at most this often (DESIGN "Messages").
UPDATE_EVERY = 1.0
# The motion detector's learned statistics are saved this often, and at stop.
SAVE_STATS_EVERY = 600.0
# How long the detector waits for the catalog to open before starting without its statistics.
STATS_WAIT = 5.0
# With no detector that needs a picture (only triggers or a sensor), how often to look again.
IDLE_WAIT = 0.5


class Learned(Protocol):
    """Where the motion detector's statistics live (the catalog, per camera)."""

    def load(self) -> str | None: ...

    def save(self, text: str) -> None: ...


@dataclass
class Check:
    """One detector as the thread calls it: `run(frame)` (frame None when `needs_frame` is
    False) gives whatever the detector answers, made a Detection by as_detection."""

    name: str
    run: Callable[[Frame | None], Any]
    needs_frame: bool
    # The label whose detection gates this one ("motion": faces only while there is motion).
    gate: str | None = None
    close: Callable[[], None] | None = None
    # The faces detector's: of its last answer, the faces the event that rose then has not
    # stored yet (embedded and cropped only then). Called on this thread, after the edge.
    event_faces: Callable[[float], Sequence[SeenFace]] | None = None
    errors: int = 0


@dataclass(frozen=True)
class DetectorConfig:
    interval: float
    combine: str = "or"
    checks: Sequence[Check] = field(default_factory=tuple)
    motion: MotionDetector | None = None  # whose statistics are loaded and saved


class _Trigger:
    """External triggers (the page's API, a doorbell): a label that is on until a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _until, set by web threads, read by the detector
        self._until: dict[str, float] = {}

    def add(self, label: str, seconds: float, now: float) -> None:
        with self._lock:
            self._until[label] = max(self._until.get(label, 0.0), now + seconds)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()

    def current(self, now: float) -> Detection:
        with self._lock:
            for label in [k for k, t in self._until.items() if t <= now]:
                del self._until[label]
            labels = tuple(self._until)
        return Detection(True, labels) if labels else NOTHING

    def deadline(self) -> float | None:
        with self._lock:
            return min(self._until.values(), default=None)


class Detector(Stage):
    """Runs every listed detector on the newest frame and reports changes the moment it sees them.

    It owns nothing the recording needs: a slow or hanging detector only delays detection.
    An exception counts as False (logged, rate-limited) and the next call goes on as usual.
    """

    def __init__(self, cfg: DetectorConfig, hub: LatestFrame, on_edge: EdgeSink,
                 stop: threading.Event, on_update: UpdateSink | None = None,
                 learned: Learned | None = None, state: RecorderState | None = None,
                 on_faces: FacesSink | None = None) -> None:
        super().__init__("detector")  # a daemon thread: a hung detect() can't pin the exit
        self._cfg = cfg
        self._checks = list(cfg.checks)
        self._frames = any(c.needs_frame for c in self._checks)
        self._hub = hub
        self._on_edge = on_edge
        self._on_update = on_update
        self._on_faces = on_faces
        self._learned = learned
        # Where the motion detector's newest boxes go for the page's outlines (None: a test).
        self._state = state
        self._stop_event = stop
        self._wake = threading.Event()  # a trigger or a disarm: look again now
        self._trigger = _Trigger()
        # Guards _new_mask: set by the page's thread, taken by this one between two frames.
        self._mask_lock = threading.Lock()
        self._new_mask: npt.NDArray[np.uint8] | None = None
        self._armed = True
        self.state = False
        self.current: Detection = NOTHING  # what the detection that is on has seen so far
        self._sent: Detection = NOTHING  # of that, what the edge and the updates carried
        self._last_update = 0.0
        self._rise = 0.0  # the wall time of the detection on now, as its edge carried it
        self._answered: list[Check] = []  # the checks that detected at this step
        self._last_save = time.monotonic()
        self.calls = 0
        self.errors = 0

    # -- control, from any thread --------------------------------------------------------

    def set_armed(self, armed: bool) -> None:
        """Disarmed: no detector runs and no edge rises; a detection that is on is ended."""
        self._armed = armed
        if not armed:
            self._trigger.clear()
        self._wake.set()

    @property
    def armed(self) -> bool:
        return self._armed

    def trigger(self, label: str, seconds: float) -> None:
        """A detection labelled `label` for `seconds` from now; another trigger extends it.
        Ignored while disarmed."""
        if not self._armed:
            log.info("trigger %r ignored: the camera is disarmed", label)
            return
        self._trigger.add(label, seconds, time.monotonic())
        self._wake.set()

    def check_mask(self, grey: npt.NDArray[np.uint8]) -> None:
        """MaskError (one line) when `grey` would leave nothing to watch in the camera's
        picture; ValueError when there is no motion detector. Any thread."""
        motion = self._cfg.motion
        if motion is None:
            raise ValueError("motion detection is off for this camera (--detect motion)")
        frame = self._hub.latest()
        if frame is not None:  # the picture it will see; before the first, it checks itself
            motion.check_mask(grey, frame.image.width, frame.image.height)

    def set_mask(self, grey: npt.NDArray[np.uint8]) -> None:
        """The motion detector watches through `grey` (mask_grey's levels) from the next frame
        on; check_mask's errors first. Any thread: the swap itself happens on this detector's
        thread, between two frames (MotionDetector is not thread-safe)."""
        self.check_mask(grey)
        with self._mask_lock:
            self._new_mask = grey
        self._wake.set()

    def _swap_mask(self) -> None:
        with self._mask_lock:
            grey, self._new_mask = self._new_mask, None
        motion = self._cfg.motion
        if grey is None or motion is None:
            return
        try:
            motion.set_mask(grey)
        except ValueError as exc:  # checked by set_mask: only a picture that changed size since
            log.error("motion mask not applied, the old one stays: %s", exc)
        else:
            log.info("motion mask applied (%d%% of the picture watched)",
                     round(100 * float((grey >= 128).mean())))

    # -- the thread ----------------------------------------------------------------------

    def request_stop(self) -> None:
        self._wake.set()  # the stop event is set already: end the wait now

    def run(self) -> None:
        self._load_stats()
        try:
            self._loop()
        finally:
            self._outlines(None)  # stopped: nothing is being analysed any more
            self._save_stats()
            for check in self._checks:
                if check.close is not None:
                    try:
                        check.close()
                    except Exception as exc:  # noqa: BLE001 — a detector's own cleanup
                        log.warning("%s did not close: %s", check.name, exc)

    def _loop(self) -> None:
        seq = -1
        due = time.monotonic()
        while not self._stop_event.is_set():
            self._wake.clear()
            self._swap_mask()
            frame: Frame | None = None
            if self._armed and self._frames:
                frame = self._hub.wait_newer(seq, timeout=0.5)
                if frame is None:
                    continue  # no picture (the camera reopens): the detection stays as it was
                seq, mono, wall = frame.seq, frame.mono, frame.wall
            else:
                mono, wall = time.monotonic(), time.time()
            self._step(frame, mono, wall)
            if time.monotonic() - self._last_save >= SAVE_STATS_EVERY:
                self._save_stats()
            if self._checks and self._armed:
                due += self._cfg.interval
                now = time.monotonic()
                if due < now:
                    due = now  # detectors took longer than the interval: carry on, don't catch up
                wait = due - now
            else:
                due = time.monotonic()
                wait = IDLE_WAIT
            deadline = self._trigger.deadline()
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            if wait > 0:
                self._wake.wait(wait)

    def _step(self, frame: Frame | None, mono: float, wall: float) -> None:
        self._answered = []
        self._edge(frame, mono, wall)
        if self.state and self._answered and self._on_faces is not None:
            self._store_faces()

    def _store_faces(self) -> None:
        """After the edge message or update: the step's faces the event has not stored yet,
        handed to the sink (the store write is on this thread, off the frame path)."""
        assert self._on_faces is not None
        for check in self._answered:
            if check.event_faces is None:
                continue
            try:
                seen = check.event_faces(self._rise)
                if seen:
                    self._on_faces(self._rise, seen)
            except Exception as exc:  # noqa: BLE001 — an event's faces are never worth detection
                _limit.log(log, logging.ERROR, f"faces-{check.name}",
                           "the faces of this event not stored: %s: %s", type(exc).__name__,
                           exc)

    def _edge(self, frame: Frame | None, mono: float, wall: float) -> None:
        if self._armed:
            answers = self._run_checks(frame) if frame is not None or not self._frames else []
            result = combine(answers, self._cfg.combine) if answers else NOTHING
            triggered = self._trigger.current(time.monotonic())
            if triggered:  # an external trigger is a detection whatever the detectors say
                result = combine([result, triggered], "or")
        else:
            result = NOTHING
            self._outlines(None)  # disarmed: no motion is analysed, so the page draws none
        if bool(result) != self.state:
            self.state = bool(result)
            self.current = self._sent = result
            self._last_update = mono
            if self.state:
                self._rise = wall
            self._on_edge(Edge(self.state, mono, wall), result)
            return
        if not self.state:
            return
        self.current = combine([self.current, result], "or")
        gained = (set(self.current.labels) - set(self._sent.labels)
                  or set(self.current.names) - set(self._sent.names))
        if gained and mono - self._last_update >= UPDATE_EVERY and self._on_update is not None:
            self._sent = self.current
            self._last_update = mono
            self._on_update(self.current, wall)

    def _run_checks(self, frame: Frame | None) -> list[Detection]:
        answers: list[Detection] = []
        seen: set[str] = set()
        for check in self._checks:
            if check.gate is not None and check.gate not in seen:
                answers.append(NOTHING)  # faces while there is no motion: a still scene is free
                continue
            answer = self._call(check, frame, check.name == "motion")
            seen.update(answer.labels if answer else ())
            answers.append(answer)
            if answer:
                self._answered.append(check)
        return answers

    def _call(self, check: Check, frame: Frame | None, outlines: bool = False) -> Detection:
        self.calls += 1
        try:
            value = check.run(frame)
            answer = as_detection(value)
        except Exception as exc:  # noqa: BLE001 — the user's code: any failure counts as False
            if outlines:
                self._outlines(None)  # a failed analysis shows nothing rather than old boxes
            self.errors += 1
            check.errors += 1
            what = "detect()" if check.name == "detect" else f"the {check.name} detector"
            _limit.log(log, logging.ERROR, f"raise-{check.name}",
                       "%s raised %s: %s (counted as False)", what, type(exc).__name__, exc)
            return NOTHING
        if outlines and isinstance(value, Motion) and frame is not None:
            self._outlines(Outlines(
                frame.seq, frame.mono, answer.boxes,
                # The bar itself, not the debounced state: what the user tunes against.
                not value.light_change and value.area >= value.threshold,
                answer.score, value.area, value.threshold))
        return answer

    def _outlines(self, outlines: Outlines | None) -> None:
        if self._state is not None:
            self._state.set_outlines(outlines)

    # -- the motion detector's learned statistics ----------------------------------------

    def _load_stats(self) -> None:
        motion, learned = self._cfg.motion, self._learned
        if motion is None or learned is None:
            return
        self._last_save = time.monotonic()
        try:
            text = learned.load()
        except Exception as exc:  # noqa: BLE001 — the catalog is optional: start afresh
            log.warning("motion statistics not loaded: %s", exc)
            return
        if text is None:
            return
        try:
            motion.import_stats(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("motion statistics in the catalog not used (%s): learning afresh",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        else:
            log.info("motion statistics loaded from the catalog")

    def _save_stats(self) -> None:
        motion, learned = self._cfg.motion, self._learned
        self._last_save = time.monotonic()
        if motion is None or learned is None:
            return
        try:
            learned.save(json.dumps(motion.export_stats(), separators=(",", ":")))
        except Exception as exc:  # noqa: BLE001 — never lose detection over a statistics write
            _limit.log(log, logging.WARNING, "stats", "motion statistics not saved: %s", exc)


# -- the detectors, made from the command line ------------------------------------------------


class _Pictures:
    """The frame in the forms the detectors want: one scaler each, kept between calls
    (frame.reformat() would build and tear down a swscale context per frame, three times
    the cost of the scaling itself)."""

    def __init__(self, size: Size | None) -> None:
        self._size = size
        self._rgb_bytes = VideoReformatter()
        self._rgb_array = VideoReformatter()

    def rgb_bytes(self, image: av.VideoFrame) -> bytes:
        """The picture as detect(rgb_bytes) wants it, at --detect-resize."""
        if self._size is not None:
            # Fast bilinear: detection needs the picture, not the finest scaling.
            image = self._rgb_bytes.reformat(image, self._size.width, self._size.height,
                                             "rgb24", interpolation="FAST_BILINEAR")
        else:
            image = self._rgb_bytes.reformat(image, format="rgb24")
        plane = image.planes[0]
        # Tightly packed rows are already the bytes detect() wants: skip numpy's copy.
        return (bytes(plane) if plane.line_size == image.width * 3
                else image.to_ndarray().tobytes())

    def rgb_array(self, image: av.VideoFrame) -> npt.NDArray[np.uint8]:
        """The whole picture as an (H, W, 3) array, for the face detector."""
        rgb = self._rgb_array.reformat(image, format="rgb24")
        return np.asarray(rgb.to_ndarray(), dtype=np.uint8)


def _need(frame: Frame | None) -> Frame:
    if frame is None:  # the thread only calls a picture detector with a frame
        raise ValueError("no frame")
    return frame


def build_checks(cfg: RecorderConfig,
                 gpio_factory: Any = None) -> tuple[list[Check], MotionDetector | None]:
    """The detectors --detect and --detect-gpio list, in the order they run: motion first (the
    faces wait for it), the user's detect(), the sensor, the faces. ConfigError (one line)
    for one that cannot be made here (a face model missing, no GPIO)."""
    pictures = _Pictures(cfg.detect_resize)
    checks: list[Check] = []
    motion: MotionDetector | None = None
    if "motion" in cfg.detectors:
        motion = _motion(cfg)
        # The luma plane straight from the frame, every few pixels: cheaper than any scaler.
        checks.append(Check("motion", _motion_check(motion), True))
    if cfg.detect is not None and cfg.detect_fn is not None:
        fn = cfg.detect_fn
        if cfg.detect == "image":
            checks.append(Check("detect", lambda f: fn(pictures.rgb_bytes(_need(f).image)), True))
        else:
            checks.append(Check("detect", lambda _f: fn(), False))
    if cfg.detect_gpio is not None:
        try:
            sensor = GpioSensor(cfg.detect_gpio, cfg.detect_gpio_kind, pin_factory=gpio_factory)
        except GpioError as exc:
            raise ConfigError(str(exc)) from None
        checks.append(Check("sensor", lambda _f: sensor(), False, close=sensor.close))
    if "faces" in cfg.detectors:
        checks.append(_faces(cfg, pictures, "motion" if motion is not None else None))
    return checks, motion


def _motion(cfg: RecorderConfig) -> MotionDetector:
    """The motion detector, with the mask saved from the page when there is one (it replaces
    --motion-mask: the page's is the newer word), else --motion-mask's."""
    def made(mask: Path | None) -> MotionDetector:
        return MotionDetector(MotionConfig(
            sensitivity=cfg.motion_sensitivity, min_area=cfg.motion_min_area,
            min_duration=cfg.motion_min_duration, mask=mask,
            # The frames it sees are the ones the clock was burned into.
            stamp_height=cfg.annotate_text_size))

    stored = cfg.stored_mask
    try:
        saved = stored is not None and stored.is_file()
    except OSError:  # a state directory we may not look into: as if none were saved
        saved = False
    if stored is not None and saved:
        instead = (f", instead of --motion-mask {cfg.motion_mask}"
                   if cfg.motion_mask is not None else "")
        try:
            motion = made(stored)
        except ValueError as exc:  # MaskError: damaged since; the flag's mask still works
            log.warning("camera %s: the motion mask saved from the page is not used (%s)%s",
                        cfg.name, exc, "; --motion-mask instead" if instead else "")
        else:
            log.info("camera %s: motion mask %s, saved from the page%s", cfg.name, stored,
                     instead)
            return motion
    try:
        return made(cfg.motion_mask)
    except ValueError as exc:  # MaskError among them: the file changed since parse
        raise ConfigError(f"--detect motion: {exc}") from None


def _motion_check(motion: MotionDetector) -> Callable[[Frame | None], Any]:
    def check(frame: Frame | None) -> Any:
        return motion.detect(_need(frame))
    return check


def _faces(cfg: RecorderConfig, pictures: _Pictures, gate: str | None) -> Check:
    try:
        faces = importlib.import_module("raspberry_pancake.recorder.detect.faces")
    except ImportError:
        raise ConfigError("--detect faces: not available in this version of pancake") from None
    why = faces.check_available()
    if why is not None:
        raise ConfigError(f"--detect faces: not available: {why}")
    faces_dir = cfg.faces_dir if cfg.faces_dir is not None else Path("faces").absolute()
    detector = faces.FaceDetector(faces.FaceConfig(faces_dir, cfg.face_match))
    return Check("faces", lambda f: detector(pictures.rgb_array(_need(f).image)), True, gate,
                 event_faces=detector.event_faces)
