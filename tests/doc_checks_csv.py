"""Checks of the CSV section of ``docs/loggers.md``: its config block is a valid config that enables the logger
with the keys the table lists, and its reading example runs against the file of a real run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from torch import nn

from callbacks import Validator
from callbacks.loggers.csv_logger import CSVLogger
from lifecycle import Event, Status
from tests.doc_checks import check, points, run
from tests.doc_pages import Block
from trainers import BaseTrainer, load_config


@check("csv-config")
def _csv_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block is a valid config; the logger it builds has the schedule shown and the defaults the page lists."""
    config = load_config({"trainer": {"name": "demo"}, **yaml.safe_load(block.text)})  # the block: a config's part
    spec = next(spec for spec in config.callbacks if spec.key == "csv")
    assert spec.enabled
    # the defaults the comment and the table name, as the config resolves them
    assert config.data["callbacks"]["csv"] == {
        "enabled": True,
        "path": "metrics.csv",
        "every": "10it",
        "on_error": "disable",
    }
    logger = spec.entry.load()(**spec.kwargs)
    assert isinstance(logger, CSVLogger)
    assert (logger.every, str(logger.path), logger.on_error) == ("10it", "metrics.csv", "disable")
    assert CSVLogger().every == "50it"


@check("csv-read")
def _csv_read(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run writes runs/a/metrics.csv; the block reads the step losses and the validations it computed."""
    monkeypatch.chdir(tmp_path)
    losses: list[float] = []
    validated: list[tuple[int, float]] = []

    def loss_fn(model: nn.Module, batch: Any) -> Any:
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        losses.append(float(loss.detach()))
        return loss

    trainer = BaseTrainer(
        nn.Linear(2, 1),
        points(),
        max_epochs=2,
        batch_size=8,
        device="cpu",
        loss_fn=loss_fn,
        run_dir="runs/a",
        callbacks=[Validator(lambda t: {"mse": 0.5 / t.state.epoch}), CSVLogger(every="2it")],
    )

    @trainer.on(Event.POST_VALIDATION, priority=-500)
    def note(t: BaseTrainer, **_: Any) -> None:
        validated.append((t.state.iteration, t.state.metrics["val/mse"]))

    assert trainer.train() is Status.COMPLETED
    namespace = run(block, {})
    assert namespace["losses"] == [(s, math.fsum(losses[s - 2 : s]) / 2) for s in range(2, 17, 2)]
    assert namespace["validations"] == validated == [(8, 0.5), (16, 0.25)]
