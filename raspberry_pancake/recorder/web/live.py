"""The event loop's side of the live view: the viewers, who waits for a frame, the status they are shown."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import tornado.ioloop

from raspberry_pancake.recorder.frames import PacketHub, Unit
from raspberry_pancake.recorder.state import RecorderState
from raspberry_pancake.recorder.web.jpeg import ImageEncoder, Jpeg, JpegProducer
from raspberry_pancake.shared.credentials import redact_url

STATUS_EVERY = 1.0  # a waiting viewer hears the status at least this often
# A grid tile's JPEG rate: --max-stream-fps shared by the cameras, but never below this (a
# picture refreshed less than twice a second no longer reads as live).
GRID_MIN_FPS = 2.0
LOGGED_OUT = 1008  # websocket close code (policy violation) for a session that logged out
JPEG, H264 = "jpeg", "h264"  # a viewer's codec (/websocket?codec=)
TIMER_SLACK = 0.002
# A viewer that asked for outlines (handlers.OUTLINES_ON) gets the motion detector's newest boxes
# in its status, refreshed at most this often: each change is one more status message.
OUTLINES_EVERY = 0.25
# Boxes from a frame older than this are not shown (a detector held up by a slow detect()):
# old outlines over a live picture would point at things that have gone.
OUTLINES_STALE = 2.0


def display_name(source: str) -> str:
    """The source as viewers may see it: an rtsp://user:password@host URL loses its userinfo."""
    return redact_url(source)


