"""The lifecycle contract on a real BaseTrainer: exact event sequences, counters, stop and failure paths."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from callbacks import Callback
from lifecycle import CallbackError, Event, Status
from tests.support import Recorder as SharedRecorder
from tests.support import compact, full_run, make_trainer, mse
from trainers import BaseTrainer

Row = tuple[Any, ...]


class Recorder(SharedRecorder):
    """The shared recorder, in compact rows (the status and the error's type as text)."""

    def __init__(self, log: list[Row], **kwargs: Any) -> None:
        super().__init__(log, compact=True, **kwargs)


def expected_run(epochs: int, steps: int, sizes: list[int], status: str = "completed") -> list[Row]:
    return [compact(row) for row in full_run(epochs, steps, sizes, status)]


def test_two_epochs_of_three_batches_exact_sequence() -> None:
    log: list[Row] = []
    trainer = make_trainer(callbacks=[Recorder(log)])
    assert trainer.train() is Status.COMPLETED
    assert log == expected_run(2, 3, [2, 2, 2])
    assert trainer.status == "completed"


def test_max_epochs_one_steps_the_last_batch() -> None:
    log: list[Row] = []
    trainer = make_trainer(max_epochs=1, callbacks=[Recorder(log)])
    trainer.train()
    assert log == expected_run(1, 3, [2, 2, 2])


def test_partial_last_batch_is_stepped_and_drop_last_drops_it() -> None:
    log: list[Row] = []
    make_trainer(items=7, batch_size=3, callbacks=[Recorder(log)]).train()
    assert log == expected_run(2, 3, [3, 3, 1])
    log.clear()
    make_trainer(items=7, batch_size=3, drop_last=True, callbacks=[Recorder(log)]).train()
    assert log == expected_run(2, 2, [3, 3])


def test_iterate_slices_and_nothing_after_the_end() -> None:
    log: list[Row] = []
    trainer = make_trainer(callbacks=[Recorder(log)])
    results, slices = [], []
    for _ in range(6):
        before = len(log)
        results.append(trainer.iterate())
        slices.append([row[0] for row in log[before:]])
    assert results == [True] * 5 + [False]
    assert slices[0] == ["pre_training", "pre_epoch", "pre_step", "step", "post_step"]
    assert slices[2] == ["pre_step", "step", "post_step", "post_epoch"]
    assert slices[3] == ["pre_epoch", "pre_step", "step", "post_step"]
    assert slices[5] == ["pre_step", "step", "post_step", "post_epoch", "post_training"]
    total = len(log)
    for _ in range(3):
        assert trainer.iterate() is False
        assert trainer.train() is Status.COMPLETED
    assert len(log) == total


def test_iteration_strictly_increasing_across_epochs() -> None:
    seen: list[tuple[int, int, int]] = []
    trainer = make_trainer(items=8, batch_size=2, max_epochs=3)
    trainer.on(Event.POST_STEP)(lambda t, **_: seen.append((t.state.epoch, t.state.epoch_iteration, t.state.iteration)))
    trainer.train()
    assert [it for _, _, it in seen] == list(range(1, 13))
    assert seen == [(e, s, (e - 1) * 4 + s) for e in (1, 2, 3) for s in (1, 2, 3, 4)]


class StopAt(Recorder):
    def __init__(self, log: list[Row], event: str, iteration: int) -> None:
        super().__init__(log)
        self.stop_event, self.stop_iteration = event, iteration

    def _add(self, trainer: BaseTrainer, event: str, *extra: Any) -> None:
        super()._add(trainer, event, *extra)
        if event == self.stop_event and trainer.state.iteration == self.stop_iteration:
            trainer.stop()


@pytest.mark.parametrize("event", ["pre_step", "step", "post_step"])
def test_stop_inside_a_step_completes_it_then_closes_once(event: str) -> None:
    log: list[Row] = []
    trainer = make_trainer(items=6, batch_size=2, max_epochs=3, callbacks=[StopAt(log, event, 2)])
    weights = []
    trainer.on(Event.POST_STEP)(lambda t, **_: weights.append(t.pipeline.weight.detach().clone()))
    assert trainer.train() is Status.STOPPED
    names = [row[0] for row in log]
    assert names[-5:] == ["pre_step", "step", "post_step", "post_epoch", "post_training"]
    assert log[-1] == ("post_training", 1, 2, 2, "stopped")
    assert names.count("post_epoch") == 1
    assert not torch.equal(weights[0], weights[1])  # the stopped step was applied
    assert trainer.iterate() is False


def test_stop_at_post_epoch_emits_no_second_post_epoch() -> None:
    log: list[Row] = []
    trainer = make_trainer(max_epochs=3, callbacks=[StopAt(log, "post_epoch", 3)])
    trainer.train()
    assert [row[0] for row in log[-2:]] == ["post_epoch", "post_training"]
    assert log[-1] == ("post_training", 1, 3, 3, "stopped")


def test_stop_at_pre_epoch_takes_no_step_of_that_epoch() -> None:
    log: list[Row] = []
    trainer = make_trainer(max_epochs=3, callbacks=[StopAt(log, "pre_epoch", 3)])
    trainer.train()
    assert log[-3:] == [("pre_epoch", 2, 0, 3), ("post_epoch", 2, 0, 3), ("post_training", 2, 0, 3, "stopped")]


def test_stop_from_outside_finishes_at_once_and_before_start_emits_nothing() -> None:
    log: list[Row] = []
    trainer = make_trainer(callbacks=[Recorder(log)])
    trainer.iterate()
    trainer.stop()
    assert [row[0] for row in log[-2:]] == ["post_epoch", "post_training"]
    assert trainer.status is Status.STOPPED
    trainer.stop()
    assert len(log) == 7

    log.clear()
    idle = make_trainer(callbacks=[Recorder(log)])
    idle.stop()
    assert idle.iterate() is False
    assert log == []


def test_exception_in_compute_loss() -> None:
    log: list[Row] = []

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        if len(log) > 12:  # fails during iteration 4
            raise ZeroDivisionError("bad batch")
        return mse(model, batch)

    trainer = make_trainer(loss_fn=loss, callbacks=[Recorder(log)])
    with pytest.raises(ZeroDivisionError, match="bad batch") as info:
        trainer.train()
    assert log[-3:] == [
        ("pre_step", 2, 1, 4, 2),
        ("exception", 2, 1, 4, "ZeroDivisionError"),
        ("post_training", 2, 1, 4, "failed"),
    ]
    assert any("iteration 4" in note for note in getattr(info.value, "__notes__", []))
    assert trainer.iterate() is False
    assert len(log) == 16


def test_exception_in_a_callback_names_it() -> None:
    log: list[Row] = []

    class Boom(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            if trainer.state.iteration == 2:
                raise ValueError("no good")

    trainer = make_trainer(callbacks=[Boom(), Recorder(log)])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    message = str(info.value)
    assert "handler 'Boom.post_step'" in message
    assert "during event 'post_step'" in message
    assert "at iteration 2" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert log[-2:] == [("exception", 1, 2, 2, "CallbackError"), ("post_training", 1, 2, 2, "failed")]


def test_subclass_overriding_with_super_keeps_callbacks() -> None:
    log: list[Row] = []

    class Mine(BaseTrainer):
        def pre_epoch(self) -> None:
            log.append(("mine-before",))
            super().pre_epoch()
            log.append(("mine-after",))

        def compute_loss(self, batch: Any) -> torch.Tensor:
            return mse(self.pipeline, batch)

    trainer = make_trainer(4, max_epochs=1, cls=Mine, callbacks=[Recorder(log)])
    trainer.train()
    assert [row[0] for row in log[:4]] == ["pre_training", "mine-before", "pre_epoch", "mine-after"]


def test_priorities_ties_and_raw_blinker_receivers() -> None:
    order: list[str] = []

    class Named(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            order.append(self.state_key)

    trainer = make_trainer(
        max_epochs=1,
        callbacks=[Named(state_key="a"), Named(state_key="b", priority=5), Named(state_key="c")],
    )
    trainer.on("post_step", priority=10)(lambda t, **_: order.append("on"))
    trainer.bus.signal(Event.POST_STEP).connect(lambda sender, **_: order.append(f"raw:{sender is trainer}"))
    trainer.iterate()
    assert order == ["on", "b", "a", "c", "raw:True"]


def test_resume_from_counters_is_bit_exact_mid_epoch_and_at_boundary() -> None:
    def run(k: int | None) -> tuple[torch.Tensor, list[Row]]:
        trainer = make_trainer(items=6, batch_size=2, max_epochs=3, seed=7)
        if k is None:
            trainer.train()
            return trainer.pipeline.weight.detach().clone(), []
        for _ in range(k):
            trainer.iterate()
        saved = (trainer.state_dict(), trainer.pipeline.state_dict(), trainer.optimizer.state_dict())
        log: list[Row] = []
        fresh = make_trainer(items=6, batch_size=2, max_epochs=3, seed=7, callbacks=[Recorder(log)])
        fresh.pipeline.load_state_dict(saved[1])
        fresh.optimizer.load_state_dict(saved[2])
        fresh.load_state_dict(saved[0])
        fresh.train()
        return fresh.pipeline.weight.detach().clone(), log

    reference, _ = run(None)
    mid, log_mid = run(4)
    assert torch.equal(mid, reference)
    assert log_mid[:3] == [("pre_training", 2, 1, 4, True), ("pre_epoch", 2, 1, 4), ("pre_step", 2, 2, 5, 2)]
    boundary, log_boundary = run(3)
    assert torch.equal(boundary, reference)
    assert log_boundary[:3] == [("pre_training", 1, 3, 3, True), ("pre_epoch", 2, 0, 3), ("pre_step", 2, 1, 4, 2)]
