"""Detectors: they read the newest frame on their own threads and report edges."""

# What customize.py may import: the result type, and the motion detector to combine with a rule.
from raspberry_pancake.recorder.detect.motion import Motion, MotionConfig, MotionDetector
from raspberry_pancake.recorder.detect.result import Detection, as_detection, combine

__all__ = ["Detection", "Motion", "MotionConfig", "MotionDetector", "as_detection", "combine"]
