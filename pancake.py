#!/usr/bin/env python3
"""Raspberry Pancake: one camera's recorder, live view and event emitter."""

import sys

from raspberry_pancake.recorder.main import main

if __name__ == "__main__":
    sys.exit(main())
