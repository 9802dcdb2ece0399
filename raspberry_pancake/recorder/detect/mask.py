"""Motion masks: a PNG (white = watch, black = ignore) read and scaled to the detector's picture."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# The file is read by the command line's rules (config.py sits below every stage).
from raspberry_pancake.recorder.config import MaskError, mask_grey, read_mask, read_mask_bytes

__all__ = ["MaskError", "Watch", "mask_grey", "read_mask", "read_mask_bytes", "scale_mask"]

Watch = npt.NDArray[np.bool_]


def scale_mask(grey: npt.NDArray[np.uint8], width: int, height: int) -> Watch:
    """The watched pixels of a width x height picture: each pixel takes the mask's grey level
    under its centre, so a mask of any size lines up with the picture it is laid over."""
    mh, mw = grey.shape
    ys = ((np.arange(height) + 0.5) * mh / height).astype(np.intp).clip(0, mh - 1)
    xs = ((np.arange(width) + 0.5) * mw / width).astype(np.intp).clip(0, mw - 1)
    return grey[np.ix_(ys, xs)] >= 128
