"""``lr_range_test``: the learning rates swept, the smoothed loss, the stop on divergence and the suggestion, on
real training steps; and the trainer exactly as it was afterwards -- weights, optimizer state, GradScaler, counters,
callbacks, RNG states, data position -- so that the run that follows is the run it would have been."""

from __future__ import annotations

import copy
import io
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks import Checkpointer, LRDecay
from lifecycle import Status
from tests.support import Recorder, make_dataset, make_trainer, mse
from trainers import BaseTrainer
from trainers.apps.demo import demo_trainer
from trainers.apps.gan import gan_trainer
from trainers.checkpoint.rng import capture_rng
from trainers.tune import lr_range_test
from trainers.tune.curve import smoothed_losses, suggest


def _demo(**options: Any) -> BaseTrainer:
    return demo_trainer(samples=1024, console=Console(file=io.StringIO()), **options)


def _exponential(low: float, high: float, steps: int) -> list[float]:
    return [low * (high / low) ** (i / (steps - 1)) for i in range(steps)]


# --- the curve -----------------------------------------------------------------------------------------------------


def test_the_curve_has_one_point_per_step_at_exactly_the_exponential_rates() -> None:
    result = lr_range_test(_demo(), min_lr=1e-5, max_lr=1e-2, steps=30, diverge=None)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 30
    assert list(result.lrs) == _exponential(1e-5, 1e-2, 30)
    assert result.lrs[0] == 1e-5
    assert math.isclose(result.lrs[-1], 1e-2, rel_tol=1e-12)
    assert (result.stopped, result.diverged, result.optimizer) == ("completed all 30 steps", False, "optimizer")
    assert all(math.isfinite(loss) and loss > 0 for loss in result.losses)


def test_linear_mode_steps_evenly() -> None:
    result = lr_range_test(_demo(), min_lr=1e-4, max_lr=1e-2, steps=12, mode="linear", diverge=None)
    assert list(result.lrs) == [1e-4 + (1e-2 - 1e-4) * i / 11 for i in range(12)]


def test_the_smoothed_loss_is_the_bias_corrected_moving_average_of_the_losses() -> None:
    result = lr_range_test(_demo(), min_lr=1e-4, max_lr=1e-1, steps=25, smooth=0.9, diverge=None)
    average, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        average = 0.9 * average + (1 - 0.9) * loss
        expected.append(average / (1 - 0.9 ** (i + 1)))
    assert list(result.smoothed) == expected
    assert smoothed_losses(result.losses, 0.0) == list(result.losses)


def test_it_stops_at_the_first_step_whose_smoothed_loss_exceeds_diverge_times_the_best() -> None:
    result = lr_range_test(_demo(), min_lr=1e-4, max_lr=100.0, steps=100)
    n = len(result.lrs)
    assert result.diverged
    assert 10 < n < 100
    best = [min(result.smoothed[: i + 1]) for i in range(n)]
    assert all(result.smoothed[i] <= 4.0 * best[i] for i in range(n - 1))
    assert result.smoothed[-1] > 4.0 * best[-1]
    assert result.stopped.startswith(f"diverged at step {n} of 100 (lr {result.lrs[-1]:.3g}): the smoothed loss ")
    assert list(result.lrs) == _exponential(1e-4, 100.0, 100)[:n]


def test_the_suggestion_is_where_the_smoothed_loss_falls_fastest() -> None:
    result = lr_range_test(_demo(), min_lr=1e-5, max_lr=10.0, steps=80, smooth=0.9)
    assert result.suggestion is not None
    assert result.suggestion_index is not None
    # computed independently: numpy's gradient over the points the rule keeps (the first 10 and the last 1 dropped);
    # on an exponential sweep the index is proportional to log(lr), so unit spacing gives the same steepest point
    kept = np.array(result.smoothed[10:-1])
    steepest = 10 + int(np.argmin(np.gradient(kept)))
    assert result.suggestion_index == steepest
    assert result.suggestion == result.lrs[steepest]
    assert 1e-5 <= result.suggestion <= 10.0
    assert np.gradient(kept)[steepest - 10] < 0
    assert result.reason == f"steepest descent of the smoothed loss (step {steepest + 1} of {len(result.lrs)})"


