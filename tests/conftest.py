"""Fixtures every test folder shares: the tiny real trainer and the event recorder (implemented in
``tests/support.py``, which test modules and subprocess apps import directly)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import Recorder, make_trainer
from trainers import BaseTrainer


@pytest.fixture
def trainer_factory() -> Callable[..., BaseTrainer]:
    """``make_trainer(items=6, batch_size=2, max_epochs=2, **kwargs)``: ``nn.Linear(3, 1)`` regressing a linear
    target on the CPU (see :func:`tests.support.make_trainer`)."""
    return make_trainer


@pytest.fixture
def recorder() -> Recorder:
    """A fresh :class:`tests.support.Recorder`: one row per event it sees."""
    return Recorder()
