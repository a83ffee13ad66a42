"""Tuning before a run: the learning-rate range test (``stepbus tune lr``)."""
