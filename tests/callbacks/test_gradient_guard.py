"""``GradientGuard`` on real training: clipping by norm and by value measured from the gradients themselves, the
``grad_norm`` schedule, each non-finite policy (bit-identical weights and Adam state on a skipped step, stop,
raise naming the iteration and parameters, ``max_skips``, ``check_loss``), host syncs counted with a spy, and
argument checks."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import GradientGuard, NonFiniteError
from lifecycle import CallbackError, Priority, Status
from tests.support import Recorder, make_dataset
from trainers import BaseTrainer

GUARD_FILE = str(Path(sys.modules[GradientGuard.__module__].__file__ or "").resolve())
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def scaled_mse(scale: float = 1.0) -> Callable[[nn.Module, Any], torch.Tensor]:
    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        return scale * nn.functional.mse_loss(model(batch[0]), batch[1])

    return loss_fn


def guard_trainer(
    *callbacks: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    optimizer: Any = None,
    items: int = 8,
    batch_size: int = 2,
    max_epochs: int = 2,
) -> BaseTrainer:
    """A real MLP regression: ``items / batch_size`` steps per epoch (4 by default)."""
    return BaseTrainer(
        mlp(),
        make_dataset(items),
        max_epochs=max_epochs,
        batch_size=batch_size,
        optimizer=optimizer if optimizer is not None else (lambda params: torch.optim.Adam(params, lr=1e-2)),
        callbacks=callbacks,
        loss_fn=loss_fn if loss_fn is not None else scaled_mse(),
        device="cpu",
    )


def grads_of(trainer: BaseTrainer) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in trainer.pipeline.parameters()]


def probe_grads(trainer: BaseTrainer) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]]]:
    """Gradients on ``step`` before the guard (priority above STATE) and after it (default priority)."""
    before: dict[int, list[torch.Tensor]] = {}
    after: dict[int, list[torch.Tensor]] = {}
    trainer.bus.connect(
        "step", lambda t, **_: before.__setitem__(t.state.iteration, grads_of(t)), priority=Priority.STATE + 100
    )
    trainer.bus.connect("step", lambda t, **_: after.__setitem__(t.state.iteration, grads_of(t)))
    return before, after


def total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> float:
    return float(torch.nn.utils.get_total_norm(grads, norm_type))


def clipped_copy(grads: list[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> list[torch.Tensor]:
    """What ``torch.nn.utils.clip_grad_norm_`` makes of these gradients, on copies."""
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    return [p.grad for p in params]


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("policy", [None, "skip"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_norm_clips_the_total_norm_like_clip_grad_norm(policy: str | None, norm_type: float) -> None:
    guard = GradientGuard(clip_norm=0.5, norm_type=norm_type, on_nonfinite=policy, every=None)
    trainer = guard_trainer(guard, loss_fn=scaled_mse(50.0))
    before, after = probe_grads(trainer)
    assert trainer.train() is Status.COMPLETED
    assert sorted(before) == sorted(after) == list(range(1, 9))
    for iteration in range(1, 9):
        assert total_norm(before[iteration], norm_type) > 0.5  # every step really needed clipping
        assert total_norm(after[iteration], norm_type) == pytest.approx(0.5, rel=1e-5)
        assert all_equal(after[iteration], clipped_copy(before[iteration], 0.5, norm_type))
    assert "grad_norm" not in trainer.state.metrics  # every=None: never published


def test_clip_norm_leaves_small_gradients_bit_identical() -> None:
    guard = GradientGuard(clip_norm=1e6, every=None)
    trainer = guard_trainer(guard)
    before, after = probe_grads(trainer)
    trainer.train()
    for iteration in range(1, 9):
        assert all_equal(after[iteration], before[iteration])


def test_clip_value_clamps_every_element() -> None:
    guard = GradientGuard(clip_value=0.1, every=None)
    trainer = guard_trainer(guard)
    before, after = probe_grads(trainer)
    trainer.train()
    for iteration in range(1, 9):
        flat = torch.cat([g.flatten() for g in before[iteration]])
        assert bool((flat.abs() > 0.1).any())  # some elements needed clamping ...
        assert bool((flat.abs() < 0.1).any())  # ... and some did not
        assert all_equal(after[iteration], [g.clamp(-0.1, 0.1) for g in before[iteration]])


def test_clip_value_then_clip_norm_and_grad_norm_is_the_pre_clip_norm() -> None:
    guard = GradientGuard(clip_value=0.5, clip_norm=0.3, every=1)
    trainer = guard_trainer(guard, loss_fn=scaled_mse(50.0))
    before, after = probe_grads(trainer)
    published: dict[int, float] = {}
    trainer.bus.connect("step", lambda t, **_: published.__setitem__(t.state.iteration, t.state.metrics["grad_norm"]))
    trainer.train()
    for iteration in range(1, 9):
        clamped = [g.clamp(-0.5, 0.5) for g in before[iteration]]
        assert not all_equal(clamped, before[iteration])
        assert all_equal(after[iteration], clipped_copy(clamped, 0.3))
        assert published[iteration] == total_norm(before[iteration])


# ---------------------------------------------------------------------------------------------- grad_norm schedule


@pytest.mark.parametrize(
    "kwargs",
    [
        {"on_nonfinite": None},  # publishing only
        {"on_nonfinite": "skip"},
        {"on_nonfinite": None, "clip_norm": 0.5},
        {"on_nonfinite": "skip", "clip_value": 0.01},
    ],
    ids=["publish-only", "skip", "clip-norm", "skip-clip-value"],
)
def test_grad_norm_is_published_only_on_its_schedule_with_the_pre_clip_norm(kwargs: dict[str, Any]) -> None:
    guard = GradientGuard(every="3it", **kwargs)
    trainer = guard_trainer(guard, loss_fn=scaled_mse(50.0), items=20, max_epochs=1)  # 10 steps
    before, _ = probe_grads(trainer)
    published: list[tuple[int, float]] = []

    def take(t: BaseTrainer, **_: Any) -> None:  # after the guard: pop what it published during this step
        if "grad_norm" in t.state.metrics:
            published.append((t.state.iteration, t.state.metrics.pop("grad_norm")))

    trainer.bus.connect("step", take)
    trainer.train()
    assert [it for it, _ in published] == [3, 6, 9]
    for iteration, value in published:
        assert value == total_norm(before[iteration])
        assert value > 0.5


def test_grad_norm_schedule_is_filtered_by_the_bus_when_only_publishing() -> None:
    guard = GradientGuard(on_nonfinite=None, every="3it")
    trainer = guard_trainer(guard)
    (handle,) = trainer.handles_of(guard)
    assert handle.event.value == "step"
    assert str(handle.schedule) == "3it"
    busy = GradientGuard(on_nonfinite="skip", every="3it", state_key="busy")
    trainer.add_callback(busy)
    (handle,) = trainer.handles_of(busy)
    assert handle.schedule.always  # it must look at every step


# ---------------------------------------------------------------------------------------------- non-finite


def nan_loss_at(*bad: int, how: str = "scale") -> Callable[[nn.Module, Any], torch.Tensor]:
    """An MSE loss that turns non-finite at the given (1-based) calls, i.e. iterations.

    ``how``: ``"scale"`` multiplies the loss by NaN (loss and every gradient NaN); ``"constant"`` adds a NaN constant
    (loss NaN, gradients finite); ``"sqrt"`` adds ``sqrt(b - b.detach())`` of the last bias (loss finite, that one
    gradient +inf)."""
    calls = [0]

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        if calls[0] not in bad:
            return loss
        if how == "scale":
            return loss * float("nan")
        if how == "constant":
            return loss + torch.tensor(float("nan"))
        bias = model[2].bias
        return loss + torch.sqrt(bias - bias.detach()).sum()

    return loss_fn


class Snapshots:
    """Parameters and optimizer state at ``pre_step`` (before the step) and ``post_step`` (after it)."""

    def __init__(self, trainer: BaseTrainer) -> None:
        self.before: dict[int, tuple[list[torch.Tensor], dict[Any, Any]]] = {}
        self.after: dict[int, tuple[list[torch.Tensor], dict[Any, Any]]] = {}
        trainer.bus.connect("pre_step", lambda t, **_: self.before.__setitem__(t.state.iteration, self.take(t)))
        trainer.bus.connect("post_step", lambda t, **_: self.after.__setitem__(t.state.iteration, self.take(t)))

    @staticmethod
    def take(trainer: BaseTrainer) -> tuple[list[torch.Tensor], dict[Any, Any]]:
        params = [p.detach().clone() for p in trainer.pipeline.parameters()]
        return params, copy.deepcopy(trainer.optimizer.state_dict()["state"])

    def unchanged(self, iteration: int) -> bool:
        (p0, s0), (p1, s1) = self.before[iteration], self.after[iteration]
        return all_equal(p0, p1) and same_optimizer_state(s0, s1)


def same_optimizer_state(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    if sorted(a) != sorted(b):
        return False
    for key in a:
        if sorted(a[key]) != sorted(b[key]):
            return False
        for name, value in a[key].items():
            other = b[key][name]
            if isinstance(value, torch.Tensor):
                if not torch.equal(value, other):
                    return False
            elif value != other:
                return False
    return True


def test_skip_withholds_the_update_bit_identically_and_training_goes_on() -> None:
    guard = GradientGuard(on_nonfinite="skip", every=None)
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(3))
    snaps = Snapshots(trainer)
    steps_seen: list[tuple[int, Any]] = []
    trainer.bus.connect(
        "post_step", lambda t, **_: steps_seen.append((t.state.iteration, t.state.metrics.get("grad/nonfinite_steps")))
    )
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 8
    assert snaps.unchanged(3)  # parameters AND Adam's exp_avg, exp_avg_sq, step: bit-identical
    step_count = snaps.after[3][1][0]["step"]
    assert float(step_count) == 2.0  # Adam did not count the skipped step
    for iteration in (1, 2, 4, 5, 6, 7, 8):
        assert not snaps.unchanged(iteration)  # every other step did update
    assert float(snaps.after[8][1][0]["step"]) == 7.0
    assert all(bool(torch.isfinite(p).all()) for p in trainer.pipeline.parameters())
    assert steps_seen == [(1, None), (2, None)] + [(i, 1) for i in range(3, 9)]
    assert (guard.skipped, guard.consecutive, guard.reason) == (1, 0, None)


def test_stop_withholds_the_update_and_stops_at_that_iteration() -> None:
    guard = GradientGuard(on_nonfinite="stop", every=None)
    rec = Recorder()
    trainer = guard_trainer(guard, rec, loss_fn=nan_loss_at(6))
    snaps = Snapshots(trainer)
    assert trainer.train() is Status.STOPPED
    assert trainer.status is Status.STOPPED
    assert trainer.state.iteration == 6
    assert snaps.unchanged(6)
    final = [p.detach() for p in trainer.pipeline.parameters()]
    assert all_equal(final, snaps.before[6][0])
    assert rec.log[-2:] == [("post_epoch", 2, 2, 6, None), ("post_training", 2, 2, 6, Status.STOPPED)]
    assert guard.reason is not None
    assert guard.reason.startswith("non-finite values at iteration 6: loss = nan; gradients of ")
    assert trainer.state.metrics["grad/nonfinite_steps"] == 1


def test_raise_names_the_iteration_and_every_parameter_with_non_finite_gradients() -> None:
    guard = GradientGuard(on_nonfinite="raise")
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(5))
    snaps = Snapshots(trainer)
    with pytest.raises(CallbackError) as info:
        trainer.train()
    error = info.value
    assert isinstance(error.__cause__, NonFiniteError)
    assert isinstance(error.__cause__, FloatingPointError)
    assert (error.iteration, error.event) == (5, "step")
    message = str(error)
    assert "at iteration 5" in str(error.__cause__)
    assert "loss = nan" in message
    assert "gradients of " + ", ".join(NAMES) in message
    assert trainer.status is Status.FAILED
    assert all_equal([p.detach() for p in trainer.pipeline.parameters()], snaps.before[5][0])  # not stepped


def test_raise_names_only_the_parameter_whose_gradient_is_infinite() -> None:
    guard = GradientGuard(on_nonfinite="raise", check_loss=False)
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(2, how="sqrt"))
    with pytest.raises(CallbackError) as info:
        trainer.train()
    cause = info.value.__cause__
    assert isinstance(cause, NonFiniteError)
    assert str(cause).startswith("non-finite values at iteration 2 (")
    assert str(cause).endswith(": gradients of 2.bias")  # the loss was finite; the other gradients too
    assert info.value.iteration == 2


def test_max_skips_raises_on_consecutive_skips() -> None:
    guard = GradientGuard(on_nonfinite="skip", max_skips=2)
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(3, 4))
    with pytest.raises(CallbackError) as info:
        trainer.train()
    cause = info.value.__cause__
    assert isinstance(cause, NonFiniteError)
    assert "2 consecutive steps with non-finite values (max_skips=2), the last at iteration 4" in str(cause)
    assert info.value.iteration == 4
    assert guard.skipped == 2


def test_max_skips_counts_only_consecutive_skips() -> None:
    guard = GradientGuard(on_nonfinite="skip", max_skips=2)
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(3, 5, 7))
    snaps = Snapshots(trainer)
    assert trainer.train() is Status.COMPLETED
    assert (guard.skipped, guard.consecutive) == (3, 0)
    assert trainer.state.metrics["grad/nonfinite_steps"] == 3
    assert [snaps.unchanged(i) for i in range(1, 9)] == [False, False, True, False, True, False, True, False]


def test_a_nan_loss_with_finite_gradients_is_skipped_only_with_check_loss() -> None:
    checked = GradientGuard(on_nonfinite="skip", check_loss=True)
    trainer = guard_trainer(checked, loss_fn=nan_loss_at(3, how="constant"))
    grads = probe_grads(trainer)[0]
    snaps = Snapshots(trainer)
    trainer.train()
    assert all(bool(torch.isfinite(g).all()) for g in grads[3])  # the gradients really were finite
    assert snaps.unchanged(3)
    assert checked.skipped == 1

    unchecked = GradientGuard(on_nonfinite="skip", check_loss=False)
    trainer = guard_trainer(unchecked, loss_fn=nan_loss_at(3, how="constant"))
    snaps = Snapshots(trainer)
    trainer.train()
    assert not snaps.unchanged(3)  # applied: only the loss was NaN
    assert unchecked.skipped == 0
    assert "grad/nonfinite_steps" not in trainer.state.metrics


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_a_non_finite_loss_of_any_dtype_is_skipped_and_grad_norm_leaves_the_loss_out(
    bad: float, dtype: torch.dtype, norm_type: float
) -> None:
    """The loss shares the gradients' fused norm call when its dtype and device are theirs (float32 here), else it
    is checked on its own (float64, bfloat16): both paths skip the step with a non-finite loss, and the
    published grad_norm is the gradients' alone, equal to torch's total norm (a withheld step publishes none)."""

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(batch[0]), batch[1]).to(dtype)
        return loss + torch.tensor(bad, dtype=dtype) if trainer.state.iteration == 3 else loss

    guard = GradientGuard(on_nonfinite="skip", every="1it", norm_type=norm_type)
    trainer = guard_trainer(guard, loss_fn=loss_fn)
    before, _ = probe_grads(trainer)
    snaps = Snapshots(trainer)
    published: dict[int, float] = {}
    trainer.bus.connect("step", lambda t, **_: published.__setitem__(t.state.iteration, t.state.metrics["grad_norm"]))
    trainer.train()
    assert [snaps.unchanged(i) for i in range(1, 9)] == [i == 3 for i in range(1, 9)]
    assert guard.skipped == 1
    assert all(bool(torch.isfinite(g).all()) for g in before[3])  # only the loss was not finite
    for iteration in (1, 2, 4, 5):
        assert published[iteration] == total_norm(before[iteration], norm_type)
    assert published[3] == published[2]


def test_raise_on_a_nan_loss_with_finite_gradients_says_so() -> None:
    trainer = guard_trainer(GradientGuard(on_nonfinite="raise"), loss_fn=nan_loss_at(1, how="constant"))
    with pytest.raises(CallbackError) as info:
        trainer.train()
    cause = str(info.value.__cause__)
    assert cause.endswith(": loss = nan")
    assert "gradients of" not in cause


def test_no_policy_lets_a_non_finite_step_through() -> None:
    trainer = guard_trainer(GradientGuard(on_nonfinite=None, clip_norm=1.0), loss_fn=nan_loss_at(3))
    trainer.train()
    assert all(bool(torch.isnan(p).all()) for p in trainer.pipeline.parameters())  # nothing guarded it


# ---------------------------------------------------------------------------------------------- host syncs


class SyncSpy:
    """Counts ``Tensor.item`` and ``Tensor.__bool__`` calls, and those made from the guard's own file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {"item": 0, "__bool__": 0}
        self.from_guard: dict[str, int] = {"item": 0, "__bool__": 0}
        for name in self.calls:
            monkeypatch.setattr(torch.Tensor, name, self._spy(name, getattr(torch.Tensor, name)))

    def _spy(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def spy(tensor: torch.Tensor) -> Any:
            self.calls[name] += 1
            if str(Path(sys._getframe(1).f_code.co_filename).resolve()) == GUARD_FILE:
                self.from_guard[name] += 1
            return original(tensor)

        return spy


def sync_run(monkeypatch: pytest.MonkeyPatch, *callbacks: Any) -> SyncSpy:
    trainer = guard_trainer(
        *callbacks,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        items=20,
        max_epochs=3,  # 30 steps
    )
    spy = SyncSpy(monkeypatch)
    assert trainer.train() is Status.COMPLETED
    monkeypatch.undo()
    assert trainer.state.iteration == 30
    return spy


def test_the_training_loop_alone_never_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = sync_run(monkeypatch)
    assert spy.calls == {"item": 0, "__bool__": 0}


def test_publishing_only_reads_the_norm_once_per_scheduled_step(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GradientGuard(on_nonfinite=None, every="10it")
    spy = sync_run(monkeypatch, guard)
    assert spy.calls == spy.from_guard == {"item": 3, "__bool__": 0}


def test_clipping_alone_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GradientGuard(on_nonfinite=None, clip_norm=0.1, clip_value=0.05, every=None)
    spy = sync_run(monkeypatch, guard)
    assert spy.calls == {"item": 0, "__bool__": 0}


def test_the_non_finite_check_costs_one_sync_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = GradientGuard(on_nonfinite="skip", every="10it")
    spy = sync_run(monkeypatch, guard)
    assert spy.calls == spy.from_guard == {"item": 30 + 3, "__bool__": 0}  # a read per step, plus 3 publications


# ---------------------------------------------------------------------------------------------- arguments, state


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_norm": 0}, "clip_norm must be a finite number > 0, or None for no clipping, got 0"),
        ({"clip_norm": -1.0}, "clip_norm must be a finite number > 0, or None for no clipping, got -1.0"),
        ({"clip_norm": True}, "clip_norm must be a finite number > 0, or None for no clipping, got True"),
        ({"clip_norm": "1"}, "clip_norm must be a finite number > 0, or None for no clipping, got '1'"),
        ({"clip_norm": math.nan}, "clip_norm must be a finite number > 0, or None for no clipping, got nan"),
        ({"clip_norm": math.inf}, "clip_norm must be a finite number > 0, or None for no clipping, got inf"),
        ({"clip_value": 0.0}, "clip_value must be a finite number > 0, or None for no clipping, got 0.0"),
        ({"clip_value": math.inf}, "clip_value must be a finite number > 0, or None for no clipping, got inf"),
        ({"norm_type": 0}, "norm_type must be a number > 0"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite must be 'skip', 'stop', 'raise' or None, got 'ignore'"),
        ({"max_skips": 0}, "max_skips must be an int >= 1 or None, got 0"),
        ({"max_skips": 2.0}, "max_skips must be an int >= 1 or None, got 2.0"),
        ({"every": "1ep"}, r"schedule '1ep' of GradientGuard 'GradientGuard' counts epochs.*not 'step'"),
        ({"every": "0it"}, "invalid schedule '0it'"),
        ({"every": "often"}, "invalid schedule 'often'"),
    ],
)
def test_bad_arguments_are_value_errors_naming_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        GradientGuard(**kwargs)
    assert "GradientGuard 'GradientGuard'" in str(info.value)


def test_a_pipeline_without_trainable_parameters_is_refused_at_construction() -> None:
    model = mlp()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="GradientGuard 'GradientGuard': Sequential has no trainable parameters"):
        BaseTrainer(
            model,
            make_dataset(8),
            max_epochs=1,
            batch_size=2,
            callbacks=[GradientGuard()],
            loss_fn=scaled_mse(),
            device="cpu",
        )


