"""--detect-gpio: a PIR (MotionSensor) or door contact (Button) through gpiozero's own mock pin
factory, driving edges through the real pipeline on testsrc, in-process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Listener
from gpiozero import Device  # type: ignore[import-untyped]
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]
from test_detect_pipeline import Run, edges, steer, wait_for

from raspberry_pancake.recorder.config import ConfigError, parse
from raspberry_pancake.recorder.detect.gpio import GpioError, GpioSensor
from raspberry_pancake.recorder.detect.runner import build_checks


@pytest.fixture
def pins() -> Iterator[Any]:
    """gpiozero's MockFactory as the default pin factory, as its docs show for tests."""
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


@pytest.fixture
def run() -> Iterator[Run]:
    r = Run()
    yield r
    r.stop()


def test_pir_alone_makes_edges(tmp_path: Path, listener: Listener, pins: Any, run: Run) -> None:
    run.start(tmp_path, listener, "--detect-gpio", "17")
    time.sleep(1)
    assert edges(listener) == []
    pins.pin(17).drive_high()
    rise = wait_for(listener, lambda m: m.get("detection") is True, timeout=5)
    assert rise["labels"] == ["pir"]
    pins.pin(17).drive_low()
    wait_for(listener, lambda m: m.get("detection") is False, timeout=5)
    assert edges(listener) == [True, False]


def test_door_contact_combined_with_detect_by_and(tmp_path: Path, listener: Listener,
                                                  pins: Any, run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image", "--detect-gpio", "GPIO4",
                  "--detect-gpio-kind", "button", "--detect-combine", "and",
                  "--detect-interval", "0.1")
    steer(p.cfg, {"labels": ["person"]})
    time.sleep(1)
    assert edges(listener) == []  # the picture says yes, the door not: and is no
    pins.pin(4).drive_low()  # a Button pulls up: closed is low
    rise = wait_for(listener, lambda m: m.get("detection") is True, timeout=5)
    assert rise["labels"] == ["person", "button"]
    steer(p.cfg, False)
    wait_for(listener, lambda m: m.get("detection") is False, timeout=5)
    pins.pin(4).drive_high()
    time.sleep(0.5)
    assert edges(listener) == [True, False]


def test_sensor_or_detect_and_the_pin_freed_at_stop(tmp_path: Path, listener: Listener,
                                                    pins: Any, run: Run) -> None:
    p = run.start(tmp_path, listener, "--detect", "image", "--detect-gpio", "17",
                  "--detect-interval", "0.1")
    pins.pin(17).drive_high()
    wait_for(listener, lambda m: m.get("detection") is True, timeout=5)
    pins.pin(17).drive_low()
    steer(p.cfg, True)
    time.sleep(1)
    assert edges(listener) == [True]  # detect() took over before the sensor went quiet
    run.stop()
    GpioSensor(17).close()  # the pipeline let go of the pin: it can be had again


def test_no_gpio_here_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Device.pin_factory = None
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    cfg = parse(["--source", "testsrc", "--detect-gpio", "17", "--catalog",
                 str(tmp_path / "c.db")])
    with pytest.raises(ConfigError, match=r"^--detect-gpio 17: BadPinFactory: [^\n]+$"):
        build_checks(cfg)


def test_pin_taken_is_one_line(pins: Any) -> None:
    first = GpioSensor(17)
    try:
        with pytest.raises(GpioError, match=r"^--detect-gpio 17: GPIOPinInUse"):
            GpioSensor(17, "button")
    finally:
        first.close()
