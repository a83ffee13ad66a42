"""Epoch-only logging (``every="1ep"``, Wisp's default): the TensorBoard and W&B loggers write the epoch means the
metric flow computes, the published numbers and the validation values once per scheduled epoch, and no step row --
read back from real event files and real offline W&B run files."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbacks import LRDecay, TensorBoardLogger, WandbLogger
from lifecycle import Event, Status
from tests.callbacks.loggers.runs import logged_run
from tests.callbacks.loggers.test_wandb_logger import (  # noqa: F401 - wandb_env: the autouse fixture (W&B dirs)
    EPOCH_KEYS,
    STEP_KEYS,
    VAL_KEYS,
    own_keys,
    run_file,
    steps,
    wandb_env,
)
from tests.callbacks.loggers.wandb_records import history
from tests.tb_events import events, series


def test_tensorboard_every_epoch_writes_epoch_means_and_published_numbers_and_no_step_scalars(tmp_path: Path) -> None:
    logger = TensorBoardLogger(every="1ep")
    trainer, rec = logged_run(tmp_path, logger, LRDecay())
    assert logger.epoch_rows is True
    assert Event.POST_STEP not in {h.event for h in trainer.handles_of(logger)}  # nothing to do per step
    lrs: dict[int, float] = {}
    trainer.on(Event.POST_EPOCH, priority=-50)(lambda t, **_: lrs.update({t.state.iteration: t.state.metrics["lr"]}))
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    scalars = set(acc.Tags()["scalars"])
    assert not scalars & STEP_KEYS
    assert {"epoch/loss", "time/epoch_s", "lr", "val/mse", "best/mse"} <= scalars
    assert series(acc, "epoch/loss") == [
        (5, pytest.approx(rec.loss(1, 5), rel=1e-6)),
        (10, pytest.approx(rec.loss(6, 10), rel=1e-6)),
    ]
    assert series(acc, "lr") == [(5, pytest.approx(lrs[5])), (10, pytest.approx(lrs[10]))]
    assert [step for step, _ in series(acc, "time/epoch_s")] == [5, 10]
    assert [step for step, _ in series(acc, "val/mse")] == [5, 10]


def test_tensorboard_every_second_epoch_writes_only_those_epochs(tmp_path: Path) -> None:
    trainer, rec = logged_run(tmp_path, TensorBoardLogger(every="2ep"), max_epochs=4, images=False)
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    assert series(acc, "epoch/loss") == [
        (10, pytest.approx(rec.loss(6, 10), rel=1e-6)),  # the means of the epoch that ends there
        (20, pytest.approx(rec.loss(16, 20), rel=1e-6)),
    ]
    assert [step for step, _ in series(acc, "val/mse")] == [5, 10, 15, 20]  # validation is not on the schedule
    assert not set(acc.Tags()["scalars"]) & STEP_KEYS


def test_tensorboard_every_never_writes_no_step_scalars_but_epochs_and_validations(tmp_path: Path) -> None:
    trainer, _ = logged_run(tmp_path, TensorBoardLogger(every="never"), images=False)
    assert trainer.train() is Status.COMPLETED
    acc = events(tmp_path / "tb")
    assert not set(acc.Tags()["scalars"]) & STEP_KEYS
    assert [step for step, _ in series(acc, "epoch/loss")] == [5, 10]
    assert [step for step, _ in series(acc, "val/mse")] == [5, 10]


def test_wandb_every_epoch_logs_one_row_per_epoch_with_epoch_means_lr_and_validation(tmp_path: Path) -> None:
    logger = WandbLogger(every="1ep")
    trainer, rec = logged_run(tmp_path / "run", logger, LRDecay(), images=False)
    assert Event.POST_STEP not in {h.event for h in trainer.handles_of(logger)}
    lrs: dict[int, float] = {}
    trainer.on(Event.POST_EPOCH, priority=-50)(lambda t, **_: lrs.update({t.state.iteration: t.state.metrics["lr"]}))
    assert trainer.train() is Status.COMPLETED
    path = run_file(logger)
    assert steps(path) == [5, 10]
    rows = {row["_step"]: row for row in history(path)}
    for step, first in ((5, 1), (10, 6)):
        assert own_keys(rows[step]) == EPOCH_KEYS | VAL_KEYS | {"lr"}, step
        assert rows[step]["epoch/loss"] == pytest.approx(rec.loss(first, step), rel=1e-6)
        assert rows[step]["lr"] == lrs[step]
        assert {k: rows[step][k] for k in VAL_KEYS} == rec.validated[step]
