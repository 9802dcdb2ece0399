#!/usr/bin/env python3
"""Raspberry Pancake's post-processor: converts recordings, uploads them, sends alerts."""

import sys

from griddle.postproc_main import main

if __name__ == "__main__":
    sys.exit(main())
