"""Your detection rule. pancake.py --detect no-image calls detect(); --detect image calls
detect(rgb) with the RGB24 bytes of a frame (--detect-resize, else --resolution).
Return True while there is something to record. Keep it quick; it runs in its own thread.

Besides True/False, detect() may say what it saw, with a dict (or a
raspberry_pancake.recorder.detect.Detection): {"labels": ["cat"], "names": [],
"boxes": [[x, y, w, h]], "score": 0.9}, boxes as fractions of the frame. A detection that
gains labels while it is on sends one "update" message. The built-in motion detector
(`--detect motion`) is importable here too: raspberry_pancake.recorder.detect.MotionDetector."""

import time


def detect() -> bool:
    """Example: 'detected' during the first 10 seconds of every minute."""
    return time.localtime().tm_sec < 10
