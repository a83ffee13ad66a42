"""Tuning before a run: the learning-rate range test (``stepbus tune lr``).

``lr_range_test(trainer)`` sweeps the learning rate on a copy of the trainer's state and returns an
:class:`LRRangeResult` (the curve, the suggestion, why it stopped); ``result.save(directory)`` writes
``lr_find.json`` and the plot ``lr_find.png``. Names are imported on first use, so importing the package (the
command line's argument checks) costs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifecycle.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from trainers.tune.curve import Settings
    from trainers.tune.files import LRFindFiles, write_lr_find
    from trainers.tune.range_test import LRRangeResult, lr_range_test

__all__ = ["LRFindFiles", "LRRangeResult", "Settings", "lr_range_test", "write_lr_find"]

_WHERE = {
    "LRFindFiles": "trainers.tune.files",
    "write_lr_find": "trainers.tune.files",
    "LRRangeResult": "trainers.tune.range_test",
    "lr_range_test": "trainers.tune.range_test",
    "Settings": "trainers.tune.curve",
}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