def test_no_suggestion_from_too_few_points_or_a_loss_that_never_falls() -> None:
    few = lr_range_test(_demo(), min_lr=1e-4, max_lr=1e-3, steps=12)
    assert (few.suggestion, few.suggestion_index) == (None, None)
    assert few.reason.startswith("too few points: 12 step(s), of which 1 remain after skipping the first 10")

    def flat(model: nn.Module, batch: Any) -> torch.Tensor:
        out: torch.Tensor = model(batch[0]).sum() * 0 + 1.0  # a loss the steps cannot move
        return out

    constant = lr_range_test(make_trainer(items=8, loss_fn=flat), steps=20, smooth=0.0, skip_start=2)
    assert set(constant.losses) == {1.0}
    assert constant.suggestion is None
    assert constant.reason == "the smoothed loss never fell over the range tested: try a lower min_lr"
    rising = suggest([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.1, 1.3, 1.6, 2.0], skip_start=0, skip_end=0)
    assert (rising.lr, rising.index) == (None, None)


def test_a_non_finite_loss_ends_the_test_at_that_step() -> None:
    def explodes(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = mse(model, batch)
        assert isinstance(model, nn.Linear)
        return loss if model.weight.abs().max() < 50 else loss * float("inf")

    trainer = make_trainer(items=8, loss_fn=explodes, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    result = lr_range_test(trainer, min_lr=1e-3, max_lr=1e6, steps=60, diverge=None)
    assert result.diverged
    assert len(result.lrs) < 60
    assert math.isinf(result.losses[-1])
    assert all(math.isfinite(v) for v in result.losses[:-1])
    assert "the loss is not finite (inf)" in result.stopped
    assert result.as_dict()["points"][-1]["loss"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_lr": 0.0}, "lr range test: min_lr must be a finite number > 0, got 0.0"),
        ({"max_lr": float("nan")}, "lr range test: max_lr must be a finite number > 0, got nan"),
        (
            {"min_lr": 1.0, "max_lr": 0.5},
            "lr range test: max_lr must be greater than min_lr, got min_lr=1.0, max_lr=0.5",
        ),
        ({"steps": 1}, "lr range test: steps must be an integer >= 2, got 1"),
        ({"steps": True}, "lr range test: steps must be an integer >= 2, got True"),
        ({"mode": "log"}, "lr range test: mode must be 'exponential' or 'linear', got 'log'"),
        ({"smooth": 1.0}, "lr range test: smooth must be a number in [0, 1), got 1.0"),
        ({"diverge": 1.0}, "lr range test: diverge must be a finite number > 1 (or None: never stop early), got 1.0"),
        ({"skip_end": -1}, "lr range test: skip_end must be an integer >= 0, got -1"),
        ({"optimizer": "adam"}, "lr range test: no optimizer named 'adam'; this trainer's optimizers are 'optimizer'"),
    ],
)
def test_bad_settings_are_refused_before_any_step(options: dict[str, Any], message: str) -> None:
    trainer = make_trainer()
    before = copy.deepcopy(trainer.pipeline.state_dict())
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        lr_range_test(trainer, **options)
    assert str(raised.value) == message
    assert all(torch.equal(before[k], v) for k, v in trainer.pipeline.state_dict().items())


def test_it_refuses_to_run_from_inside_iterate() -> None:
    trainer = make_trainer()
    errors: list[str] = []

    @trainer.on("post_step")
    def probe(t: BaseTrainer, **payload: Any) -> None:
        try:
            lr_range_test(t, steps=3)
        except RuntimeError as exc:
            errors.append(str(exc))

    assert trainer.iterate()
    assert errors == [
        "optimizer steps outside the run cannot be taken from inside iterate() (a handler): call it between "
        "iterate() calls, e.g. before train()"
    ]


# --- the trainer afterwards ----------------------------------------------------------------------------------------


class _Net(nn.Module):
    """Dropout (draws from torch's RNG) and batch norm (running buffers): what a step changes besides the weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


class _Logging(BaseTrainer):
    """Logs a value from compute_loss: a sink must not receive the range test's."""

    def compute_loss(self, batch: Any) -> torch.Tensor:
        self.log("note/seen", float(random.random()))
        return mse(self.pipeline, batch)


def _full_trainer(tmp_path: Path, name: str, log: list[Any]) -> BaseTrainer:
    trainer = make_trainer(
        model=_Net(),
        dataset=make_dataset(40, data_seed=5),
        batch_size=4,
        max_epochs=3,
        cls=_Logging,
        loss_fn=mse,
        precision="16-mixed",
        accumulate=2,
        run_dir=tmp_path / name,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        callbacks=[
            Recorder(log),
            LRDecay(milestones=[0.5], gamma=0.5),
            Checkpointer(every="1ep", keep_last=2),
        ],
    )
    trainer.log_sink(lambda n, v, i: log.append(("log", n, i)), name="test-sink")
    return trainer


def _snapshot(trainer: BaseTrainer) -> dict[str, Any]:
    """Everything the run depends on, copied."""
    assert trainer.scaler is not None
    return copy.deepcopy(
        {
            "model": trainer.pipeline.state_dict(),
            "grads": [None if p.grad is None else p.grad.clone() for p in trainer.pipeline.parameters()],
            "training": [m.training for m in trainer.pipeline.modules()],
            "optimizer": trainer.optimizer.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "trainer": trainer.state_dict(),
            "state": (trainer.state.metrics, trainer.state.optimizer_step, trainer.state.last_checkpoint),
            "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks},
            "rng": capture_rng(),
        }
    )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def test_the_trainer_is_bit_for_bit_as_before_and_its_callbacks_saw_nothing(tmp_path: Path) -> None:
    log: list[Any] = []
    trainer = _full_trainer(tmp_path, "run", log)
    for _ in range(5):  # into the first epoch, inside an accumulation window (its gradients pending)
        assert trainer.iterate()
    assert trainer.state.mid_window
    np.random.rand(3)  # numpy's RNG in use: it is restored too
    before, rows = _snapshot(trainer), len(log)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    result = lr_range_test(trainer, min_lr=1e-6, max_lr=1.0, steps=15, diverge=None)

    assert len(result.lrs) == 15
    assert _equal(_snapshot(trainer), before)
    assert len(log) == rows  # no event, no logged value reached a callback or a sink
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files


def test_train_after_the_test_is_the_run_without_it(tmp_path: Path) -> None:
    runs: list[tuple[BaseTrainer, list[Any]]] = []
    for name, sweep in (("plain", False), ("tested", True)):
        log: list[Any] = []
        trainer = _full_trainer(tmp_path, name, log)
        for _ in range(3):
            assert trainer.iterate()
        if sweep:
            lr_range_test(trainer, min_lr=1e-5, max_lr=10.0, steps=20)
        assert trainer.train() == Status.COMPLETED
        runs.append((trainer, log))
        trainer.close()
    (plain, plain_log), (tested, tested_log) = runs
    for a, b in zip(plain.pipeline.state_dict().values(), tested.pipeline.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert _equal(plain.optimizer.state_dict(), tested.optimizer.state_dict())
    assert plain_log == tested_log  # the same events at the same counters, the same logged values
    assert plain.state.iteration == tested.state.iteration == 30


def test_from_a_fresh_trainer_train_gives_the_same_weights() -> None:
    plain, tested = _demo(max_epochs=1), _demo(max_epochs=1)
    lr_range_test(tested, steps=40)
    assert plain.train() == tested.train() == Status.COMPLETED
    for a, b in zip(plain.pipeline.parameters(), tested.pipeline.parameters(), strict=True):
        assert torch.equal(a, b)


# --- what the test steps -------------------------------------------------------------------------------------------


class _Watching(BaseTrainer):
    """Records the learning rate of every parameter group at each micro-batch."""

    seen: list[tuple[float, ...]]

    def compute_loss(self, batch: Any) -> torch.Tensor:
        self.seen.append(tuple(g["lr"] for g in self.optimizer.param_groups))
        return mse(self.pipeline, batch)


def test_one_rate_per_optimizer_step_with_the_groups_ratios_kept() -> None:
    def two_groups(params: Any) -> torch.optim.Optimizer:
        weight, bias = params
        groups: list[dict[str, Any]] = [{"params": [weight]}, {"params": [bias], "lr": 0.01}]
        return torch.optim.SGD(groups, lr=0.1)

    trainer = make_trainer(items=12, cls=_Watching, accumulate=3, optimizer=two_groups)
    trainer.seen = []  # type: ignore[attr-defined]
    result = lr_range_test(trainer, min_lr=1e-3, max_lr=1.0, steps=5, diverge=None)
    seen = trainer.seen  # type: ignore[attr-defined]
    assert len(seen) == 15  # 5 optimizer steps of 3 micro-batches
    expected = [(lr, lr * (0.01 / 0.1)) for lr in result.lrs for _ in range(3)]
    assert seen == expected
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.01]


def test_named_optimizers_sweep_the_one_chosen() -> None:
    with pytest.raises(ValueError, match=r"named optimizers \('discriminator', 'generator'\): choose the one"):
        lr_range_test(gan_trainer(samples=256, batch_size=64), steps=5)
    trainer = gan_trainer(samples=256, batch_size=64, max_epochs=2, accumulate=2)
    plain = gan_trainer(samples=256, batch_size=64, max_epochs=2, accumulate=2)
    fired: list[int] = []
    trainer.on("step")(lambda t, **payload: fired.append(t.state.iteration))
    rates: list[tuple[float, float]] = []
    original = trainer.optimizer_step

    def watched(name: str) -> bool:  # what optimization_step calls: the rates each optimizer steps at
        groups = {n: o.param_groups[0]["lr"] for n, o in trainer.optimizers.items()}
        rates.append((groups["discriminator"], groups["generator"]))
        return original(name)

    trainer.optimizer_step = watched  # type: ignore[method-assign]
    result = lr_range_test(trainer, optimizer="generator", min_lr=1e-4, max_lr=1e-1, steps=6, diverge=None)
    del trainer.optimizer_step
    assert result.optimizer == "generator"
    # two micro-batches per optimizer step, two optimizers each: the generator swept, the discriminator at its own
    assert rates == [(1e-3, lr) for lr in result.lrs for _ in range(4)]
    assert fired == []
    assert trainer.train() == plain.train() == Status.COMPLETED
    assert len(fired) == trainer.state.optimizer_step * 2  # the handler was live all along
    for a, b in zip(plain.pipeline.parameters(), trainer.pipeline.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_error_in_a_step_propagates_with_the_trainer_put_back() -> None:
    calls = []

    def fails(model: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 4:
            raise ValueError("bad batch")
        return mse(model, batch)

    trainer = make_trainer(items=8, loss_fn=fails)
    before = copy.deepcopy(trainer.pipeline.state_dict())
    with pytest.raises(ValueError, match="bad batch"):
        lr_range_test(trainer, steps=10)
    assert all(torch.equal(before[k], v) for k, v in trainer.pipeline.state_dict().items())
    assert trainer.optimizer.state_dict()["state"] == {}
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3


def test_prebuilt_batches_wrap_around_the_epochs() -> None:
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    batches = [(x[i : i + 2], x[i : i + 2].sum(1, keepdim=True) + 0.5) for i in (0, 2, 4)]
    trainer = make_trainer(dataset=batches, batch_size=None, shuffle=False)
    result = lr_range_test(trainer, min_lr=1e-4, max_lr=1e-3, steps=10, smooth=0.0, diverge=None)
    assert len(result.losses) == 10  # 10 steps over 3 batches per epoch
    plain = make_trainer(dataset=batches, batch_size=None, shuffle=False)
    assert plain.train() == trainer.train() == Status.COMPLETED
    for a, b in zip(plain.pipeline.parameters(), trainer.pipeline.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gradients_of_parameters_no_optimizer_holds_are_left_alone() -> None:
    trainer = make_trainer(items=8, optimizer=lambda params: torch.optim.SGD([next(iter(params))], lr=0.1))
    assert isinstance(trainer.pipeline, nn.Linear)
    bias = trainer.pipeline.bias
    assert trainer.iterate()
    pending = bias.grad
    assert pending is not None
    value = pending.clone()
    lr_range_test(trainer, min_lr=1e-3, max_lr=1e-1, steps=6, diverge=None)
    assert bias.grad is pending
    assert torch.equal(pending, value)  # the test's backward passes did not add into it
