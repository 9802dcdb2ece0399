#!/usr/bin/env python3
"""Raspberry Pancake's post-processor: converts recordings, uploads them, sends alerts."""

import sys

from raspberry_pancake.postproc.main import main

if __name__ == "__main__":
    sys.exit(main())
