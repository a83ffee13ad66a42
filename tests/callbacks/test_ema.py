"""``EMA`` with real training: the average computed by hand, validation on the average with the training weights
swapped back bit for bit, updates only at optimizer steps, and an exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import EMA, Validator
from lifecycle import Callback, Status
from tests.support import make_trainer, params_of, same_params
from trainers import BaseTrainer


def _validate(trainer: BaseTrainer) -> dict[str, Any]:
    weight = trainer.pipeline.weight  # type: ignore[union-attr]
    return {"weight_sum": float(weight.sum())}


def test_the_average_is_the_lerp_of_every_step_and_validation_sees_it() -> None:
    by_hand: list[torch.Tensor] = []
    weights_after_validation: list[list[torch.Tensor]] = []

    class ByHand(Callback):
        priority = -500  # after the EMA's post_step and the validator

        def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
            by_hand[:] = params_of(trainer.pipeline)

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            for average, param in zip(by_hand, trainer.pipeline.parameters(), strict=True):
                average.mul_(0.9).add_(param.detach(), alpha=0.1)

        def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
            weights_after_validation.append(params_of(trainer.pipeline))

    ema = EMA(decay=0.9)
    validator = Validator(fn=_validate, every="3it", at_end=False, modes={"weight_sum": "max"})
    trainer = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema, validator, ByHand()])
    assert trainer.train() is Status.COMPLETED
    assert ema.updates == 12
    for average, expected in zip(ema.average, by_hand, strict=True):
        torch.testing.assert_close(average, expected, rtol=1e-6, atol=1e-7)
    # the validator measured the average (its weight sum), not the training weights
    published = trainer.state.metrics["val/weight_sum"]
    assert published == pytest.approx(float(ema.average[0].sum()), abs=1e-6)
    assert published != pytest.approx(float(trainer.pipeline.weight.detach().sum()), abs=1e-6)  # type: ignore[union-attr]
    # and the training weights came back bit for bit after every validation: training went on from them
    assert len(weights_after_validation) == 4
    assert same_params(weights_after_validation[-1], params_of(trainer.pipeline))


def test_only_optimizer_steps_update_the_average_under_accumulation() -> None:
    ema = EMA(decay=0.5)
    trainer = make_trainer(items=14, batch_size=2, max_epochs=1, accumulate=3, callbacks=[ema])
    trainer.train()
    assert (ema.updates, trainer.state.optimizer_step) == (3, 3)


def test_an_error_inside_validation_swaps_the_training_weights_back() -> None:
    def broken(trainer: BaseTrainer) -> dict[str, Any]:
        raise ValueError("the validation set is gone")

    ema = EMA(decay=0.5)
    trainer = make_trainer(items=6, batch_size=2, max_epochs=1, callbacks=[ema, Validator(fn=broken, every="2it")])
    before: list[list[torch.Tensor]] = []
    trainer.on("pre_validation", priority=1000)(lambda t, **_: before.append(params_of(t.pipeline)))
    with pytest.raises(Exception, match="the validation set is gone"):
        trainer.train()
    assert same_params(params_of(trainer.pipeline), before[0])


def test_resume_continues_the_same_average(tmp_path: Path) -> None:
    straight_ema = EMA(decay=0.8, warmup=True)
    straight = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[straight_ema])
    straight.train()
    first_ema = EMA(decay=0.8, warmup=True)
    first = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[first_ema])
    for _ in range(8):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at8.pt")
    second_ema = EMA(decay=0.8, warmup=True)
    second = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[second_ema])
    second.restore(path)
    second.train()
    assert second_ema.updates == straight_ema.updates == 12
    assert same_params(second_ema.average, straight_ema.average)
    assert same_params(params_of(second.pipeline), params_of(straight.pipeline))


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_a_bad_decay_is_refused(decay: object) -> None:
    with pytest.raises(ValueError, match=r"EMA 'EMA': decay must be a number in \[0, 1\)"):
        EMA(decay=decay)  # type: ignore[arg-type]


def test_a_pipeline_without_weights_is_refused_at_registration() -> None:
    with pytest.raises(ValueError, match="has no floating-point weights"):
        make_trainer(
            model=nn.Identity(),
            optimizer=lambda p: torch.optim.SGD([torch.zeros(1, requires_grad=True)]),
            callbacks=[EMA()],
        )
