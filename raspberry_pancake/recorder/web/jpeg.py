"""JPEGs for the live view: one per frame, only on demand, at most --max-stream-fps a second."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
from av.video.reformatter import VideoReformatter

from raspberry_pancake.recorder.frames import Frame, LatestFrame
from raspberry_pancake.shared.logs import RateLimiter, with_camera

log = logging.getLogger(__name__)

# libavcodec's mjpeg quantiser (2 best .. 31 worst): 5 keeps edges and text crisp at about a
# quarter of q=2's size, so a 1280x720 frame (~50 KB) still fits a 2 Mbit/s link at 4 fps.
JPEG_QSCALE = 5
# How long the producer sleeps on a condition before looking at its stop event again.
POLL = 0.25
TIME_BASE = Fraction(1, 1000)  # the mjpeg context's, and every frame sent to it


@dataclass(frozen=True, slots=True)
class Jpeg:
    """One encoded frame, shared read-only by every viewer that is sent it."""

    seq: int
    data: bytes
    wall: float  # capture time, time.time()
    mono: float  # capture time, time.monotonic()
    encoded: float  # time.monotonic() when the encode finished


class ImageEncoder(Protocol):
    """What the producer needs of an encoder: JpegEncoder, or a test's one that fails on purpose."""

    def encode(self, image: av.VideoFrame) -> bytes: ...


class JpegEncoder:
    """libavcodec's mjpeg encoder behind one call; rebuilt when the frame size changes.

    Safe to share between threads (one lock around each encode), though each user normally
    has its own: the live view's producer and the pipeline's edge snapshot.
    """

    def __init__(self, qscale: int = JPEG_QSCALE) -> None:
        self._qscale = qscale
        # Guards _reformatter, _ctx and _pts: a codec context and a swscale context are not
        # thread-safe, and two encodes interleaving would send the encoder pts out of order.
        self._lock = threading.Lock()
        self._reformatter = VideoReformatter()
        self._ctx: av.VideoCodecContext | None = None
        self._pts = 0

    def _context(self, width: int, height: int) -> av.VideoCodecContext:
        if self._ctx is None or (self._ctx.width, self._ctx.height) != (width, height):
            ctx = av.CodecContext.create("mjpeg", "w")
            assert isinstance(ctx, av.VideoCodecContext)
            ctx.width = width
            ctx.height = height
            # JPEG is full range: yuvj420p, so browsers show true blacks and whites.
            ctx.pix_fmt = "yuvj420p"
            ctx.time_base = TIME_BASE
            ctx.qmin = ctx.qmax = self._qscale
            ctx.open()
            self._ctx = ctx
        return self._ctx

    def encode(self, image: av.VideoFrame) -> bytes:
        with self._lock:
            # reformat returns a new frame (the shared capture frame is never written to),
            # except when it has nothing to do: then copy, because pts is set below. One
            # reformatter for all frames: frame.reformat() would set up swscale anew each time.
            full = self._reformatter.reformat(image, format="yuvj420p")
            if full is image:
                full = av.VideoFrame.from_ndarray(image.to_ndarray(), format="yuvj420p")
            # The encoder refuses a pts that does not increase (EINVAL from avcodec_send_frame),
            # so it gets our own count in our own time base. The copy carries the shared
            # frame's time_base, which is whatever its source or the H.264 thread last stamped
            # on it (1/15 from lavfi, then 1/1000 once stamped): left there, PyAV rescales our
            # pts by it, and a frame read before the stamp followed by one read after it goes
            # backwards (pts 67 then 2).
            self._pts += 1
            full.pts = self._pts
            full.time_base = TIME_BASE
            packets = self._context(image.width, image.height).encode(full)
            return b"".join(bytes(p) for p in packets)


class JpegProducer:
    """A named thread that encodes the newest frame when a viewer waits for one.

    Viewers (on the event loop) call `request(after)`: "I want a JPEG of a frame newer than
    `after`". The thread wakes, waits until 1/max_fps has passed since its previous encode,
    encodes the newest captured frame once and hands it to `on_jpeg` (which must only do
    IOLoop.add_callback). One JPEG serves every viewer waiting at that moment; nobody
    waiting means no encoding at all, whether or not viewers are connected.
    """

    def __init__(
        self,
        hub: LatestFrame,
        max_fps: float,
        on_jpeg: Callable[[Jpeg], None],
        encoder: ImageEncoder | None = None,
        name: str = "live-jpeg",
    ) -> None:
        self._hub = hub
        self._interval = 1.0 / max_fps
        self._on_jpeg = on_jpeg
        self._encoder: ImageEncoder = encoder or JpegEncoder()
        self._stop = threading.Event()
        self._limiter = RateLimiter()
        # Guards _want_after, _latest, _encodes and _failures; held only to read or swap them, never
        # while encoding or calling out.
        self._cond = threading.Condition()
        self._want_after: int | None = None
        self._latest: Jpeg | None = None
        self._encodes = 0
        self._failures = 0
        self._last_seq = -1  # only the producer thread touches it
        self._thread = threading.Thread(target=with_camera(self._run), name=name, daemon=True)

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def encodes(self) -> int:
        with self._cond:
            return self._encodes

    @property
    def failures(self) -> int:
        """Encodes the encoder refused (each logged, rate-limited; its frame skipped)."""
        with self._cond:
            return self._failures

    @property
    def latest(self) -> Jpeg | None:
        with self._cond:
            return self._latest

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s thread did not stop within %.1f s", self._thread.name, timeout)

    def request(self, after: int) -> None:
        """Ask for a JPEG of a frame with a sequence number above `after` (any thread)."""
        with self._cond:
            if self._want_after is None or after > self._want_after:
                self._want_after = after
            self._cond.notify()

    def _wanted(self) -> int | None:
        with self._cond:
            want = self._want_after
            return want if want is not None and want >= self._last_seq else None

    def _run(self) -> None:
        next_allowed = 0.0
        failed = -1  # seq of the last frame the encoder refused; only this thread touches it
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stop.is_set() or (
                        self._want_after is not None and self._want_after >= self._last_seq),
                    POLL,
                )
            want = self._wanted()
            if want is None or self._stop.is_set():
                continue
            delay = next_allowed - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            frame = self._hub.wait_newer(max(want, self._last_seq, failed), POLL)
            if frame is None:
                continue  # no newer frame yet (camera slow or stalled): the request stands
            start = time.monotonic()
            next_allowed = start + self._interval
            jpeg = self._encode(frame)
            if jpeg is None:
                # The request still stands (_last_seq is only moved by a frame delivered):
                # the next captured frame is encoded for the viewers waiting now. Moving
                # _last_seq past the refused frame would answer them with nothing, and a
                # viewer waiting for an answer never acks again: frozen for good.
                failed = frame.seq
                continue
            self._last_seq = frame.seq
            with self._cond:
                self._latest = jpeg
                self._encodes += 1
            self._on_jpeg(jpeg)

    def _encode(self, frame: Frame) -> Jpeg | None:
        try:
            data = self._encoder.encode(frame.image)
        except (av.FFmpegError, ValueError) as exc:
            self._limiter.log(log, logging.WARNING, "encode",
                              "JPEG encode failed (frame %d skipped; the next one is sent): %s",
                              frame.seq, exc)
            with self._cond:
                self._failures += 1
            return None
        return Jpeg(frame.seq, data, frame.wall, frame.mono, time.monotonic())
