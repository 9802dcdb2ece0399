"""Motion masks: a PNG (white = watch, black = ignore) read and scaled to the detector's picture."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

Watch = npt.NDArray[np.bool_]


class MaskError(ValueError):
    """A mask that cannot be used; its message is one line naming the file and what is wrong."""


def read_mask(path: str | Path) -> npt.NDArray[np.uint8]:
    """The mask file's grey levels at its own size; MaskError if it is not a picture or all black."""
    p = Path(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise MaskError(f"motion mask {p}: not an image (no picture in it)")
            frame = next(container.decode(video=0), None)
    except FileNotFoundError:
        raise MaskError(f"motion mask {p}: no such file") from None
    except IsADirectoryError:
        raise MaskError(f"motion mask {p}: is a directory, not an image") from None
    except PermissionError:
        raise MaskError(f"motion mask {p}: cannot be read (permission denied)") from None
    except (av.FFmpegError, OSError, StopIteration) as e:
        # FFmpeg opens anything its probes recognise; a text file or a truncated PNG lands here.
        raise MaskError(f"motion mask {p}: not an image ({type(e).__name__})") from None
    if frame is None:
        raise MaskError(f"motion mask {p}: not an image (no picture in it)")
    grey = mask_grey(frame)
    if not (grey >= 128).any():
        raise MaskError(f"motion mask {p}: all black, so nothing would be watched "
                        "(white = watch, black = ignore)")
    return grey


def mask_grey(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """A decoded mask picture as grey levels; transparent pixels count as black (ignored)."""
    if frame.format.name in ("rgba", "bgra", "argb", "abgr", "ya8", "pal8", "rgba64be", "rgba64le",
                             "ya16be", "ya16le"):
        rgba = frame.to_ndarray(format="rgba")
        luma = (rgba[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        return np.where(rgba[..., 3] >= 128, luma, 0).astype(np.uint8)
    return np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)


def scale_mask(grey: npt.NDArray[np.uint8], width: int, height: int) -> Watch:
    """The watched pixels of a width x height picture: each pixel takes the mask's grey level
    under its centre, so a mask of any size lines up with the picture it is laid over."""
    mh, mw = grey.shape
    ys = ((np.arange(height) + 0.5) * mh / height).astype(np.intp).clip(0, mh - 1)
    xs = ((np.arange(width) + 0.5) * mw / width).astype(np.intp).clip(0, mw - 1)
    return grey[np.ix_(ys, xs)] >= 128
