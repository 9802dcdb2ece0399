"""Raspberry Pancake, rebuilt: the stages behind pancake.py and postproc.py."""
