"""The message schema's detection fields (labels, names, boxes, score, update, health, camera)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raspberry_pancake.postproc.receiver import PathPolicy, accept
from raspberry_pancake.shared.events import EventError, decode, encode, validate

UID = 1000
EDGE = {"detection": True, "time": 1719158711.25}


def test_a_labelled_edge_goes_through_as_sent() -> None:
    event = {**EDGE, "labels": ["motion", "person"], "names": ["Ann", "unknown"],
             "boxes": [[0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]], "score": 0.75, "camera": "front-door",
             "jpeg": "/r/a.jpg", "jpeg_boxes": "/r/a-boxes.jpg"}
    assert decode(encode(validate(event))) == event


@pytest.mark.parametrize("event", [
    {"update": True, "labels": ["face"], "names": ["Ann"], "time": 1719158711},
    {"health": "offline"}, {"health": "live", "camera": "cam"}, {"health": "delay"},
    {"health": "error", "time": 1719158711},
])
def test_update_and_health_messages_stand_on_their_own(event: dict[str, Any]) -> None:
    assert decode(json.dumps(event).encode()) == event


@pytest.mark.parametrize(("extra", "reason"), [
    ({"labels": "motion"}, "labels: wrong type"),
    ({"labels": [5]}, "labels: not a list of strings"),
    ({"labels": [""]}, "labels: not 1..64 printable"),
    ({"labels": ["x" * 65]}, "labels: not 1..64 printable"),
    ({"labels": ["a\tb"]}, "labels: control character"),
    ({"labels": ["a\u202eb"]}, "labels: not 1..64 printable"),
    ({"labels": ["\ud800"]}, "labels: not valid Unicode"),
    ({"names": [f"n{i}" for i in range(33)]}, "names: more than 32"),
    ({"names": [None]}, "names: not a list of strings"),
    ({"boxes": [[0.1, 0.2, 0.3]]}, "boxes: not a list of"),
    ({"boxes": [0.1, 0.2, 0.3, 0.4]}, "boxes: not a list of"),
    ({"boxes": [[0.1, 0.2, 0.3, True]]}, "boxes: not a list of"),
    ({"boxes": [[0.1, 0.2, 0.3, "0.4"]]}, "boxes: not a list of"),
    ({"boxes": [[0.1, 0.2, 0.3, 1.5]]}, "boxes: out of range"),
    ({"boxes": [[-0.1, 0.2, 0.3, 0.4]]}, "boxes: out of range"),
    ({"boxes": [[0.1, 0.2, 0.3, 0.4]] * 65}, "boxes: more than 64"),
    ({"score": 1.01}, "score: out of range"),
    ({"score": -0.5}, "score: out of range"),
    ({"score": True}, "score: wrong type"),
    ({"score": "high"}, "score: wrong type"),
    ({"score": 10 ** 400}, "score: out of range"),
    ({"update": False}, "update: only true"),
    ({"update": 1}, "update: wrong type"),
    ({"jpeg_boxes": "a-boxes.jpg"}, "jpeg_boxes: not an absolute path"),
    ({"jpeg_boxes": "/a\n.jpg"}, "jpeg_boxes: control character"),
    ({"health": "dead"}, "health: not one of"),
    ({"health": 1}, "health: wrong type"),
    ({"camera": "Front door"}, "camera: not a camera name"),
    ({"camera": "c" * 33}, "camera: not a camera name"),
    ({"camera": ""}, "camera: not a camera name"),
])
def test_bad_detection_fields_drop_the_datagram(extra: dict[str, Any], reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        decode(json.dumps({**EDGE, **extra}).encode())


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_scores_and_boxes_must_be_finite(text: str) -> None:
    for field in (f'"score": {text}', f'"boxes": [[0, 0, 0.5, {text}]]'):
        with pytest.raises(EventError, match=r"not a finite number|out of range"):
            decode(f'{{"detection": true, {field}}}'.encode())


def test_fields_that_only_qualify_a_message_are_not_one() -> None:
    for event in ({"labels": ["motion"]}, {"camera": "cam"}, {"score": 0.5},
                  {"jpeg_boxes": "/a-boxes.jpg"}):
        with pytest.raises(EventError, match="neither h264, detection, disk, update nor health"):
            decode(json.dumps(event).encode())


def test_receiver_accepts_labelled_edges_and_drops_bad_ones(tmp_path: Path) -> None:
    policy = PathPolicy([tmp_path])
    good = {**EDGE, "labels": ["motion"], "boxes": [[0.25, 0.25, 0.5, 0.5]], "score": 0.4}
    accepted = accept(json.dumps(good).encode(), UID, frozenset({UID}), policy)
    assert accepted.event == good
    update = {"update": True, "labels": ["motion", "face"], "names": ["unknown"]}
    assert accept(json.dumps(update).encode(), UID, frozenset({UID}), policy).event == update
    with pytest.raises(EventError, match="score"):
        accept(json.dumps({**good, "score": 2}).encode(), UID, frozenset({UID}), policy)
