"""What every source is: the Camera protocol, where it delivers, its errors and its reopening backoff."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from raspberry_pancake.recorder.frames import FrameSink, PacketSink
from raspberry_pancake.recorder.recording.encode import EncoderConfig
from raspberry_pancake.shared.credentials import redact_url

# Reopening a failed source: first retry after this, doubling up to the cap.
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


class SourceError(Exception):
    """A source that cannot be opened or read: the message names the source and the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_url(message))


@dataclass(frozen=True, slots=True)
class SourceSpec:
    kind: str  # testsrc | picamera2 | device | url | file
    # Device path, URL, file path, or camera index. Kept out of repr(): a URL may hold a password.
    target: str = field(repr=False)

    def __str__(self) -> str:
        return self.kind if self.kind == "testsrc" else f"{self.kind}:{redact_url(self.target)}"


def _nothing() -> None:
    pass


def _no_report(_why: str | None) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Outputs:
    """Where a started source delivers, from its own threads. What it records goes either to
    `packet` (H.264 it received or encoded in hardware) or to `encode`, the pipeline's encoder,
    which is there only when the source's encoder_config() asked for one."""

    frame: FrameSink  # every frame, for viewers and detectors
    packet: PacketSink
    encode: FrameSink | None = None
    reopened: Callable[[], None] = _nothing  # the source is back after an outage: a new segment
    # The source failed and is being reopened (the reason), or delivers again (None): the
    # camera's health is "error" meanwhile (DESIGN.md "Health"), until it goes offline.
    failed: Callable[[str | None], None] = _no_report


class Camera(Protocol):
    """What the pipeline needs of a source: frames for viewers and detectors, and what to record."""

    name: str

    def open(self) -> None:
        """Open the source once, so that an unreachable one is reported at start (SourceError)."""

    def encoder_config(self) -> EncoderConfig | None:
        """After open(): the encoder the pipeline must run for this source's recordings, or None
        when nothing records or the source delivers H.264 packets itself."""

    def start(self, out: Outputs) -> None:
        """Start delivering, from the camera's own threads."""

    def stop(self) -> None:
        """Stop and join the threads; every frame and packet is delivered before it returns."""
