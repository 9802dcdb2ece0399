"""Test stand-in for picamera2 (NOT picamera2): the part of its API that recorder/sources/picam.py uses.

Follows picamera2 0.3.x as shipped in Raspberry Pi OS Bookworm (python3-picamera2), read from
raspberrypi/picamera2; each module cites the file and lines it follows. The version it plays is
its metadata's (see _standin). Test hooks, not picamera2 API: unplug, plug, reset, break_event_loop.
"""

from __future__ import annotations

from ._standin import break_event_loop, plug, reset, unplug
from .picamera2 import Picamera2
from .platform import Platform, get_platform
from .request import CompletedRequest, MappedArray

__all__ = ["CompletedRequest", "MappedArray", "Picamera2", "Platform", "break_event_loop",
           "get_platform", "plug", "reset", "unplug"]
