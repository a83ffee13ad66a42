"""``with trainer.inference():`` between training steps: a render that draws random numbers, runs the pipeline in
train mode with dropout and leaves it in eval mode changes nothing about the training -- driven from a GUI-style
tick loop and through the Preview callback; without the block the same render changes the run."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from callbacks import Preview
from lifecycle import Status
from tests.support import make_trainer, params_of, same_params
from trainers import BaseTrainer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 1))


def _trainer(**kwargs: Any) -> BaseTrainer:
    return make_trainer(model=_model(), max_epochs=3, batch_size=2, **kwargs)


def _careless_render(trainer: BaseTrainer) -> dict[str, Any]:
    """What a GUI renderer might do: draw noise, switch to train mode (dropout draws from the RNG), run the model,
    leave the pipeline in eval mode."""
    pipeline = trainer.pipeline
    noise = torch.rand(8, 3)
    pipeline.train()
    pipeline(noise)
    pipeline.eval()
    return {"image": torch.zeros(2, 2, 3)}


def _straight() -> list[torch.Tensor]:
    trainer = _trainer()
    assert trainer.train() is Status.COMPLETED
    return params_of(trainer.pipeline)


def test_a_render_between_every_tick_leaves_training_bit_identical() -> None:
    reference = _straight()
    ticked = _trainer()
    while ticked.iterate():
        with ticked.inference():
            assert not torch.is_grad_enabled()
            assert not ticked.pipeline.training
            _careless_render(ticked)
    assert same_params(params_of(ticked.pipeline), reference)

    careless = _trainer()
    while careless.iterate():
        _careless_render(careless)
    assert not same_params(params_of(careless.pipeline), reference)  # the same render outside the block does


def test_each_modules_own_train_flag_is_restored_also_after_an_error() -> None:
    trainer = _trainer()
    trainer.pipeline.train()
    trainer.pipeline[1].eval()  # a module kept in eval on purpose (a frozen part) stays so
    state = torch.get_rng_state()
    try:
        with trainer.inference():
            torch.rand(3)
            raise ValueError("render failed")
    except ValueError:
        pass
    assert [m.training for m in trainer.pipeline] == [True, False, True, True]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.is_grad_enabled()


def test_the_preview_renders_inside_inference() -> None:
    reference = _straight()
    seen: list[tuple[bool, bool]] = []

    def render(trainer: BaseTrainer) -> dict[str, Any]:
        seen.append((trainer.pipeline.training, torch.is_grad_enabled()))
        return _careless_render(trainer)

    trainer = _trainer(callbacks=[Preview(every="1it", fn=render)])
    assert trainer.train() is Status.COMPLETED
    assert len(seen) == 9 + 1  # every step, and the final picture
    assert set(seen) == {(False, False)}
    assert same_params(params_of(trainer.pipeline), reference)
