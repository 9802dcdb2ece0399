"""Raspberry Pancake: the recorder (recorder/), the post-processor (postproc/) and what both use (shared/)."""
