"""The test recordings (postproc_servers.h264_bytes) are IDR + P frames, as pancake writes them."""

from __future__ import annotations

import io

import av

from tests.postproc_servers import h264_bytes


def test_h264_bytes_has_a_keyframe_per_keyint_and_p_frames_between() -> None:
    data = h264_bytes(36, keyint=12)
    with av.open(io.BytesIO(data), "r", format="h264") as container:
        keys = [p.is_keyframe for p in container.demux(video=0) if p.size]
    assert len(keys) == 36
    assert [n for n, key in enumerate(keys) if key] == [0, 12, 24]
