"""postproc.py: messages in → mp4s → uploads and alerts."""
