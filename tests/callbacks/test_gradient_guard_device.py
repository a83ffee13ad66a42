"""``GradientGuard``'s skip decided on the device (``on_device``), run on the CPU with fused optimizers: the same
weights and optimizer state as the host-read decision, bit for bit; nothing read back between publications; counts
that survive a resume; and the refusals that name what stands in the way. Also the CPU's one read per step."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import GradientGuard
from lifecycle import CallbackError, Status
from tests.callbacks.test_gradient_guard import (
    GUARD_FILE,
    Snapshots,
    all_equal,
    guard_trainer,
    nan_loss_at,
    same_optimizer_state,
)
from trainers import BaseTrainer

FLAG_FILE = str(Path(GUARD_FILE).with_name("finite_flag.py"))


def fused_adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2, fused=True)


class Reads:
    """The iterations at which the guard (or its flag) read a value back: ``item``, ``tolist``, ``__bool__``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, trainer: BaseTrainer) -> None:
        self.at: list[tuple[int, str]] = []
        self._trainer = trainer
        for name in ("item", "tolist", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, self._spy(name, getattr(torch.Tensor, name)))

    def _spy(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def spy(tensor: torch.Tensor) -> Any:
            if str(Path(sys._getframe(1).f_code.co_filename).resolve()) in (GUARD_FILE, FLAG_FILE):
                self.at.append((self._trainer.state.iteration, name))
            return original(tensor)

        return spy


def train(guard: GradientGuard, bad: tuple[int, ...], **options: Any) -> tuple[BaseTrainer, Snapshots]:
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(*bad), optimizer=fused_adam, items=20, max_epochs=3, **options)
    snaps = Snapshots(trainer)
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 30
    return trainer, snaps


@pytest.mark.parametrize("kwargs", [{}, {"clip_norm": 0.5}, {"clip_value": 0.05}, {"check_loss": False}])
def test_the_device_decision_trains_bit_identically_to_the_host_read(kwargs: dict[str, Any]) -> None:
    bad = (3, 4, 17)
    device, d_snaps = train(GradientGuard(on_device=True, every="10it", **kwargs), bad)
    host, h_snaps = train(GradientGuard(on_device=False, every="10it", **kwargs), bad)
    for iteration in range(1, 31):
        assert d_snaps.unchanged(iteration) is (iteration in bad)  # weights, exp_avg(_sq) and step held back
        assert h_snaps.unchanged(iteration) is (iteration in bad)
    assert all_equal(list(device.pipeline.parameters()), list(host.pipeline.parameters()))
    assert same_optimizer_state(device.optimizer.state_dict()["state"], host.optimizer.state_dict()["state"])
    assert float(device.optimizer.state_dict()["state"][0]["step"]) == 30 - len(bad)
    assert device.state.metrics["grad_norm"] == host.state.metrics["grad_norm"]
    assert device.state.metrics["grad/nonfinite_steps"] == host.state.metrics["grad/nonfinite_steps"] == 3


def test_nothing_is_read_back_between_publications(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GradientGuard(on_device=True, every="7it")
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(2, 9), optimizer=fused_adam, items=20, max_epochs=3)
    reads = Reads(monkeypatch, trainer)
    published: dict[int, Any] = {}
    trainer.bus.connect(
        "post_step",
        lambda t, **_: published.__setitem__(t.state.iteration, t.state.metrics.get("grad/nonfinite_steps")),
    )
    assert trainer.train() is Status.COMPLETED
    monkeypatch.undo()
    # the norm and the counts together, in one read at each publication (7, 14, 21, 28): nothing else
    assert reads.at == [(i, "tolist") for i in (7, 14, 21, 28)]
    # a count appears at the first publication after a skip
    assert [published[i] for i in (1, 2, 6, 7, 9, 13, 14, 30)] == [None, None, None, 1, 1, 1, 2, 2]
    assert (guard.skipped, guard.consecutive) == (2, 0)


def test_on_the_cpu_the_check_is_read_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GradientGuard(every="7it")  # on the CPU the check is read on the host: free there
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(2, 9), optimizer=fused_adam, items=20, max_epochs=3)
    reads = Reads(monkeypatch, trainer)
    assert trainer.train() is Status.COMPLETED
    monkeypatch.undo()
    per_step = {iteration: [name for i, name in reads.at if i == iteration] for iteration in range(1, 31)}
    for iteration, names in per_step.items():
        if iteration in (2, 9):
            assert len(names) > 2  # the failure path reads freely, to name what is not finite
        else:  # the check, and the norm when publishing
            assert names == ["item"] * (2 if iteration % 7 == 0 else 1), iteration
    assert (guard.skipped, guard.consecutive) == (2, 0)


