"""Checks the apps' trainer factories run on their arguments before building anything.

A factory's parameters are the keys of a config's ``trainer:`` block, so each message names the key and what is
valid; ``trainers.config.builder`` reports the ``ValueError`` as a config error at ``trainer``. They run first, so a
bad value is refused before it reaches torch (``torch.set_num_threads(0)``, a layer of ``-1`` features) or a run
trains on it (an infinite learning-rate weight).
"""

from __future__ import annotations

import math

__all__ = ["check_counts", "check_positive_finite", "check_threads"]


def check_counts(**values: object) -> None:
    """Each value an integer >= 1 (sizes, counts), else a ``ValueError`` naming the first bad one."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_positive_finite(**values: object) -> None:
    """Each value a finite number > 0 (a weight, a factor), else a ``ValueError`` naming the first bad one."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_threads(threads: object) -> None:
    """``threads`` is an integer >= 1 for ``torch.set_num_threads``, ``"auto"`` (``trainers.apps.threads``) or
    ``None`` (torch's setting, left alone)."""
    if threads is None or threads == "auto":
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, 'auto' or null (torch's setting), got {threads!r}")
