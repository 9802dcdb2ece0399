"""Your detection rule. pancake.py --detect no-image calls detect(); --detect image calls
detect(rgb) with the RGB24 bytes of a frame (--detect-resize, else --resolution).
Return True while there is something to record. Keep it quick; it runs in its own thread."""

import time


def detect() -> bool:
    """Example: 'detected' during the first 10 seconds of every minute."""
    return time.localtime().tm_sec < 10