class Viewer(Protocol):
    """What Live needs of a viewer; handlers.LiveSocket is the one on /websocket."""

    wants: bool
    writing: bool
    closed: bool
    last_seq: int
    last_sent: float
    status_sent: str
    status_at: float
    session: str | None  # the login session it opened with (None: not yet open)
    interval: float  # at least this long between two frames sent to it (its view's rate)
    codec: str  # JPEG or H264
    outlines: bool  # it asked for the motion detector's boxes in its status

    def wake_at(self, when: float) -> None: ...

    def send(self, item: Jpeg | Unit, status: str) -> None: ...

    def send_status(self, text: str) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Live:
    """The event loop's side of the live view: viewers, who waits for a frame, the status.

    Everything here runs on the IOLoop; the JPEG thread only reaches it via add_callback.

    Pacing: after an ack, the client gets the newest JPEG it has not seen, no sooner than
    1/--max-stream-fps after the previous frame sent to it. JPEGs are encoded by jpeg.py's
    thread only while some viewer waits, once per frame, shared by all viewers.

    H.264 viewers are sent the camera's access units (state.packets, a PacketHub) as they
    come, at the camera's rate: a viewer that is waiting (acked, its previous unit written)
    when a unit arrives gets it at once. One that acks later still gets the newest unit if it
    follows the last one it got; once a newer unit has replaced it, the viewer has missed one
    and waits for the next IDR, since a P-frame after a gap decodes to garbage. Only the
    newest unit is held, never a queue. A new viewer starts at the last IDR. They never ask
    the JPEG producer for anything.
    (The wire protocol itself is in handlers.LiveSocket's docstring.)
    """

    def __init__(self, state: RecorderState, loop: tornado.ioloop.IOLoop,
                 encoder: ImageEncoder | None = None, cameras: int = 1) -> None:
        self.state = state
        self.loop = loop
        name = "live-jpeg" if cameras == 1 else f"live-jpeg-{state.name}"
        self.producer = JpegProducer(state.hub, state.cfg.max_stream_fps, self._from_thread,
                                     encoder, name)
        self.interval = self.producer.interval
        # A tile of the grid: max(2, max_stream_fps / cameras), never above max_stream_fps.
        max_fps = state.cfg.max_stream_fps
        self.grid_interval = 1.0 / min(max_fps, max(GRID_MIN_FPS, max_fps / cameras))
        self.viewers: set[Viewer] = set()
        self.waiting: set[Viewer] = set()
        self.h264: set[Viewer] = set()
        hub = state.packets
        self.packets: PacketHub | None = hub if isinstance(hub, PacketHub) else None
        if self.packets is not None:
            self.packets.listen(self._unit_from_thread)
        self._status: dict[str, Any] = {}
        self.status_text = self._status_text()
        # The status with the outlines, for the viewers that asked; rebuilt by status_for.
        self._outlined = self.status_text
        self._outlined_at = float("-inf")
        self._outlined_base = ""

    def status_for(self, viewer: Viewer) -> str:
        """The status text `viewer` is sent: with `boxes`, `score`, `above`, `area`, `bar`
        and `boxes_seq` when it asked for outlines and motion is being analysed."""
        if not viewer.outlines:
            return self.status_text
        now = time.monotonic()
        if self._outlined_base == self.status_text and now - self._outlined_at < OUTLINES_EVERY:
            return self._outlined
        self._outlined_base = self.status_text
        self._outlined_at = now
        found = self.state.outlines()
        if found is None or now - found.mono > OUTLINES_STALE:
            self._outlined = self.status_text
        else:
            self._outlined = json.dumps({
                **self._status,
                "boxes": [list(b) for b in found.boxes],
                "score": found.score,
                "above": found.above,
                "area": found.area,
                "bar": found.bar,
                "boxes_seq": found.seq,
            }, separators=(",", ":"))
        return self._outlined

    def _unit_from_thread(self, unit: Unit) -> None:
        # On the publisher's thread. Only while some H.264 viewer is connected: one that joins
        # between this test and the next unit is pumped by LiveSocket.open itself.
        if self.h264:
            self.loop.add_callback(self._deliver_unit)

    def _deliver_unit(self) -> None:
        for viewer in list(self.h264):
            self.pump(viewer)

    def _from_thread(self, jpeg: Jpeg) -> None:
        self.loop.add_callback(self._deliver, jpeg)

    def _deliver(self, jpeg: Jpeg) -> None:
        waiting, self.waiting = self.waiting, set()
        for viewer in waiting:
            self.pump(viewer)

    def join(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        if viewer.codec == H264:
            self.h264.add(viewer)
        self.refresh_status()

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        self.waiting.discard(viewer)
        self.h264.discard(viewer)
        self.refresh_status()

    def next_unit(self, viewer: Viewer) -> Unit | None:
        """The unit `viewer` may be sent now: the newest one if it follows the last one it
        got (it missed nothing) or is an IDR; for a new viewer, the last IDR. Else None."""
        hub = self.packets
        latest = hub.latest() if hub is not None else None
        if hub is None or latest is None:
            return None
        if viewer.last_seq < 0:
            return latest if latest.idr else hub.last_idr()
        if latest.seq == viewer.last_seq + 1 or (latest.idr and latest.seq > viewer.last_seq):
            return latest
        return None

    def pump(self, viewer: Viewer) -> None:
        """Send `viewer` a frame if it asked for one and may have one now; else arrange to."""
        if not viewer.wants or viewer.writing or viewer.closed:
            return
        if viewer.codec == H264:
            # No pacing: dropping a P-frame would break every picture up to the next IDR.
            unit = self.next_unit(viewer)
            if unit is not None:
                viewer.send(unit, self.status_for(viewer))
            return
        now = time.monotonic()
        due = viewer.last_sent + max(self.interval, viewer.interval)
        # A timer may fire a hair early (epoll rounds to milliseconds): without this slack a
        # woken viewer would find itself not yet due and re-arm the timer in a busy loop.
        if now < due - TIMER_SLACK:
            viewer.wake_at(due)
            return
        cached = self.producer.latest
        if cached is not None and cached.seq > viewer.last_seq and now - cached.encoded < self.interval:
            viewer.send(cached, self.status_for(viewer))
            return
        # Nothing fresh it has not seen: wait for the producer (never on this loop).
        self.waiting.add(viewer)
        self.producer.request(max(viewer.last_seq, cached.seq if cached is not None else -1))

    def _status_text(self) -> str:
        health, _age = self.state.health()
        armed, continuous = self.state.switches()
        self._status = {
            "type": "status",
            "source": display_name(self.state.source_name),
            "detection": self.state.detecting,
            "rec": len(self.state.open_files()),
            "capture_fps": round(self.state.capture_rate.rate(), 1),
            "viewers": len(self.viewers),
            "max_stream_fps": self.state.cfg.max_stream_fps,
            "camera": self.state.name,
            "title": self.state.title,
            # No frame age here: it changes at every frame, and a changed status is resent
            # with each; the page has the age from each frame's header.
            "health": health,
            "armed": armed,
            "continuous": continuous,
            # False: this camera has no H.264 (it records nothing, so it encodes nothing); a
            # page that asked for H.264 then asks for JPEG.
            "h264": self.packets is not None,
            # Whether this camera runs the motion detector, so has outlines to show.
            "motion": "motion" in self.state.cfg.detectors,
        }
        return json.dumps(self._status, separators=(",", ":"))

    def refresh_status(self) -> None:
        self.status_text = self._status_text()
        now = time.monotonic()
        for viewer in list(self.viewers):
            text = self.status_for(viewer)
            if viewer.wants and (viewer.status_sent != text
                                 or now - viewer.status_at >= STATUS_EVERY):
                viewer.send_status(text)

    def end_session(self, session: str) -> None:
        """Close the viewers of a session that logged out: the page then finds itself logged
        out and goes to the login page, and its socket can never be reused."""
        for viewer in list(self.viewers):
            if viewer.session == session:
                viewer.close(LOGGED_OUT, "logged out")

    def drop_revoked(self, revoked: Callable[[str], bool]) -> None:
        """Close viewers whose session `revoked` says has ended (a logout on another pancake
        sharing the state directory and the password file)."""
        for viewer in list(self.viewers):
            if viewer.session is not None and revoked(viewer.session):
                viewer.close(LOGGED_OUT, "logged out")

    def close_all(self) -> None:
        if self.packets is not None:
            self.packets.unlisten(self._unit_from_thread)
        for viewer in list(self.viewers):
            viewer.close(1001, "server stopping")
