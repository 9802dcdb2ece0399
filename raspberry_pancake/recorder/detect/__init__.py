"""Detectors: they read the newest frame on their own threads and report edges."""
