"""pancake.py: sources → pipeline → recordings, detectors and the live page; edges and files → messages."""
