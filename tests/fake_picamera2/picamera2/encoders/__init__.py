"""Stand-in for picamera2.encoders: Encoder, Quality, and H264Encoder as picamera2 picks it.

picamera2 binds H264Encoder to the V4L2 (VideoCore) encoder when /dev/video11 is the bcm2835
codec, else to LibavH264Encoder; here $FAKE_PICAMERA2_PLATFORM=pisp plays a Pi 5.
"""

import os

from .encoder import Encoder, Quality
from .h264_encoder import H264Encoder as _HardwareH264Encoder
from .libav_h264_encoder import LibavH264Encoder

H264Encoder: type[_HardwareH264Encoder] = (
    LibavH264Encoder if os.environ.get("FAKE_PICAMERA2_PLATFORM") == "pisp" else _HardwareH264Encoder)

__all__ = ["Encoder", "H264Encoder", "LibavH264Encoder", "Quality"]
