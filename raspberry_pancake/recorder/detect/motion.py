"""The built-in motion detector: a per-pixel running background on a small grey picture."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.detect.mask import MaskError, Watch, read_mask, scale_mask
from raspberry_pancake.recorder.detect.result import Detection
from raspberry_pancake.recorder.frames import Frame
from raspberry_pancake.recorder.stamp import MARGIN, layout, stamp_size

__all__ = ["MaskError", "Motion", "MotionConfig", "MotionDetector"]

Box = tuple[int, int, int, int]  # x, y, width, height in the input frame's pixels
Grey = npt.NDArray[np.uint8]
Plane = npt.NDArray[np.float32]

SMALL_WIDTH = 160  # the analysed picture's width, about; a whole divisor of the input's
_CELL = 4  # small pixels a side of the despeckle cell (_regions packs a cell's row of 4 in
# a uint32: it must be 4): a cell counts when enough of it changed
_CELL_MIN = 3  # of its 16 pixels; lone noisy pixels never add up to a cell
_BYTE_SUM = np.uint32(0x01010101)  # times 4 bytes: their sum in the top byte (see _regions)
_CELL_ON = np.uint32(_CELL_MIN << 24)  # the same in the top byte: a cell that counts
_LIGHT_FRACTION = 0.5  # of the watched picture changing at once: a light change, not motion
_RELEARN = 1.0  # seconds after start, a resize or a light change with the background re-learnt fast
_RELEARN_FRAMES = 3  # and at least this many frames, whatever the interval
_FAST_TAU = 0.3  # seconds: the background's time constant while it re-learns
_BG_TAU = 4.0  # seconds, where nothing changed: slow light drift is followed
_BG_TAU_CHANGED = 60.0  # seconds, where something changed: a parked car becomes background
_GAP = 0.5  # seconds without change that do not break a run of motion
_DEV_TAU = 20.0  # seconds: how fast a pixel's noise estimate follows what it sees
_MAX_DT = 10.0  # a longer gap between frames counts as this long
_BG_STATS_EVERY = 5  # frames between two computations of the background's mean and spread
_DEV_TO_SD = 1.25  # a Gaussian's standard deviation over its mean absolute deviation
_U8 = np.dtype(np.uint8)  # tested by identity, cheaper than ==: an equal other costs a copy
_CLIP = np.float32(2.0 / _DEV_TO_SD)  # a pixel's noise learns from at most twice its threshold
# Learned threshold: the changed area's mean and deviation per hour of day, over about
# _LEARN_TAU; used once an hour has _LEARN_WARMUP seconds of data. The bar rises to
# mean + _LEARN_K deviations, never above _LEARN_CAP percent (the detector is never blinded).
_LEARN_TAU = 900.0
_LEARN_WARMUP = 600.0
_LEARN_K = 3.0
_LEARN_CAP = 25.0
_STATS_VERSION = 1
_MAX_BOXES = 16  # the largest regions an answer carries: the rest are crumbs of the same thing

# Formats whose first plane is the luma, at the picture's size.
_LUMA_FIRST = frozenset({
    "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21",
    "nv16", "gray", "yuv410p", "yuv411p", "yuv440p",
})


@dataclass(frozen=True, slots=True)
class MotionConfig:
    """The detector's tuning.

    sensitivity 1..10: how far from its usual noise a pixel must move to count as changed.
    min_area: percent of the watched picture that must change (the floor of the learned bar).
    min_duration: seconds the change must last before it is motion, and the quiet after it.
    mask: PNG, white = watch, black = ignore, any size; None watches everything.
    stamp_height: --annotate-text-size of the picture (0: no clock burned in), so the clock
    never counts; stamp_picture: the size of the picture the clock was burned into when the
    detector is given a scaled copy (None: the frames it is given).
    learn: raise the bar per hour of day from the scene's own steady movement.
    """

    sensitivity: int = 5
    min_area: float = 0.3
    min_duration: float = 1.0
    mask: Path | None = None
    stamp_height: int = 24
    stamp_picture: tuple[int, int] | None = None
    learn: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.sensitivity <= 10:
            raise ValueError(f"motion sensitivity {self.sensitivity}: must be 1..10")
        if not 0.0 < self.min_area <= 100.0:
            raise ValueError(f"motion min area {self.min_area}: must be a percent above 0, at most 100")
        if not 0.0 <= self.min_duration <= 3600.0:
            raise ValueError(f"motion min duration {self.min_duration}: must be 0..3600 seconds")
        if self.stamp_height < 0:
            raise ValueError(f"stamp height {self.stamp_height}: must be 0 (none) or more")


@dataclass(frozen=True, slots=True)
class Motion:
    """One analysed frame. Truthy while there is motion (after min_duration); `boxes` are the
    regions changing in this frame (also while below the bar), `area` their share of the
    watched picture in percent, `score` that area over the bar in effect (`threshold`);
    `size` the analysed frame's (width, height), which the boxes' pixels are of. Boxes come
    largest first, equal ones top to bottom, then left to right."""

    detected: bool
    score: float = 0.0
    area: float = 0.0
    boxes: tuple[Box, ...] = ()
    threshold: float = 0.0
    light_change: bool = False
    labels: tuple[str, ...] = ("motion",)
    size: tuple[int, int] = (0, 0)

    def __bool__(self) -> bool:
        return self.detected

    def to_detection(self) -> Detection:
        """As every detector answers (result.py): boxes as fractions of the frame, at most
        MAX_BOXES of the largest, and a 0..1 score: area / (area + bar), 0.5 at the bar."""
        w, h = self.size
        boxes = (tuple((round(x / w, 4), round(y / h, 4), round(bw / w, 4), round(bh / h, 4))
                       for x, y, bw, bh in self.boxes[:_MAX_BOXES])
                 if w > 0 and h > 0 else ())
        total = self.area + self.threshold
        score = round(self.area / total, 3) if total > 0 else 0.0
        return Detection(self.detected, self.labels, (), boxes, score)


class MotionDetector:
    """Compares each frame with a running background, per pixel, on a ~160 pixel wide grey copy.

    Each small pixel keeps a background level and its own noise (a running variance): it
    counts as changed when it moves more than `k` times its noise (k from the sensitivity,
    never less than a floor in grey levels), so leaves in the wind raise their own threshold.
    Before comparing, the frame's brightness and contrast are matched to the background's
    (mean and spread over the watched pixels): exposure changes and gain ramps cancel out. A
    change over half the watched picture at once is a light change: the background is taken
    from the new frame and re-learnt, nothing fires. Changed pixels are counted in 4x4 cells
    (lone pixels are noise), grouped into boxes, and their area compared with the bar.

    Not thread-safe: one detector per camera, called from one thread (check_mask excepted).
    """

    def __init__(self, config: MotionConfig | None = None,
                 stats: Mapping[str, Any] | None = None) -> None:
        self.config = config if config is not None else MotionConfig()
        self._mask: npt.NDArray[np.uint8] | None = (read_mask(self.config.mask)
                                                    if self.config.mask is not None else None)
        s = self.config.sensitivity
        self._k = 5.0 - 0.3 * (s - 1)  # 5.0 deviations at 1 .. 2.3 at 10
        self._floor = 12.0 - s  # grey levels: 11 at 1 .. 2 at 10
        self._reformatter = VideoReformatter()
        self._input: tuple[int, int] | None = None  # (width, height) the state was made for
        self._factor = 1
        self._watch: Watch = np.zeros((0, 0), bool)
        self._weights: Plane = np.zeros(0, np.float32)
        self._floors: Plane = np.zeros((0, 0), np.float32)
        self._watched = 0
        self._bg: Plane | None = None
        self._dev: Plane = np.zeros((0, 0), np.float32)  # running mean |frame - background|
        self._kd = np.float32(self._k * _DEV_TO_SD)  # deviations to the threshold
        self._alpha: Plane = np.zeros((0, 0), np.float32)  # per-frame buffers: see _setup
        self._delta: Plane = self._alpha
        self._diff: Plane = self._alpha
        self._thr: Plane = self._alpha
        self._gw: Plane = np.zeros(0, np.float32)
        self._changed: npt.NDArray[np.bool_] = np.zeros((0, 0), np.bool_)
        self._counts: npt.NDArray[np.uint32] = np.zeros((0, 0), np.uint32)
        self._cell_rows: npt.NDArray[np.uint32] | None = None
        self._scale = (1.0, 1.0)  # input pixels per small pixel
        self._last: float | None = None
        self._bg_stats: tuple[float, float] | None = None
        self._bg_age = 0
        self._relearn_until = 0.0
        self._relearn_frames = 0
        self._raw_since: float | None = None
        self._quiet_since: float | None = None
        self._state = False
        # Per hour of day: [seconds of data, mean area, variance of area].
        self._hours = [[0.0, 0.0, 0.0] for _ in range(24)]
        # _hour's last (whole second, hour of day): one tuple, so that threshold() from another
        # thread reads a pair that belongs together.
        self._hour_at: tuple[int | None, int] = (None, 0)
        if stats is not None:
            self.import_stats(stats)

    # -- the picture ------------------------------------------------------------------------

    def _size(self, image: av.VideoFrame | npt.NDArray[Any]) -> tuple[int, int]:
        if isinstance(image, av.VideoFrame):
            return image.width, image.height
        shape = image.shape if isinstance(image, np.ndarray) else np.shape(image)
        if len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4)):
            return int(shape[1]), int(shape[0])
        raise ValueError(f"motion: a frame must be a grey (H, W) or RGB (H, W, 3) array, "
                         f"not shape {shape}")

    def _small(self, image: av.VideoFrame | npt.NDArray[Any]) -> Plane:
        """The picture's luma at the analysed size, as float32: each small pixel is the mean of
        the 2x2 input pixels at the centre of its block. Reading 4 of every f x f pixels costs
        a fifth of swscale's fast bilinear and a tenth of a full block average at 720p, and
        still halves the sensor noise; the per-pixel noise estimate takes the rest."""
        if isinstance(image, av.VideoFrame):
            if image.format.name in _LUMA_FIRST:
                plane = image.planes[0]
                rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
                return self._sample(rows[:image.height, :image.width])
            sh, sw = self._watch.shape
            grey = self._reformatter.reformat(image, sw, sh, "gray",
                                              interpolation="FAST_BILINEAR")
            plane = grey.planes[0]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
            return rows[:sh, :sw].astype(np.float32)
        a = image if isinstance(image, np.ndarray) else np.asarray(image)
        if a.dtype is not _U8:
            a = np.clip(a, 0, 255).astype(np.uint8)
        small = self._sample(a)
        if small.ndim == 3:
            # RGB(A), as customize.py's detect(rgb) gets it once reshaped: BT.601 luma.
            luma: Plane = small[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
            return luma
        return small

    def _sample(self, a: npt.NDArray[np.uint8]) -> Plane:
        sh, sw = self._watch.shape
        f = self._factor
        if f == 1:
            out: Plane = a[:sh, :sw].astype(np.float32)
            return out
        o = f // 2 - 1
        h, w = sh * f, sw * f
        out = a[o:h:f, o:w:f].astype(np.float32)
        out += a[o + 1:h:f, o + 1:w:f]
        out += a[o:h:f, o + 1:w:f]
        out += a[o + 1:h:f, o:w:f]
        out *= np.float32(0.25)
        return out

    def _setup(self, width: int, height: int) -> None:
        """State for a new input size: the scale, the watched pixels, a fresh background."""
        watch, factor, scale = self._watch_for(self._mask, width, height)
        self._input = (width, height)
        self._factor = factor
        self._scale = scale
        self._use(watch)
        self._bg = None
        self._dev = np.full(watch.shape, 1.0, np.float32)
        # Per-frame buffers, made once per size (none outlives its frame): the steps of
        # detect(), the changed pixels and the cells' counts, with the changed pixels' rows of
        # cells as uint32 (_regions) when the width is whole cells (else _regions copies them).
        sh, sw = watch.shape
        gh, gw = sh // _CELL, sw // _CELL
        self._alpha = np.empty(watch.shape, np.float32)
        self._delta = np.empty(watch.shape, np.float32)
        self._diff = np.empty(watch.shape, np.float32)
        self._thr = np.empty(watch.shape, np.float32)
        self._gw = np.empty(watch.size, np.float32)
        self._changed = np.empty(watch.shape, np.bool_)
        self._counts = np.empty((gh, gw), np.uint32)
        self._cell_rows = (self._changed[:gh * _CELL].view(np.uint32).reshape(gh, _CELL, gw)
                           if gw * _CELL == sw else None)

    def _use(self, watch: Watch) -> None:
        self._watch = watch
        self._weights = watch.astype(np.float32).ravel()
        self._floors = np.where(watch, np.float32(self._floor), np.float32(1e9))
        self._watched = int(watch.sum())
        self._bg_stats = None  # the light is matched over the watched pixels: new ones now

    def _watch_for(self, mask: npt.NDArray[np.uint8] | None, width: int,
                   height: int) -> tuple[Watch, int, tuple[float, float]]:
        """The watched small pixels of a width x height input through `mask` (the clock left
        out), the sampling factor and the input pixels per small pixel. Reads only the frozen
        config: safe from any thread. MaskError when nothing is left to watch."""
        factor = max(1, round(width / SMALL_WIDTH))
        sw, sh = width // factor, height // factor
        if sw < _CELL or sh < _CELL:
            raise ValueError(f"motion: a {width}x{height} picture is too small to analyse")
        scale = (width / sw, height / sh)
        watch = scale_mask(mask, sw, sh) if mask is not None else np.ones((sh, sw), bool)
        box = self._stamp_box(width, height, scale)
        if box is not None:
            x0, y0, x1, y1 = box
            watch[y0:y1, x0:x1] = False
        if not watch.any():
            raise MaskError("motion mask: nothing left to watch once the clock is left out")
        return watch, factor, scale

    def check_mask(self, grey: npt.NDArray[np.uint8], width: int, height: int) -> None:
        """MaskError (one line) if `grey` would leave nothing to watch in a width x height
        picture; any thread (set_mask, which is not, then cannot fail on it)."""
        self._watch_for(grey, width, height)

    def set_mask(self, grey: npt.NDArray[np.uint8] | None) -> None:
        """Watch through `grey` (mask_grey's levels; None: everything) from the next frame on.
        The background is kept: every pixel's was learnt, watched or not, so nothing re-learns
        and a detection that is on goes on or ends as the new mask sees it. MaskError when the
        mask leaves nothing to watch (the old one stays). The detector's thread only."""
        if self._input is not None:
            watch, _, _ = self._watch_for(grey, *self._input)
            self._use(watch)
        self._mask = grey

    @property
    def mask(self) -> npt.NDArray[np.uint8] | None:
        """The mask's grey levels in use, None when everything is watched."""
        return self._mask

    def _stamp_box(self, width: int, height: int,
                   scale: tuple[float, float]) -> tuple[int, int, int, int] | None:
        """The clock's box in small pixels (x0, y0, x1, y1), rounded outwards, or None."""
        th = self.config.stamp_height
        if th <= 0:
            return None
        pw, ph = self.config.stamp_picture or (width, height)
        placed = layout(pw, ph, th)  # the rules the sources draw it by (recorder/stamp.py)
        if placed is not None:
            form, factor = placed
            sw, sh = stamp_size(len(time.strftime(form, time.localtime(0))), factor)
            # One picture pixel of slack around it, and one small pixel for the block average
            # that smears its edge into the next small pixel.
            fx, fy = width / pw / scale[0], height / ph / scale[1]
            x1 = math.ceil((MARGIN + sw + 1) * fx) + 1
            y1 = math.ceil((MARGIN + sh + 1) * fy) + 1
            return 0, 0, x1, y1
        return None

    # -- detection --------------------------------------------------------------------------

    def detect(self, frame: Frame | av.VideoFrame | npt.NDArray[Any], mono: float | None = None,
               wall: float | None = None) -> Motion:
        """Analyse one frame: a recorder Frame, a PyAV VideoFrame (any format) or a numpy grey
        (H, W) or RGB (H, W, 3) array. `mono` (seconds, any steady clock) and `wall` (Unix
        time, for the hour of day) default to the Frame's capture times, else to now."""
        if isinstance(frame, Frame):
            mono = frame.mono if mono is None else mono
            wall = frame.wall if wall is None else wall
            image: av.VideoFrame | npt.NDArray[Any] = frame.image
        else:
            image = frame
        t = time.monotonic() if mono is None else mono
        size = self._size(image)
        if self._input != size:
            self._setup(*size)
        g = self._small(image)
        dt = 0.0 if self._last is None else min(max(t - self._last, 0.0), _MAX_DT)
        self._last = t
        if self._bg is None:
            self._bg = g
            self._relearn(t)
            return self._result(False, t, 0.0, (), self._bar(self._hour(wall)), light=False)
        bg = self._bg
        gn = self._match_light(g, bg)
        # At 160x90 each numpy call costs more than its arithmetic: the steps below are the
        # fewest calls for the per-pixel model, into buffers made once per size (_setup).
        delta = np.subtract(gn, bg, out=self._delta)
        diff = np.abs(delta, out=self._diff)
        thr = np.multiply(self._dev, self._kd, out=self._thr)
        np.maximum(thr, self._floors, out=thr)  # unwatched pixels' floor is out of reach
        changed = np.greater(diff, thr, out=self._changed)
        count = int(np.count_nonzero(changed))
        hour = self._hour(wall) if self.config.learn else 0
        relearning = t < self._relearn_until or self._relearn_frames > 0
        if count > _LIGHT_FRACTION * self._watched:
            # Lights, the sun, night mode: the whole picture moved, so the old background is
            # no use. Start from this frame and re-learn; the debounce starts over too.
            self._bg = gn
            self._relearn(t)
            return self._result(False, t, 0.0, (), self._bar(hour), light=True)
        area, boxes = self._regions(changed, count)
        bar = self._bar(hour)
        if relearning:
            a = np.float32(1.0 - math.exp(-dt / _FAST_TAU)) if dt > 0 else np.float32(0.5)
            delta *= a
            bg += delta  # the noise is left alone: a light change is not noise
            self._relearn_frames = max(0, self._relearn_frames - 1)
            return self._result(False, t, area, boxes, bar, light=False)
        self._update(delta, diff, thr, changed, count, dt)
        if self.config.learn:
            self._learn(area, dt, hour)
        return self._result(area >= bar, t, area, boxes, bar, light=False)

    def _match_light(self, g: Plane, bg: Plane) -> Plane:
        """The frame with its watched mean and spread moved onto the background's."""
        w, n = self._weights, self._watched
        gw = np.multiply(g.ravel(), w, out=self._gw)
        # A dot with the 0/1 weights, not gw.sum(): one BLAS call where numpy's pairwise
        # reduction takes twice as long. Whole or quarter grey levels (every input but an RGB
        # array's luma) add up exactly in float32 while the total stays under 2**22 (up to
        # 16,000 pixels, 160x90 is 14,400), so in any order to the same sum.
        gm = float(np.dot(gw, w)) / n
        gs = math.sqrt(max(float(gw @ gw) / n - gm * gm, 0.0))
        if self._bg_stats is None or self._bg_age >= _BG_STATS_EVERY:
            # The background moves slowly (seconds): its statistics need not be redone
            # every frame.
            bw = bg.ravel() * w
            bm = float(bw.sum()) / n
            self._bg_stats = bm, math.sqrt(max(float(bw @ bw) / n - bm * bm, 0.0))
            self._bg_age = 0
        self._bg_age += 1
        bm, bs = self._bg_stats
        # A flat picture (lens cap, night without IR) has no spread to match: offset only.
        gain = min(max(bs / gs, 0.25), 4.0) if gs > 2.0 and bs > 2.0 else 1.0
        g *= np.float32(gain)  # g is this frame's own copy
        g += np.float32(bm - gm * gain)
        return g

    def _update(self, delta: Plane, diff: Plane, thr: Plane, changed: npt.NDArray[np.bool_],
                count: int, dt: float) -> None:
        """Background and noise follow the frame: quickly where nothing changed, slowly where
        something did (a parked car becomes background in a minute or two)."""
        assert self._bg is not None
        fast = np.float32(1.0 - math.exp(-dt / _BG_TAU))
        if count:
            # The per-pixel rate: a fill and a masked copy cost under half of np.where's.
            alpha = self._alpha
            alpha.fill(fast)
            np.copyto(alpha, np.float32(1.0 - math.exp(-dt / _BG_TAU_CHANGED)), where=changed)
            delta *= alpha
        else:
            delta *= fast
        self._bg += delta
        # The noise learns from every pixel at one pace, changed or not (learning only where
        # nothing changed would never learn a branch that changes every other frame): the
        # branch raises its own threshold within a minute, a passer-by's second barely moves
        # it. Clipped at twice the threshold so one big step cannot blow it up.
        thr *= _CLIP
        np.minimum(diff, thr, out=diff)
        diff -= self._dev
        diff *= np.float32(1.0 - math.exp(-dt / _DEV_TAU))
        self._dev += diff  # may reach 0 on a flat picture: the floor still holds the threshold

    def _regions(self, changed: npt.NDArray[np.bool_], count: int) -> tuple[float, tuple[Box, ...]]:
        """The changed area (percent of the watched picture) and boxes round its pieces."""
        if count < _CELL_MIN:
            return 0.0, ()  # not one cell's worth: the quiet scene's usual case, at no cost
        counts = self._counts
        gh, gw = counts.shape
        rows = self._cell_rows
        if rows is None:
            u = np.ascontiguousarray(changed[:gh * _CELL, :gw * _CELL])
            rows = u.view(np.uint32).reshape(gh, _CELL, gw)
        # A cell's row of 4 pixels is one uint32 (a byte, 0 or 1, a pixel): its 4 rows add up
        # without a carry between the bytes (each at most 4), and a multiply gathers the 4
        # bytes' sum into the top one, whatever the byte order. Two calls on a sixteenth of
        # the pixels, where eight strided adds took three times as long.
        np.add.reduce(rows, 1, np.uint32, out=counts)
        counts *= _BYTE_SUM  # the top byte: the cell's count; the bytes below it under 2**24
        flat = (counts >= _CELL_ON).ravel().nonzero()[0]
        if not flat.size:
            return 0.0, ()
        on = counts.ravel()[flat].tolist()
        area = 100.0 * sum(n >> 24 for n in on) / self._watched
        return area, self._boxes(flat.tolist(), gw, changed)

    def _boxes(self, flat: list[int], gw: int, changed: npt.NDArray[np.bool_]) -> tuple[Box, ...]:
        """Boxes round the 8-connected pieces of the cells that changed (`flat`: their indices
        in the gw cells wide grid, in raster order), largest first (equal ones top to bottom,
        left to right), each tightened to the changed pixels inside it."""
        # Runs of neighbouring cells along a row, [y, x0, x1], in raster order; a run joins
        # the runs of the row above that it touches, corners too (a union-find over runs:
        # a few per piece, where a flood fill looked up 8 neighbours of every cell).
        runs: list[list[int]] = []
        for i in flat:
            y, x = divmod(i, gw)
            if runs and runs[-1][0] == y and runs[-1][2] == x - 1:
                runs[-1][2] = x
            else:
                runs.append([y, x, x])
        parent = list(range(len(runs)))  # a union-find, path halving inline (no calls)
        above = row = 0  # where the runs of the row above and of this row start
        for j, (y, x0, x1) in enumerate(runs):
            if runs[row][0] != y:
                above = row if runs[row][0] == y - 1 else j
                row = j
            for k in range(above, row):
                _, ax0, ax1 = runs[k]
                if ax0 <= x1 + 1 and x0 <= ax1 + 1:
                    r, q = j, k
                    while parent[r] != r:
                        parent[r] = r = parent[parent[r]]
                    while parent[q] != q:
                        parent[q] = q = parent[parent[q]]
                    parent[r] = q
        pieces: dict[int, list[int]] = {}  # by root, in the order of each piece's first cell
        for j, (y, x0, x1) in enumerate(runs):
            r = j
            while parent[r] != r:
                parent[r] = r = parent[parent[r]]
            p = pieces.get(r)
            if p is None:
                pieces[r] = [y, y, x0, x1]
            else:
                p[1] = y
                if x0 < p[2]:
                    p[2] = x0
                if x1 > p[3]:
                    p[3] = x1
        (fx, fy), c = self._scale, _CELL
        found: list[tuple[int, int, Box]] = []
        for y0, y1, x0, x1 in pieces.values():
            # Tightened to the changed pixels inside the cells (the first and last changed
            # byte of the piece's rectangle, row by row and column by column: two copies and
            # four C searches instead of four numpy reductions), then scaled to the input.
            top, left = y0 * c, x0 * c
            part = changed[top:(y1 + 1) * c, left:(x1 + 1) * c]
            rows, cols = part.shape
            by_row, by_col = part.tobytes(), part.T.tobytes()
            bottom, right = top + by_row.rfind(1) // cols + 1, left + by_col.rfind(1) // rows + 1
            top += by_row.find(1) // cols
            left += by_col.find(1) // rows
            x0_, y0_ = int(left * fx), int(top * fy)
            box = (x0_, y0_, math.ceil(right * fx) - x0_, math.ceil(bottom * fy) - y0_)
            found.append((-box[2] * box[3], len(found), box))
        found.sort()
        return tuple(box for _, _, box in found)

    def _relearn(self, t: float) -> None:
        self._bg_stats = None
        self._relearn_until = t + _RELEARN
        self._relearn_frames = _RELEARN_FRAMES

    def _result(self, raw: bool, t: float, area: float, boxes: tuple[Box, ...], bar: float,
                light: bool) -> Motion:
        """Debounce: on once raw motion has lasted min_duration (gaps under _GAP do not break
        it: a branch or a walker is seen in most frames, not every one), off after
        min_duration without any."""
        hold = self.config.min_duration
        if raw:
            self._quiet_since = None
            if self._raw_since is None:
                self._raw_since = t
            if t - self._raw_since >= hold:
                self._state = True
        else:
            if self._quiet_since is None:
                self._quiet_since = t
            quiet = t - self._quiet_since
            if quiet > _GAP or light:
                self._raw_since = None
            if self._state and (quiet >= hold or light):
                self._state = False
        return Motion(self._state, round(area / bar, 3), round(area, 3), boxes, round(bar, 3), light,
                      size=self._input or (0, 0))

    def reset(self) -> None:
        """Forget the background (the camera was moved): the next frame starts a new one."""
        self._input = None
        self._state = False
        self._raw_since = self._quiet_since = None

    # -- the learned bar --------------------------------------------------------------------

    def _hour(self, wall: float | None) -> int:
        second = math.floor(time.time() if wall is None else wall)
        cached = self._hour_at
        if cached[0] != second:  # localtime() reads whole seconds: once a second is as good
            cached = self._hour_at = (second, time.localtime(second).tm_hour)
        return cached[1]

    def _bar(self, hour: int) -> float:
        floor = self.config.min_area
        if not self.config.learn:
            return floor
        seconds, mean, var = self._hours[hour]
        if seconds < _LEARN_WARMUP:
            return floor
        return max(floor, min(mean + _LEARN_K * math.sqrt(var), max(_LEARN_CAP, floor)))

    def _learn(self, area: float, dt: float, hour: int) -> None:
        if dt <= 0:
            return
        h = self._hours[hour]
        a = 1.0 - math.exp(-dt / _LEARN_TAU)
        # Until an hour has a time constant's worth of data, average plainly (a = dt / seconds)
        # so its first minutes are not dragged towards zero.
        h[0] += dt
        a = max(a, dt / h[0])
        x = min(area, 2 * _LEARN_CAP)
        delta = x - h[1]
        h[1] += a * delta
        h[2] = (1 - a) * (h[2] + a * delta * delta)

    def threshold(self, wall: float | None = None) -> float:
        """The bar (percent of the watched picture) in effect at `wall` (default now)."""
        return self._bar(self._hour(wall))

    def export_stats(self) -> dict[str, Any]:
        """The learned statistics as a small JSON-able dict, for the catalog."""
        return {"version": _STATS_VERSION,
                "hours": [[round(s, 1), round(m, 4), round(v, 4)] for s, m, v in self._hours]}

    def import_stats(self, stats: Mapping[str, Any]) -> None:
        """Take statistics from export_stats(); ValueError (one line) if they are not that."""
        hours = stats.get("hours") if isinstance(stats, Mapping) else None
        if stats.get("version") != _STATS_VERSION or not isinstance(hours, list) or len(hours) != 24:
            raise ValueError("motion statistics: not version 1 with 24 hours")
        parsed: list[list[float]] = []
        for row in hours:
            if (not isinstance(row, list | tuple) or len(row) != 3
                    or not all(isinstance(v, int | float) and math.isfinite(v) for v in row)
                    or row[0] < 0 or row[2] < 0):
                raise ValueError("motion statistics: an hour is not [seconds, mean, variance]")
            parsed.append([float(v) for v in row])
        self._hours = parsed

    def reset_stats(self) -> None:
        """Forget what was learnt: the bar goes back to min_area."""
        self._hours = [[0.0, 0.0, 0.0] for _ in range(24)]
