"""A PIR or door sensor on a GPIO pin (gpiozero) as a detector: on while the sensor is active."""

from __future__ import annotations

import warnings
from typing import Any

from raspberry_pancake.recorder.detect.result import Detection

__all__ = ["KINDS", "GpioError", "GpioSensor"]

# --detect-gpio-kind: the gpiozero class, and the label its detections carry.
KINDS = {"motion": ("MotionSensor", "pir"), "button": ("Button", "button")}


class GpioError(RuntimeError):
    """The sensor cannot be used (no gpiozero, no GPIO here, the pin taken): one line."""


class GpioSensor:
    """gpiozero's MotionSensor (a PIR: active while it sees movement) or Button (a door
    contact or a push button: active while closed). Called as detector() -> Detection.

    gpiozero reads the pin on its own thread (MotionSensor) or in the kernel (Button);
    is_active is safe to read from the detector thread.
    """

    def __init__(self, pin: int | str, kind: str = "motion", pin_factory: Any = None) -> None:
        if kind not in KINDS:
            raise GpioError(f"--detect-gpio-kind: {kind!r} is not one of {', '.join(KINDS)}")
        try:
            import gpiozero  # type: ignore[import-untyped]  # optional, and untyped
        except ImportError:
            raise GpioError("--detect-gpio needs gpiozero: pip install 'gpiozero>=2'") from None
        name, label = KINDS[kind]
        self.label = label
        self.pin = pin
        try:
            with warnings.catch_warnings():
                # gpiozero warns once per pin library it cannot load before it finds one:
                # noise in the log of a Pi that has the one it needs.
                warnings.simplefilter("ignore", gpiozero.PinFactoryFallback)
                self._device: Any = getattr(gpiozero, name)(pin, pin_factory=pin_factory)
        except (gpiozero.GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
            raise GpioError(f"--detect-gpio {pin}: {type(exc).__name__}: {exc}") from None

    def __call__(self) -> Detection:
        return Detection(True, (self.label,)) if self._device.is_active else Detection(False)

    def close(self) -> None:
        self._device.close()