def test_state_dict_round_trip() -> None:
    guard = GradientGuard(on_nonfinite="stop")
    trainer = guard_trainer(guard, loss_fn=nan_loss_at(2))
    trainer.train()
    state = copy.deepcopy(guard.state_dict())
    assert state == {"skipped": 1, "consecutive": 1, "reason": guard.reason}
    assert "iteration 2" in state["reason"]
    fresh = GradientGuard(on_nonfinite="stop")
    fresh.load_state_dict(state)
    assert (fresh.skipped, fresh.consecutive, fresh.reason) == (1, 1, guard.reason)
    with pytest.raises(ValueError, match="not a GradientGuard state dict"):
        fresh.load_state_dict({"skipped": 1})


def test_consecutive_skips_survive_a_resume() -> None:
    first = GradientGuard(on_nonfinite="skip", max_skips=2)
    trainer = guard_trainer(first, loss_fn=nan_loss_at(4))
    for _ in range(4):
        trainer.iterate()
    assert (first.skipped, first.consecutive) == (1, 1)

    second = GradientGuard(on_nonfinite="skip", max_skips=2)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    resumed = guard_trainer(second, loss_fn=nan_loss_at(1))  # the first step after the resume is non-finite too
    resumed.load_state_dict(trainer.state_dict())
    with pytest.raises(CallbackError) as info:
        resumed.train()
    assert info.value.iteration == 5
    assert "2 consecutive steps" in str(info.value.__cause__)
