"""The registry of documentation checks: each check takes one code block of a page (and pytest's ``tmp_path`` and
``monkeypatch``) and runs or checks it; ``tests/test_docs_examples.py`` runs every block through the check its
``<!-- test: NAME -->`` marker names. Also what several checks share: running a block, a small real trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.doc_pages import Block
from trainers import BaseTrainer

Check = Callable[[Block, Path, pytest.MonkeyPatch], None]
CHECKS: dict[str, Check] = {}
#: the checks that start a cluster or a job of several processes: run with the slow tests (``-m slow``)
SLOW_CHECKS: set[str] = set()


def check(name: str, *, slow: bool = False) -> Callable[[Check], Check]:
    def register(function: Check) -> Check:
        assert name not in CHECKS, name
        CHECKS[name] = function
        if slow:
            SLOW_CHECKS.add(name)
        return function

    return register


def run(block: Block, namespace: dict[str, object]) -> dict[str, object]:
    exec(compile(block.text, block.id, "exec"), namespace)
    return namespace


def points(count: int = 64) -> TensorDataset:
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


def small_trainer(**options: object) -> BaseTrainer:
    settings: dict[str, object] = {"max_epochs": 2, "batch_size": 8, "device": "cpu"}
    settings.update(options)
    return BaseTrainer(
        nn.Linear(2, 1),
        points(),
        loss_fn=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
        **settings,  # type: ignore[arg-type]
    )
