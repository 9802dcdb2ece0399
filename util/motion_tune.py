#!/usr/bin/env python3
"""Replay a video through the motion detector and chart why and where it fired.

examples:
  python3 util/motion_tune.py h264/20240501-1200.h264
      writes 20240501-1200-chart.png (changed area over time, the bar, detections shaded)
      and 20240501-1200-fired.png (frames where it fired, changed regions outlined)
  python3 util/motion_tune.py --mask mask.png --sensitivity 3 --min-area 1 clip.mp4 --out /tmp/t

The detector is pancake's own (--detect motion), with the same options; any file PyAV opens
will do. Its learned bar starts from nothing here, as on a first start.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np
import numpy.typing as npt

from raspberry_pancake.recorder.detect.mask import MaskError
from raspberry_pancake.recorder.detect.motion import Box, MotionConfig, MotionDetector
from raspberry_pancake.shared.cli import ConfigError, OneLineParser

_SHEET_TILES = 12  # frames on the contact sheet
_KEEP = 240  # fired frames kept in memory while replaying; thinned evenly beyond that
_TILE_WIDTH = 320
_DEFAULT = MotionConfig()


@dataclass
class Replay:
    times: list[float] = field(default_factory=list)
    areas: list[float] = field(default_factory=list)
    bars: list[float] = field(default_factory=list)
    on: list[bool] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # when each detection began
    # (time, picture at most _TILE_WIDTH wide, boxes in that picture's pixels, first of its detection)
    fired: list[tuple[float, npt.NDArray[np.uint8], tuple[Box, ...], bool]] = field(
        default_factory=list)
    stride: int = 1
    width: int = 0
    height: int = 0


def _parse(argv: list[str]) -> tuple[Path, MotionConfig, Path, float]:
    p = OneLineParser(prog="motion_tune.py", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("video", type=Path, help="any file PyAV opens (.h264, .mp4, ...)")
    p.add_argument("--mask", type=Path, help="PNG: white = watch, black = ignore, any size")
    p.add_argument("--sensitivity", type=int, default=_DEFAULT.sensitivity, metavar="1..10")
    p.add_argument("--min-area", type=float, default=_DEFAULT.min_area, metavar="PCT",
                   help="percent of the watched picture that must change")
    p.add_argument("--min-duration", type=float, default=_DEFAULT.min_duration,
                   metavar="SECONDS")
    p.add_argument("--stamp-height", type=int, default=_DEFAULT.stamp_height, metavar="PX",
                   help="the recording's --annotate-text-size (0: no clock burned in)")
    p.add_argument("--interval", type=float, default=0.0, metavar="SECONDS",
                   help="analyse a frame this often, as --detect-interval (default every frame)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where the two PNGs go (default beside the video)")
    a = p.parse_args(argv)
    try:
        config = MotionConfig(sensitivity=a.sensitivity, min_area=a.min_area,
                              min_duration=a.min_duration, mask=a.mask,
                              stamp_height=a.stamp_height)
    except ValueError as e:
        p.error(str(e))
    if a.interval < 0:
        p.error("--interval: must be 0 or more seconds")
    if not a.video.is_file():
        p.error(f"{a.video}: no such file")
    return a.video, config, a.out if a.out is not None else a.video.parent, a.interval


def replay(video: Path, det: MotionDetector, interval: float) -> Replay:
    r = Replay()
    try:
        container = av.open(str(video))
    except (av.FFmpegError, OSError) as e:
        raise ConfigError(f"{video}: not a video PyAV can open ({type(e).__name__})") from None
    with container:
        if not container.streams.video:
            raise ConfigError(f"{video}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        due = None
        count = 0
        was_on = False
        try:
            for frame in container.decode(stream):
                # Raw .h264 has no timestamps: count frames at the stream's rate instead.
                t = float(frame.time) if frame.time is not None else count / float(
                    stream.average_rate or 25)
                count += 1
                if due is not None and t < due:
                    continue
                due = t + interval
                m = det.detect(frame, mono=t)
                r.times.append(t)
                r.areas.append(m.area)
                r.bars.append(m.threshold)
                r.on.append(bool(m))
                r.width, r.height = frame.width, frame.height
                first = bool(m) and not was_on
                if first:
                    r.starts.append(t)
                was_on = bool(m)
                if m and (first or (len(r.on) - 1) % r.stride == 0):
                    _keep(r, t, frame, m.boxes, first)
        except av.FFmpegError as e:
            if not r.times:
                raise ConfigError(f"{video}: cannot be decoded ({type(e).__name__})") from None
            print(f"{video}: stopped at {r.times[-1]:.1f} s, the rest cannot be decoded", file=sys.stderr)
    if not r.times:
        raise ConfigError(f"{video}: has no frames")
    return r


def _keep(r: Replay, t: float, frame: av.VideoFrame, boxes: tuple[Box, ...], first: bool) -> None:
    scale = min(1.0, _TILE_WIDTH / frame.width)
    w, h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    pic = np.asarray(frame.reformat(w, h, "gray").to_ndarray(), dtype=np.uint8)
    tile_boxes = tuple((round(x * scale), round(y * scale), round(bw * scale), round(bh * scale))
                       for x, y, bw, bh in boxes)
    r.fired.append((t, pic, tile_boxes, first))
    if len(r.fired) > _KEEP:
        # Thin evenly, but keep every detection's first frame.
        r.fired = [f for i, f in enumerate(r.fired) if f[3] or i % 2 == 0]
        r.stride *= 2


def chart(r: Replay, path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # Agg through Figure: no display, no pyplot state

    fig = Figure(figsize=(12, 4), dpi=100)
    ax = fig.add_subplot()
    t = np.array(r.times)
    ax.plot(t, r.areas, lw=0.8, color="tab:blue", label="changed area, % of the watched picture")
    ax.plot(t, r.bars, lw=1.2, color="tab:red", ls="--", label="threshold (min area, or learned)")
    on = np.array(r.on)
    ax.fill_between(t, 0, 1, where=on, step="post", color="tab:orange", alpha=0.25,
                    transform=ax.get_xaxis_transform(), label="motion detected")
    ax.set_xlabel("seconds into the video")
    ax.set_ylabel("% changed")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))


def sheet(r: Replay, path: Path, title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    picks = _pick(r)
    cols = 4
    rows = max(1, (len(picks) + cols - 1) // cols)
    aspect = r.height / r.width if r.width else 0.75
    fig = Figure(figsize=(cols * 3.2, rows * 3.2 * aspect + 0.6), dpi=100)
    fig.suptitle(title)
    if not picks:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "it never fired", ha="center", va="center", fontsize=16)
    for i, (t, pic, boxes, first) in enumerate(picks):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(pic, cmap="gray", vmin=0, vmax=255)
        for x, y, w, h in boxes:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="red", lw=1.2))
        ax.set_title(f"{t:.1f} s" + (" (start)" if first else ""), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(str(path))


def _pick(r: Replay) -> list[tuple[float, npt.NDArray[np.uint8], tuple[Box, ...], bool]]:
    starts = [f for f in r.fired if f[3]][:_SHEET_TILES]
    rest = [f for f in r.fired if not f[3]]
    room = _SHEET_TILES - len(starts)
    if room > 0 and rest:
        idx = np.linspace(0, len(rest) - 1, min(room, len(rest))).round().astype(int)
        starts += [rest[i] for i in sorted(set(idx.tolist()))]
    return sorted(starts, key=lambda f: f[0])


def main(argv: list[str] | None = None) -> int:
    video, config, out, interval = _parse(sys.argv[1:] if argv is None else argv)
    try:
        import matplotlib  # checked before the replay, which may be long

        matplotlib.use("Agg")  # files only: no display is needed or looked for
    except ImportError:
        print("motion_tune.py: error: needs matplotlib: .venv/bin/pip install matplotlib",
              file=sys.stderr)
        return 2
    try:
        det = MotionDetector(config)
        out.mkdir(parents=True, exist_ok=True)
        r = replay(video, det, interval)
    except (MaskError, ConfigError, ValueError) as e:
        print(f"motion_tune.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"motion_tune.py: error: {out}: {e.strerror}", file=sys.stderr)
        return 2
    stem = video.stem
    title = (f"{video.name}: sensitivity {config.sensitivity}, min area {config.min_area} %, "
             f"min duration {config.min_duration} s" + (f", mask {config.mask.name}" if config.mask else ""))
    chart_path, sheet_path = out / f"{stem}-chart.png", out / f"{stem}-fired.png"
    chart(r, chart_path, title)
    sheet(r, sheet_path, title)
    on_seconds = _on_seconds(r)
    print(f"{len(r.times)} frames analysed over {r.times[-1]:.1f} s; fired {len(r.starts)} times "
          f"({on_seconds:.1f} s in all)" + (": at " + ", ".join(f"{s:.1f}" for s in r.starts[:20])
                                            + " s" if r.starts else ""))
    print(f"chart: {chart_path}")
    print(f"frames where it fired: {sheet_path}")
    return 0


def _on_seconds(r: Replay) -> float:
    total = 0.0
    for i in range(1, len(r.times)):
        if r.on[i - 1]:
            total += r.times[i] - r.times[i - 1]
    return total


if __name__ == "__main__":
    sys.exit(main())
