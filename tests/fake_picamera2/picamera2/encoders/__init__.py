"""Stand-in for picamera2.encoders: Encoder, Quality and the H264Encoder a Pi 4 gets."""

from .encoder import Encoder, Quality
from .h264_encoder import H264Encoder

__all__ = ["Encoder", "H264Encoder", "Quality"]
