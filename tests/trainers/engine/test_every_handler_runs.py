"""The end of a run with a real trainer: a raising ``post_training`` or ``exception`` handler does not stop the
handlers after it, so ``metrics.json``, the final checkpoint and the crash dump are still written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import Callback, Checkpointer, MetricsFile
from lifecycle import CallbackError, Priority, Status
from tests.support import make_trainer, mse
from trainers import BaseTrainer
from trainers.checkpoint.format import read_metadata


class Broken(Callback):
    """Raises in ``post_training`` and ``exception``; runs before the loggers and the checkpointer."""

    priority = Priority.DEFAULT

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self.log.append(f"post_training({status})")
        raise OSError(f"upload failed ({status})")

    def exception(self, trainer: BaseTrainer, *, error: BaseException, **payload: Any) -> None:
        self.log.append(f"exception({type(error).__name__})")
        raise RuntimeError("alert failed")


class Boom(Exception):
    pass


def fails_at(iteration: int) -> Any:
    """A loss that raises :class:`Boom` at its ``iteration``-th call (one call per step: there is no validator)."""
    calls = [0]

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == iteration:
            raise Boom(f"loss exploded at iteration {iteration}")
        return mse(model, batch)

    return loss


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


def test_a_raising_post_training_handler_before_metrics_file_still_gets_metrics_json(tmp_path: Path) -> None:
    log: list[str] = []
    metrics = tmp_path / "metrics.json"
    checkpointer = Checkpointer(tmp_path / "checkpoints", every=None)
    trainer = make_trainer(max_epochs=2, callbacks=[Broken(log), checkpointer, MetricsFile(metrics)])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    # the failed end is an exception like any other: the exception event follows, post_training does not again
    assert log == ["post_training(completed)", "exception(CallbackError)"]
    error = info.value
    assert (error.handler, error.event, error.iteration) == ("Broken.post_training", "post_training", 6)
    assert str(error.__cause__) == "upload failed (completed)"
    assert error.also_failed == ()
    report = json.loads(metrics.read_text(encoding="utf-8"))
    assert (report["status"], report["iterations"], report["epochs"]) == ("completed", 6, 2)
    final = tmp_path / "checkpoints" / "step-00000006.pt"
    assert report["checkpoints"] == {"last": str(final)}
    assert read_metadata(final)["reason"] == "end (completed)"
    assert trainer.status is Status.FAILED


def test_a_raising_exception_handler_before_the_checkpointer_still_gets_the_crash_dump(tmp_path: Path) -> None:
    log: list[str] = []
    metrics = tmp_path / "metrics.json"
    checkpointer = Checkpointer(tmp_path / "checkpoints", every="1ep", on_exception=True)
    trainer = make_trainer(
        max_epochs=3, loss_fn=fails_at(5), callbacks=[Broken(log), checkpointer, MetricsFile(metrics)]
    )
    with pytest.raises(Boom) as info:
        trainer.train()
    assert str(info.value) == "loss exploded at iteration 5"
    assert log == ["exception(Boom)", "post_training(failed)"]
    dump = tmp_path / "checkpoints" / "crash-00000005.pt"
    meta = read_metadata(dump)
    assert (meta["resumable"], meta["iteration"], meta["reason"]) == (
        False,
        5,
        "exception: Boom: loss exploded at iteration 5",
    )
    report = json.loads(metrics.read_text(encoding="utf-8"))
    assert (report["status"], report["iterations"]) == ("failed", 5)
    where = "at iteration 5 (epoch 2/3, step 2/3)"
    expected = [
        f"stepbus: raised at iteration 5 ({trainer.state})",
        "while handling this error, an 'exception' handler also failed: CallbackError: handler 'Broken.exception' "
        f"(priority 0) failed during event 'exception' {where}: RuntimeError: alert failed",
        "while handling this error, a 'post_training' handler also failed: CallbackError: handler "
        f"'Broken.post_training' (priority 0) failed during event 'post_training' {where}: OSError: upload failed "
        "(failed)",
    ]
    assert notes(info.value) == (expected if sys.version_info >= (3, 11) else [])
    assert trainer.status is Status.FAILED
