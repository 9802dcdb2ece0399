"""Stand-in for picamera2's LibavH264Encoder: what H264Encoder is on a Pi 5 (no VideoCore encoder)."""

from __future__ import annotations

from .h264_encoder import H264Encoder


class LibavH264Encoder(H264Encoder):
    """libx264 on the CPU, with picamera2's LibavH264Encoder signature and defaults
    (encoders/libav_h264_encoder.py line 17); it reads frames through the CPU, so no size limit
    and no cache to flush."""

    _HARDWARE = False

    def __init__(self, bitrate: int | None = None, repeat: bool = True, iperiod: int = 30,
                 framerate: float = 30, qp: int | None = None, profile: str | None = None) -> None:
        super().__init__(bitrate=bitrate, repeat=repeat, iperiod=iperiod, framerate=framerate,
                         qp=qp, profile=profile)
