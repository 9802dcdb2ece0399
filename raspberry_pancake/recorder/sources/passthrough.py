"""The camera's own H.264 recorded as is: Annex-B, SPS/PPS before each keyframe, split on the clock."""

from __future__ import annotations

import logging
from typing import Any

import av
import av.bitstream

from raspberry_pancake.recorder.frames import (
    NAL_AUD,
    NAL_PPS,
    NAL_SPS,
    START_CODE,
    Packet,
    PacketSink,
    nal_type,
    nal_units,
)
from raspberry_pancake.recorder.recording.splits import SplitClock
from raspberry_pancake.shared.logs import RateLimiter

log = logging.getLogger(__name__)
_limit = RateLimiter()

class ParameterSets:
    """Puts the newest SPS/PPS before every keyframe of an Annex-B stream that lacks them.

    Cameras differ: some repeat SPS/PPS in band before each IDR, some send them once, and
    many RTSP cameras only announce them out of band (the SDP, hence the stream's extradata).
    A file must decode alone from its first keyframe, so a keyframe without an SPS gets the
    last ones seen in band, or the extradata's. This is what FFmpeg's dump_extra filter does,
    except that dump_extra also prepends to keyframes that carry their own, and puts them ahead
    of the access unit delimiter, which must come first in an access unit.
    """

    def __init__(self, extradata: bytes | None) -> None:
        self._sets: dict[int, bytes] = {}
        if extradata:
            self._learn(nal_units(extradata))

    def _learn(self, units: list[bytes]) -> None:
        seen = [u for u in units if nal_type(u) in (NAL_SPS, NAL_PPS)]
        if seen:
            # A new SPS invalidates the old PPS as well: keep only this packet's sets.
            self._sets = {i: u for i, u in enumerate(seen)}

    def complete(self, data: bytes) -> bytes:
        """A keyframe's bytes, with SPS/PPS in front (after any delimiter) if it had none."""
        units = nal_units(data)
        if any(nal_type(u) == NAL_SPS for u in units):
            self._learn(units)
            return data
        if not self._sets:
            return data
        lead = [u for u in units[:1] if nal_type(u) == NAL_AUD]
        ordered = [*lead, *self._sets.values(), *units[len(lead):]]
        return b"".join(START_CODE + u for u in ordered)


class Passthrough:
    """Turns the packets a camera delivers into our Packets, without decoding or re-encoding.

    Each opening of the source calls `open` with its video stream; `feed` is called on the
    capture thread for every packet read, and hands packets to `sink` (the writers' bounded
    queues), so no disk I/O happens here.
    """

    def __init__(self, split: float, sink: PacketSink) -> None:
        self._clock = SplitClock(split)
        self._sink = sink
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        self._sets = ParameterSets(None)
        self._waiting_key = True
        self._usable = False
        self.delivered = 0

    def open(self, stream: av.video.stream.VideoStream) -> None:
        """A new opening of the source: its first keyframe starts a new segment."""
        self._waiting_key = True
        self._bsf = None
        self._usable = stream.codec_context.name == "h264"
        if not self._usable:
            _limit.log(log, logging.ERROR, "codec",
                       "the camera now sends %s, not H.264: not recording until it is back",
                       stream.codec_context.name)
            return
        extradata = stream.codec_context.extradata
        if extradata and extradata[0] == 1:
            # avcC extradata (mp4, flv, RTMP): length-prefixed NAL units. This filter rewrites
            # them with start codes and inserts SPS/PPS before every IDR that lacks them.
            self._bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
            self._sets = ParameterSets(None)
        else:
            self._sets = ParameterSets(extradata)

    def feed(self, packet: av.packet.Packet[Any], mono: float, wall: float) -> None:
        """One packet as read from the source at (mono, wall); consumed (a filter takes it)."""
        if not self._usable or packet.size == 0:
            return
        try:
            packets = self._bsf.filter(packet) if self._bsf is not None else [packet]
        except av.FFmpegError as exc:
            _limit.log(log, logging.ERROR, "bsf", "camera packet not recordable: %s", exc)
            return
        for p in packets:
            self._deliver(bytes(p), bool(p.is_keyframe), mono, wall)

    def _deliver(self, data: bytes, keyframe: bool, mono: float, wall: float) -> None:
        boundary = False
        if keyframe:
            # We cannot make the camera send an IDR at a split time, so a segment starts at
            # the camera's first keyframe at or after it: the clock is asked on keyframes only.
            boundary = self._clock.due(mono, wall)
            if self._waiting_key:
                self._clock.restart(mono, wall)
                boundary, self._waiting_key = True, False
            data = self._sets.complete(data)
        elif self._waiting_key:
            return  # nothing decodes before the first keyframe of an opening
        self.delivered += 1
        self._sink(Packet(data, keyframe, mono, wall, boundary))
