"""Stand-in for picamera2.platform: which ISP this Pi has ($FAKE_PICAMERA2_PLATFORM: vc4 or pisp).

picamera2/platform.py decides once, at import, by asking each /dev/videoN for its card name:
"pispbe" is a Pi 5 (PISP), "bcm2835-isp" a Pi 4 or earlier (VC4); VC4 when neither answers.
"""

from __future__ import annotations

import os
from enum import Enum


class Platform(Enum):
    VC4 = 0
    PISP = 1


_platform = Platform.PISP if os.environ.get("FAKE_PICAMERA2_PLATFORM") == "pisp" else Platform.VC4


def get_platform() -> Platform:
    return _platform
