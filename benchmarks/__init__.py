"""Benchmarks: stepbus side by side with raw PyTorch. Entry point: ``python -m benchmarks``."""