def test_consecutive_device_skips_and_the_counts_survive_a_resume() -> None:
    first = GradientGuard(on_device=True)
    trainer = guard_trainer(first, loss_fn=nan_loss_at(3, 4), optimizer=fused_adam)
    for _ in range(4):
        trainer.iterate()
    assert (first.skipped, first.consecutive) == (2, 2)
    state = copy.deepcopy(first.state_dict())
    assert state == {"skipped": 2, "consecutive": 2, "reason": None}

    second = GradientGuard(on_device=True)
    second.load_state_dict(state)  # before setup: the counts go to the device when the trainer sets it up
    resumed = guard_trainer(second, loss_fn=nan_loss_at(1), optimizer=fused_adam)
    resumed.load_state_dict(trainer.state_dict())
    resumed.iterate()
    assert (second.skipped, second.consecutive) == (3, 3)
    resumed.iterate()
    assert (second.skipped, second.consecutive) == (3, 0)
    second.load_state_dict({"skipped": 7, "consecutive": 1, "reason": None})  # after setup: onto the device
    assert (second.skipped, second.consecutive) == (7, 1)


def test_an_overflowing_norm_is_a_skip_on_both_paths_where_the_norm_is_taken() -> None:
    calls = [0]

    def huge(model: nn.Module, batch: Any) -> torch.Tensor:  # at the 2nd step: every gradient finite, their norm not
        calls[0] += 1
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        return loss if calls[0] != 2 else loss + 3e38 * (model[0].weight.sum() + model[2].bias.sum())

    for on_device in (True, False):
        calls[0] = 0
        guard = GradientGuard(on_device=on_device, clip_norm=1.0)
        trainer = guard_trainer(guard, loss_fn=huge, optimizer=fused_adam, max_epochs=1)
        snaps = Snapshots(trainer)
        trainer.iterate()
        trainer.iterate()
        assert all(bool(torch.isfinite(p.grad).all()) for p in trainer.pipeline.parameters())
        assert not snaps.unchanged(1)
        assert snaps.unchanged(2), on_device
        assert guard.skipped == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"on_nonfinite": "stop"}, "on_nonfinite='stop' with max_skips=None needs each step read back"),
        ({"on_nonfinite": "raise"}, "on_nonfinite='raise' with max_skips=None needs each step read back"),
        ({"max_skips": 3}, "on_nonfinite='skip' with max_skips=3 needs each step read back"),
        ({"on_nonfinite": None}, "on_nonfinite=None with max_skips=None needs each step read back"),
    ],
)
def test_on_device_refuses_a_policy_that_needs_each_step_read_back(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradientGuard(on_device=True, **kwargs)
    with pytest.raises(ValueError, match="on_device must be True, False or None"):
        GradientGuard(on_device="yes")  # type: ignore[arg-type]


def test_on_device_refuses_an_optimizer_that_is_not_fused() -> None:
    guard = GradientGuard(on_device=True)
    with pytest.raises(
        ValueError,
        match=r"GradientGuard 'GradientGuard': on_device=True, but optimizer 'optimizer' \(Adam\) cannot take a "
        r"decision made on the device \(it is not fused\); use a fused optimizer",
    ):
        guard_trainer(guard)  # plain Adam
    guard = GradientGuard()  # on_device=None: a plain optimizer is simply read on the host
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(2))
    assert trainer.train() is Status.COMPLETED
    assert guard.skipped == 1


def test_skip_optimizer_step_if_names_what_it_needs() -> None:
    def hand(trainer: BaseTrainer, **_: Any) -> None:
        trainer.skip_optimizer_step_if(torch.ones(()))

    plain = guard_trainer()
    plain.bus.connect("step", hand)
    with pytest.raises(CallbackError) as info:
        plain.iterate()
    assert "optimizer 'optimizer' (Adam) cannot take a skip decided on the device" in str(info.value)
    assert "fused=True" in str(info.value)

    def wrong_shape(trainer: BaseTrainer, **_: Any) -> None:
        trainer.skip_optimizer_step_if(torch.ones(1))

    fused = guard_trainer(optimizer=fused_adam)
    fused.bus.connect("step", wrong_shape)
    with pytest.raises(CallbackError, match=r"found_inf must be a float32 scalar tensor .* got shape \(1,\)"):
        fused.iterate()

    withheld = guard_trainer(optimizer=fused_adam)
    withheld.iterate()  # the first update: Adam's state exists from here on
    withheld.bus.connect("step", hand)
    snaps = Snapshots(withheld)
    withheld.iterate()
    assert snaps.unchanged(2)
    assert not hasattr(withheld.optimizer, "found_inf")  # handed over for that step only
