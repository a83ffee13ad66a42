"""Checkpoints: the file format and its checks, atomic writes, RNG capture, saving and restoring a trainer."""
