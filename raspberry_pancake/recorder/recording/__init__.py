"""Frames → H.264 packets → files on disk: the encoder, split times, segments and detection clips."""
