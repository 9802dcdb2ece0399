"""Test stand-in for libcamera's Python bindings: only Transform and ColorSpace, as picamera2 uses them.

Follows libcamera 0.3+ (`libcamera.Transform(hflip=..., vflip=..., transpose=...)`). Not libcamera.
"""

from __future__ import annotations


class Transform:
    """A sensor readout transform: horizontal/vertical flips and a transpose."""

    def __init__(self, hflip: bool | int = False, vflip: bool | int = False,
                 transpose: bool | int = False) -> None:
        self.hflip = bool(hflip)
        self.vflip = bool(vflip)
        self.transpose = bool(transpose)

    def __repr__(self) -> str:
        return f"<libcamera.Transform hflip={int(self.hflip)} vflip={int(self.vflip)} " \
               f"transpose={int(self.transpose)}>"


class ColorSpace:
    """Only the names picamera2's default configurations ask for (libcamera's CamelCase)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def Sycc() -> ColorSpace:
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace("Rec709")
