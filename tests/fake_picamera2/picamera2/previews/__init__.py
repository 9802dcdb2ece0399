"""Stand-in for picamera2.previews (only the NullPreview, which is what runs without a display)."""

from .null_preview import NullPreview

__all__ = ["NullPreview"]
