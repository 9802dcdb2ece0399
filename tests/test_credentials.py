"""redact_url: a URL's whole user:password@ becomes ***@, whatever the password holds."""

from __future__ import annotations

import pytest

from raspberry_pancake.shared.credentials import redact_url, url_has_password


@pytest.mark.parametrize(("text", "shown"), [
    ("rtsp://admin:hunter2@cam.local:554/stream1", "rtsp://***@cam.local:554/stream1"),
    # '@' and ':' inside the password: FFmpeg splits at the last '@' before the path.
    ("rtsp://admin:p@ss:w0rd@cam.local/s", "rtsp://***@cam.local/s"),
    ("rtsp://admin:@@@@cam.local/s", "rtsp://***@cam.local/s"),
    ("rtsp://admin:a:b:c@10.0.0.2:8554", "rtsp://***@10.0.0.2:8554"),
    # A blank, or a '/' (which FFmpeg cannot parse, but its error quotes it).
    ("rtsp://admin:correct horse@cam/s", "rtsp://***@cam/s"),
    ("rtsp://admin:pa/ss@cam/s", "rtsp://***@cam/s"),
    # IPv6 hosts, with and without credentials, with a zone.
    ("rtsp://u:p@[2001:db8::1]:554/s", "rtsp://***@[2001:db8::1]:554/s"),
    ("rtsp://u:p@[fe80::1%eth0]/s", "rtsp://***@[fe80::1%eth0]/s"),
    ("rtsp://[2001:db8::1]:554/s", "rtsp://[2001:db8::1]:554/s"),
    # No userinfo, or a user without a password (hidden too: it is half of a login).
    ("http://cam.local:8080/video", "http://cam.local:8080/video"),
    ("rtsp://admin@cam.local/s", "rtsp://***@cam.local/s"),
    ("http://u:p@cam?x=1", "http://***@cam?x=1"),
    ("http://u:p@cam#frag", "http://***@cam#frag"),
    # Inside messages: our source names, FFmpeg's quoted URL, two URLs in one line.
    ("url:rtsp://u:p@cam/s", "url:rtsp://***@cam/s"),
    ("source url:http://u:p@ss@127.0.0.1:1/x: cannot open: [Errno 111] Connection refused: "
     "'http://u:p@ss@127.0.0.1:1/x'",
     "source url:http://***@127.0.0.1:1/x: cannot open: [Errno 111] Connection refused: "
     "'http://***@127.0.0.1:1/x'"),
    ("a rtsp://u:p@h and rtsp://v:q@k/b", "a rtsp://***@h and rtsp://***@k/b"),
    ("no url here: a@b", "no url here: a@b"),
    ("/dev/video0", "/dev/video0"),
])
def test_redact_url(text: str, shown: str) -> None:
    assert redact_url(text) == shown
    assert redact_url(shown) == shown  # already redacted text stays as it is


@pytest.mark.parametrize(("text", "has"), [
    ("rtsp://admin:p@ss@cam/s", True),
    ("rtsp://u:p@[::1]/s", True),
    ("rtsp://admin@cam/s", False),
    ("rtsp://[::1]:554/s", False),
    ("http://cam:8080/video", False),
    ("testsrc", False),
])
def test_url_has_password(text: str, has: bool) -> None:
    assert url_has_password(text) is has
