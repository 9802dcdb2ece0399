"""Stand-in for picamera2.encoders: Encoder, Quality, and H264Encoder as picamera2 picks it.

picamera2/encoders/__init__.py lines 13-18: H264Encoder is the V4L2 (VideoCore) encoder when
the platform is VC4 (a Pi 4 or earlier), else LibavH264Encoder; $FAKE_PICAMERA2_PLATFORM=pisp
plays a Pi 5 (see ..platform).
"""

from ..platform import Platform, get_platform
from .encoder import Encoder, Quality
from .h264_encoder import H264Encoder as _V4L2H264Encoder
from .libav_h264_encoder import LibavH264Encoder

H264Encoder: type[_V4L2H264Encoder] = (
    _V4L2H264Encoder if get_platform() == Platform.VC4 else LibavH264Encoder)

__all__ = ["Encoder", "H264Encoder", "LibavH264Encoder", "Quality"]
