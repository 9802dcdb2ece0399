"""The built-in motion detector on real footage and on synthetic scenes, fed frame by frame."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from raspberry_pancake.recorder.detect.mask import MaskError, read_mask
from raspberry_pancake.recorder.detect.motion import Motion, MotionConfig, MotionDetector
from raspberry_pancake.recorder.frames import Frame
from raspberry_pancake.recorder.sources.annotate import Annotator

ROOT = Path(__file__).resolve().parent.parent
PEOPLE = ROOT / "tests" / "data" / "people.mp4"  # 4 s empty square, 8 s people walking, 4 s empty
FPS = 10
W, H = 640, 360
NOON = 1_700_000_000.0  # any fixed wall time: the learned statistics are per hour of day

Grey = npt.NDArray[np.uint8]


def scene(seed: int = 1, w: int = W, h: int = H) -> npt.NDArray[np.float64]:
    """A still picture with structure at several scales, levels kept inside 50..180 so that a
    40 % brighter copy does not clip."""
    rng = np.random.default_rng(seed)
    out: npt.NDArray[np.float64] = np.zeros((h, w))
    for cell, weight in ((40, 1.0), (10, 0.5), (2, 0.25)):
        coarse = rng.random((h // cell + 1, w // cell + 1))
        out += weight * np.kron(coarse, np.ones((cell, cell)))[:h, :w]
    out = (out - out.min()) / (out.max() - out.min())
    out *= 130
    out += 50
    return out


def noisy(picture: npt.NDArray[np.float64], rng: np.random.Generator, sigma: float = 3.0) -> Grey:
    """What a sensor gives of `picture`: Gaussian read noise on every pixel, every frame."""
    return np.clip(picture + rng.normal(0, sigma, picture.shape), 0, 255).astype(np.uint8)


def run(det: MotionDetector, frames: Iterator[Grey] | list[Grey], start: float = 0.0) -> list[Motion]:
    return [det.detect(f, mono=start + i / FPS, wall=NOON) for i, f in enumerate(frames)]


def square_at(base: npt.NDArray[np.float64], x: int, y: int, size: int = 40,
              level: float = 20.0) -> npt.NDArray[np.float64]:
    out = base.copy()
    out[y:y + size, x:x + size] = level
    return out


def crossing(base: npt.NDArray[np.float64], rng: np.random.Generator, seconds: float = 4.0,
             y: int = 200) -> Iterator[tuple[Grey, int]]:
    """A dark 40x40 square crossing the picture left to right; yields (frame, its x)."""
    n = int(seconds * FPS)
    for i in range(n):
        x = int(20 + (W - 80) * i / (n - 1))
        yield noisy(square_at(base, x, y), rng), x


def write_png(path: Path, grey: Grey) -> Path:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
    with av.open(str(path), "w", format="image2") as out:
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = grey.shape[1], grey.shape[0], "gray"
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def quiet(rng: np.random.Generator, base: npt.NDArray[np.float64], seconds: float) -> list[Grey]:
    return [noisy(base, rng) for _ in range(int(seconds * FPS))]


# -- real footage ----------------------------------------------------------------------------

def people_results(config: MotionConfig) -> list[tuple[float, Motion]]:
    det = MotionDetector(config)
    out = []
    with av.open(str(PEOPLE)) as c:
        for f in c.decode(video=0):
            t = float(f.time)
            out.append((t, det.detect(f, mono=t, wall=NOON)))
    return out


def test_real_people_walking_detected_and_still_square_not() -> None:
    # The clip has no clock burned in; stamp_height=0 so its top-left corner is watched too.
    results = people_results(MotionConfig(stamp_height=0))
    assert len(results) == 160
    still_before = [m for t, m in results if t < 4.0]
    walking = [m for t, m in results if 5.0 <= t < 12.0]
    still_after = [m for t, m in results if t >= 13.5]
    assert not any(still_before)
    assert sum(map(bool, walking)) >= 0.9 * len(walking)
    assert not any(still_after)
    # Every walker is boxed somewhere in the 320x240 frame, never the whole picture.
    for m in walking:
        assert m.boxes
        for x, y, w, h in m.boxes:
            assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240
            assert w * h < 320 * 240 / 4


# -- synthetic scenes ------------------------------------------------------------------------

def test_still_scene_with_sensor_noise_never_fires_in_60_seconds() -> None:
    rng = np.random.default_rng(2)
    results = run(MotionDetector(), quiet(rng, scene(), 60))
    assert not any(results)
    assert max(m.area for m in results) < MotionConfig().min_area


@pytest.mark.parametrize("change", [+0.4, -0.4])
def test_two_second_brightness_ramp_is_not_motion(change: float) -> None:
    rng = np.random.default_rng(3)
    base = scene()
    frames = quiet(rng, base, 3)
    ramp = 2 * FPS
    frames += [noisy(base * (1 + change * (i + 1) / ramp), rng) for i in range(ramp)]
    frames += quiet(rng, base * (1 + change), 5)
    results = run(MotionDetector(), frames)
    assert not any(results)
    # Followed frame by frame (brightness and contrast matched), not by throwing the
    # background away: the detector stays sensitive through the ramp.
    assert not any(m.light_change for m in results)
    # And it still sees after it: the same square crossing the brighter or darker scene.
    det = MotionDetector()
    run(det, frames)
    after = [det.detect(f, mono=10 + i / FPS, wall=NOON)
             for i, (f, _) in enumerate(crossing(base * (1 + change), rng))]
    assert any(after)


def test_small_object_crossing_is_detected_with_a_box_round_it() -> None:
    rng = np.random.default_rng(4)
    base = scene()
    det = MotionDetector()
    run(det, quiet(rng, base, 2))
    hits = 0
    for i, (frame, x) in enumerate(crossing(base, rng)):
        m = det.detect(frame, mono=2 + i / FPS, wall=NOON)
        if not m:
            continue
        hits += 1
        # The biggest box covers the square where it is now (and may trail where it was).
        bx, by, bw, bh = m.boxes[0]
        assert bx <= x + 8 and x + 32 <= bx + bw, (m.boxes, x)
        assert by <= 208 and 232 <= by + bh, (m.boxes, 200)
        assert bw * bh < 12 * 40 * 40
    assert hits >= 20  # of 40 frames: on after min_duration (1 s) and until the end


@pytest.mark.parametrize("squares", [((96, 32), (96, 544)), ((32, 288), (288, 288)),
                                     ((64, 480), (240, 64))])
def test_equal_boxes_come_top_to_bottom_then_left_to_right(
        squares: tuple[tuple[int, int], ...]) -> None:
    """Largest first; of equal ones, the one starting higher, then further left: the order
    is the picture's, not a hash's (the edge message and the outlines carry it)."""
    rng = np.random.default_rng(15)
    base = scene()
    det = MotionDetector(MotionConfig(stamp_height=0))
    run(det, quiet(rng, base, 2))
    pic = base.copy()
    for y, x in squares:  # 32 input pixels: 2x2 whole cells of the 160x90 picture, so the
        pic[y:y + 32, x:x + 32] = 20  # boxes are the squares exactly, of one area
    m = det.detect(noisy(pic, rng), mono=2.0, wall=NOON)
    expected = sorted(((x, y, 32, 32) for y, x in squares), key=lambda b: (b[1], b[0]))
    assert list(m.boxes[:2]) == expected, m.boxes


def test_mask_over_the_path_hides_the_crossing(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    base = scene()
    # A mask of another size than the picture: a band of black over the square's path.
    mask = np.full((90, 160), 255, np.uint8)
    mask[45:63, :] = 0  # rows 180..252 of 360
    png = write_png(tmp_path / "mask.png", mask)
    det = MotionDetector(MotionConfig(mask=png))
    frames = quiet(rng, base, 2) + [f for f, _ in crossing(base, rng)]
    assert not any(run(det, frames))
    # The same crossing with no mask is seen: the mask is what hides it.
    assert any(run(MotionDetector(), frames))


def waving(base: npt.NDArray[np.float64], rng: np.random.Generator, seconds: float) -> list[Grey]:
    """A branch in the wind: a 120x100 region whose pattern flips back and forth."""
    out = []
    alt = scene(seed=9)[:100, :120]
    for i in range(int(seconds * FPS)):
        pic = base.copy()
        if (i // 2) % 2:
            pic[40:140, 400:520] = alt
        out.append(noisy(pic, rng))
    return out


def test_waving_region_masked_out_never_fires(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    base = scene()
    frames = quiet(rng, base, 2) + waving(base, rng, 20)
    mask = np.full((H, W), 255, np.uint8)
    mask[30:150, 390:530] = 0
    det = MotionDetector(MotionConfig(mask=write_png(tmp_path / "tree.png", mask)))
    assert not any(run(det, frames))
    assert any(run(MotionDetector(), frames))


def test_waving_region_unmasked_learns_its_own_noise_and_the_rest_stays_sensitive() -> None:
    """Per-pixel noise: the branch fires at first, then its pixels raise their own threshold."""
    rng = np.random.default_rng(14)
    base = scene()
    det = MotionDetector(MotionConfig(learn=False))  # the per-pixel part alone, no learned bar
    results = run(det, quiet(rng, base, 2) + waving(base, rng, 120))
    assert any(results[:20 * FPS])
    assert not any(results[60 * FPS:])
    # A walker elsewhere is still seen, with the branch still waving.
    walk = waving(base, rng, 4)
    frames = [np.where(np.arange(H)[:, None] >= 180, f2, fw).astype(np.uint8)
              for fw, (f2, _) in zip(walk, crossing(base, rng), strict=True)]
    assert any(det.detect(f, mono=200 + i / FPS, wall=NOON) for i, f in enumerate(frames))


def test_clock_burned_in_every_second_never_counts() -> None:
    """The real Annotator writes the time into yuv420p frames, as pancake's capture does."""
    rng = np.random.default_rng(7)
    base = scene()
    stamp = Annotator(48)  # big digits: 2x the default, so that the change is large

    def frames(seconds: float) -> Iterator[av.VideoFrame]:
        for i in range(int(seconds * FPS)):
            f = av.VideoFrame.from_ndarray(
                np.concatenate([noisy(base, rng), np.full((H // 2, W), 128, np.uint8)]),
                format="yuv420p")
            stamp(f, NOON + i / FPS)
            yield f

    det = MotionDetector(MotionConfig(stamp_height=48))
    results = [det.detect(f, mono=i / FPS, wall=NOON) for i, f in enumerate(frames(30))]
    assert not any(results)
    # With the clock not left out the same frames fire: the changing seconds are there.
    blind = MotionDetector(MotionConfig(stamp_height=0, min_area=0.05))
    assert any(blind.detect(f, mono=i / FPS, wall=NOON) for i, f in enumerate(frames(30)))


@pytest.mark.parametrize(("size", "text"), [((640, 360), 24), ((1280, 720), 48), ((320, 240), 24),
                                            ((160, 120), 24), ((1920, 1080), 160)])
def test_clock_box_covers_every_pixel_the_annotator_writes(size: tuple[int, int], text: int) -> None:
    w, h = size
    det = MotionDetector(MotionConfig(stamp_height=text))
    grey = np.full((h, w), 128, np.uint8)
    det.detect(grey, mono=0.0)
    written = np.zeros((h, w), bool)
    for second in range(0, 86400, 3607):  # many digits in every place
        y = np.full((h, w), 128, np.uint8)
        u = np.full((h // 2, w // 2), 128, np.uint8)
        v = u.copy()
        Annotator(text).stamp(y, u, v, w, h, NOON + second)
        written |= y != 128
    assert written.any()
    f = max(1, round(w / 160))
    watch = np.kron(det._watch, np.ones((f, f), bool))  # the small picture's watched pixels, scaled up
    ys, xs = np.nonzero(written)
    assert not watch[ys.clip(0, watch.shape[0] - 1), xs.clip(0, watch.shape[1] - 1)].any()
    # ... and leaves the rest of the picture watched: the box is no bigger than it needs.
    assert watch.mean() > 0.8


def test_sudden_light_change_is_relearnt_not_motion() -> None:
    rng = np.random.default_rng(8)
    base = scene()
    lit = base.copy()
    lit[:, : W * 3 // 4] = np.clip(lit[:, : W * 3 // 4] * 0.5 + 100, 0, 255)  # a lamp on one side
    frames = quiet(rng, base, 3) + quiet(rng, lit, 5)
    det = MotionDetector()
    results = run(det, frames)
    assert not any(results)
    assert any(m.light_change for m in results)
    # The background is the lit scene now: an object crossing it is seen.
    after = [det.detect(f, mono=8 + i / FPS, wall=NOON) for i, (f, _) in enumerate(crossing(lit, rng))]
    assert any(after)


def test_short_blip_is_debounced() -> None:
    rng = np.random.default_rng(10)
    base = scene()
    blip = [noisy(square_at(base, 300, 150, size=60), rng) for _ in range(5)]  # half a second
    frames = quiet(rng, base, 2) + blip + quiet(rng, base, 3)
    assert not any(run(MotionDetector(MotionConfig(min_duration=1.0)), frames))
    assert any(run(MotionDetector(MotionConfig(min_duration=0.0)), frames))


def test_learned_bar_rises_for_steady_movement_and_persists() -> None:
    rng = np.random.default_rng(11)
    base = scene()
    det = MotionDetector(MotionConfig(sensitivity=10))
    start = det.threshold(NOON)
    assert start == MotionConfig().min_area
    # 20 minutes of a branch waving, fed at 1 frame a second (as --detect-interval 1 would).
    frames = waving(base, rng, 120)
    for i in range(1200):
        det.detect(frames[i % len(frames)], mono=float(i), wall=NOON)
    learnt = det.threshold(NOON)
    assert learnt > 2 * start
    other_hour = det.threshold(NOON + 6 * 3600)
    assert other_hour == start
    # Exported and imported: a new detector starts with the same bar.
    stats = det.export_stats()
    again = MotionDetector(MotionConfig(sensitivity=10), stats=stats)
    assert again.threshold(NOON) == pytest.approx(learnt, rel=1e-3)
    again.reset_stats()
    assert again.threshold(NOON) == start


def test_learned_bar_hides_small_movement_below_it() -> None:
    rng = np.random.default_rng(12)
    base = scene()
    frames = quiet(rng, base, 2) + [f for f, _ in crossing(base, rng)]
    hour = MotionDetector()._hour(NOON)
    busy = {"version": 1,
            "hours": [[3600.0, 2.0, 1.0] if h == hour else [3600.0, 0.0, 0.0] for h in range(24)]}
    assert not any(run(MotionDetector(stats=busy), frames))  # bar 2 + 3 x 1 = 5 % of the picture
    assert any(run(MotionDetector(), frames))


@pytest.mark.parametrize("bad", [{}, {"version": 2, "hours": []},
                                 {"version": 1, "hours": [[0, 0, 0]] * 23},
                                 {"version": 1, "hours": [[0, "x", 0]] * 24},
                                 {"version": 1, "hours": [[0, float("nan"), 0]] * 24}])
def test_bad_statistics_are_refused_in_one_line(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"^motion statistics: [^\n]+$"):
        MotionDetector(stats=bad)


def test_bad_mask_files_raise_one_line_mask_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    black = write_png(tmp_path / "black.png", np.zeros((30, 40), np.uint8))
    for path, why in ((text, "not an image"), (black, "all black"),
                      (tmp_path / "missing.png", "no such file"), (tmp_path, "directory")):
        with pytest.raises(MaskError, match=why) as e:
            MotionDetector(MotionConfig(mask=path))
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    grey = read_mask(write_png(tmp_path / "ok.png", np.full((3, 4), 255, np.uint8)))
    assert grey.shape == (3, 4)


def test_every_input_form_gives_the_same_answer() -> None:
    """Grey array, RGB array, yuv420p and rgb24 VideoFrames, a recorder Frame: boxes in the
    input's own pixels."""
    rng = np.random.default_rng(13)
    base = scene()
    greys = quiet(rng, base, 2) + [f for f, _ in crossing(base, rng)]

    def as_yuv(g: Grey) -> av.VideoFrame:
        return av.VideoFrame.from_ndarray(
            np.concatenate([g, np.full((H // 2, W), 128, np.uint8)]), format="yuv420p")

    forms: dict[str, Callable[[Grey], Any]] = {
        "grey": lambda g: g,
        "rgb": lambda g: np.repeat(g[..., None], 3, axis=2),
        "yuv420p": as_yuv,
        "rgb24": lambda g: av.VideoFrame.from_ndarray(np.repeat(g[..., None], 3, axis=2),
                                                      format="rgb24"),
    }
    answers = {}
    for name, make in forms.items():
        det = MotionDetector(MotionConfig(stamp_height=0))
        answers[name] = [(bool(m), m.boxes[:1]) for m in run(det, [make(g) for g in greys])]
    first = answers["grey"]
    assert any(on for on, _ in first)
    for name, got in answers.items():
        on_same = sum(a[0] == b[0] for a, b in zip(got, first, strict=True))
        assert on_same >= len(first) - 2, name
    det = MotionDetector(MotionConfig(stamp_height=0))
    frames = [Frame(i, as_yuv(g), i / FPS, NOON + i / FPS) for i, g in enumerate(greys)]
    assert [bool(det.detect(f)) for f in frames] == [on for on, _ in answers["yuv420p"]]


def test_result_is_a_small_frozen_dataclass() -> None:
    m = Motion(True, score=2.0, area=1.0, boxes=((1, 2, 3, 4),), threshold=0.5)
    assert m and not Motion(False)
    assert m.labels == ("motion",)
    with pytest.raises(AttributeError):
        m.detected = False  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"sensitivity": 0}, {"sensitivity": 11}, {"min_area": 0},
                                    {"min_area": 101}, {"min_duration": -1}])
def test_config_ranges(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"^motion [^\n]+$"):
        MotionConfig(**kwargs)  # type: ignore[arg-type]


# -- util/motion_tune.py, as a user runs it --------------------------------------------------

TUNE = ROOT / "util" / "motion_tune.py"


def tune(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TUNE), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_motion_tune_charts_the_real_clip(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    r = tune(PEOPLE, "--out", out, "--sensitivity", "5", "--min-area", "0.3")
    assert r.returncode == 0, r.stderr
    chart, sheet = out / "people-chart.png", out / "people-fired.png"
    for png in (chart, sheet):
        with av.open(str(png)) as c:
            f = next(c.decode(video=0))
            assert f.width > 300 and f.height > 200
    assert "fired" in r.stdout


@pytest.mark.parametrize("args", [["missing.mp4"], ["notes.txt"], ["PEOPLE", "--sensitivity", "0"],
                                  ["PEOPLE", "--mask", "notes.txt"], ["PEOPLE", "--min-area", "x"]])
def test_motion_tune_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a video\n")
    argv = [str(PEOPLE) if a == "PEOPLE" else str(tmp_path / a) if a.endswith((".mp4", ".txt"))
            else a for a in args]
    r = tune(*argv, "--out", tmp_path / "out")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
