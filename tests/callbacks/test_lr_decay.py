"""``LRDecay`` on real training runs: the exact LR of every step in milestone mode (per iteration and per epoch, with
partial batches, with linear warmup), wrapped torch schedulers compared with a raw PyTorch loop, ReduceLROnPlateau
driven by a Validator, per-group metrics, exact resume (mid-epoch, at an epoch boundary, inside the warmup), and the
configuration errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, ReduceLROnPlateau, StepLR

from callbacks import LRDecay, Validator
from lifecycle import Priority
from tests.support import make_model, make_trainer, params_of, same_params
from trainers import BaseTrainer, param_groups

G = 0.333  # Wisp's gamma, the default
LR = 0.1
ITEMS, BATCH = 10, 3  # 4 iterations per epoch; the last batch of every epoch holds 1 item


class LRLog:
    """Per iteration: the LR of every group as ``optimizer.step()`` is about to use it (read at the ``step`` event,
    after backward, before the optimizer step), and the published ``lr`` metrics as seen at ``post_step``."""

    def __init__(self, trainer: BaseTrainer, keys: tuple[str, ...] = ("lr",)) -> None:
        self.keys = keys
        self.used: dict[int, list[float]] = {}
        self.published: dict[int, list[float]] = {}
        self.sizes: dict[int, int] = {}
        trainer.on("pre_step")(self._pre_step)
        trainer.on("step")(self._step)
        trainer.on("post_step")(self._post_step)

    def _pre_step(self, trainer: BaseTrainer, *, batch: Any, **_: Any) -> None:
        self.sizes[trainer.state.iteration] = len(batch[0])

    def _step(self, trainer: BaseTrainer, **_: Any) -> None:
        self.used[trainer.state.iteration] = [g["lr"] for g in trainer.optimizer.param_groups]

    def _post_step(self, trainer: BaseTrainer, **_: Any) -> None:
        self.published[trainer.state.iteration] = [trainer.state.metrics[k] for k in self.keys]

    def lrs(self, group: int = 0) -> list[float]:
        """The used LRs of ``group`` in iteration order."""
        return [self.used[i][group] for i in sorted(self.used)]


def sgd_trainer(
    callbacks: list[Any] | Callable[[torch.optim.Optimizer], list[Any]],
    *,
    max_epochs: int,
    items: int = ITEMS,
    batch_size: int = BATCH,
    lr: float = LR,
    momentum: float = 0.0,
    init_seed: int = 0,
    **kwargs: Any,
) -> tuple[BaseTrainer, torch.optim.Optimizer, LRLog]:
    """A real trainer of ``nn.Linear(3, 1)`` with a plain SGD built before it (so a scheduler can use it).
    ``callbacks`` may be a function of the optimizer."""
    model = make_model(init_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    cbs = callbacks(optimizer) if callable(callbacks) else callbacks
    trainer = make_trainer(items, batch_size, max_epochs, model=model, optimizer=optimizer, callbacks=cbs, **kwargs)
    return trainer, optimizer, LRLog(trainer)


def decays_before(position: int, points: list[int]) -> int:
    """The number of milestones ``M`` with ``M < position``: the steps after milestone M use one more gamma."""
    return sum(1 for p in points if p < position)


def warm(position: int, steps: int, start: float) -> float:
    """The documented linear warmup factor of step ``position`` (1-based)."""
    return 1.0 if position >= steps else start + (1.0 - start) * position / steps


def raw_lrs(make_scheduler: Callable[[torch.optim.Optimizer], Any], steps: int, lrs: tuple[float, ...] = (LR,)):
    """The LR each of ``steps`` optimizer steps uses in a plain PyTorch loop: step the optimizer, then the scheduler.
    One list per parameter group."""
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)], lr=lrs[0])
    scheduler = make_scheduler(optimizer)
    out: list[list[float]] = [[] for _ in lrs]
    for _ in range(steps):
        for column, group in zip(out, optimizer.param_groups, strict=True):
            column.append(group["lr"])
        for p in params:
            p.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    return out


def first_iterations(lrs: list[float]) -> list[int]:
    """The 1-based iterations at which the LR takes a new value (1 included)."""
    return [i + 1 for i, lr in enumerate(lrs) if i == 0 or lr != lrs[i - 1]]


# ---------------------------------------------------------------------------------------------- milestone mode
@pytest.mark.parametrize(
    ("batch_size", "max_epochs", "per_epoch", "points"),
    [
        # 10 items / batch 3 = 4 iterations per epoch (partial last batch), 3 epochs: total 12 (dataset length 10
        # would put the milestones at 5, 7.5 and 9); round(6) = 6, round(9) = 9, round(10.8) = 11
        (3, 3, 4, [6, 9, 11]),
        # 5 per epoch x 2 = 10: 5, round(7.5) = 8, 9
        (2, 2, 5, [5, 8, 9]),
        # 1 per epoch (one batch of all 10 items) x 4 = 4: 2, 3, round(3.6) = 4 (which no step comes after)
        (10, 4, 1, [2, 3, 4]),
    ],
)
def test_milestones_are_fractions_of_epochs_times_iterations(batch_size, max_epochs, per_epoch, points) -> None:
    trainer, _, log = sgd_trainer([LRDecay()], max_epochs=max_epochs, batch_size=batch_size)
    trainer.train()
    total = max_epochs * per_epoch
    assert sorted(log.used) == list(range(1, total + 1))
    assert [round(m * total) for m in (0.5, 0.75, 0.9)] == points  # the documented formula, checked by hand above
    expected = [LR * G ** decays_before(i, points) for i in range(1, total + 1)]
    assert log.lrs() == expected
    assert [log.published[i][0] for i in range(1, total + 1)] == expected
    # the decay of milestone M starts exactly at iteration M + 1
    assert first_iterations(log.lrs()) == [1] + [p + 1 for p in points if p < total]


def test_milestone_boundaries_explicitly_with_partial_batches() -> None:
    trainer, optimizer, log = sgd_trainer([LRDecay()], max_epochs=3)
    trainer.train()
    assert [log.sizes[i] for i in range(1, 13)] == [3, 3, 3, 1] * 3  # partial last batch in every epoch
    lrs = log.lrs()
    assert lrs[:6] == [LR] * 6  # iterations 1-6
    assert lrs[6:9] == [LR * G] * 3  # 7-9
    assert lrs[9:11] == [LR * G**2] * 2  # 10-11
    assert lrs[11:] == [LR * G**3]  # 12
    assert trainer.state.metrics["lr"] == LR * G**3
    assert optimizer.param_groups[0]["initial_lr"] == LR


def test_custom_milestones_and_gamma_and_a_tiny_milestone_rounds_up_to_one() -> None:
    # total 12: round(0.01 * 12) = 0 is clamped to 1 (decay from iteration 2), round(0.5 * 12) = 6
    trainer, _, log = sgd_trainer([LRDecay(milestones=[0.01, 0.5], gamma=0.5)], max_epochs=3)
    trainer.train()
    assert log.lrs() == [LR] + [LR * 0.5] * 5 + [LR * 0.25] * 6


def test_epoch_interval_milestones_hold_within_an_epoch() -> None:
    # 10 epochs x 2 iterations; epoch milestones 5, round(7.5) = 8, 9
    trainer, _, log = sgd_trainer([LRDecay(interval="epoch")], max_epochs=10, batch_size=5)
    epochs: dict[int, float] = {}
    trainer.on("pre_epoch")(lambda t, **_: epochs.__setitem__(t.state.epoch, t.state.metrics["lr"]))
    trainer.train()
    lrs = log.lrs()
    assert len(lrs) == 20
    per_epoch = [LR * G ** decays_before(e, [5, 8, 9]) for e in range(1, 11)]
    assert lrs == [lr for lr in per_epoch for _ in range(2)]
    assert per_epoch == [LR] * 5 + [LR * G] * 3 + [LR * G**2] + [LR * G**3]
    assert first_iterations(lrs) == [1, 11, 17, 19]  # first steps of epochs 6, 9 and 10
    assert [log.published[i][0] for i in range(1, 21)] == lrs
    assert epochs == dict(enumerate(per_epoch, start=1))  # already set when pre_epoch handlers of priority 0 run


@pytest.mark.parametrize("warmup", [5, "5it", " 5IT "])
def test_linear_warmup_combined_with_milestones(warmup) -> None:
    # total 12; milestones [0.25, 0.5] -> 3, 6; the milestone at 3 falls inside the 5-step warmup
    trainer, _, log = sgd_trainer([LRDecay(milestones=[0.25, 0.5], warmup=warmup, warmup_start=0.2)], max_epochs=3)
    trainer.train()
    lrs = log.lrs()
    for i, lr in enumerate(lrs, start=1):
        expected = LR * (0.2 + 0.8 * i / 5 if i < 5 else 1.0) * G ** decays_before(i, [3, 6])
        assert math.isclose(lr, expected, rel_tol=1e-12), (i, lr, expected)
        assert math.isclose(log.published[i][0], expected, rel_tol=1e-12)
    assert math.isclose(lrs[0], LR * 0.36, rel_tol=1e-12)  # step 1: 0.2 + 0.8 / 5
    assert math.isclose(lrs[3], LR * 0.84 * G, rel_tol=1e-12)  # step 4: warmup and the first decay
    assert lrs[4] == LR * G  # step 5: the full scheduled LR
    assert lrs[6:] == [LR * G**2] * 6


def test_warmup_from_zero_by_default_and_in_epochs() -> None:
    trainer, _, log = sgd_trainer([LRDecay(milestones=[1.0], warmup=4)], max_epochs=2)
    trainer.train()
    assert log.lrs()[:5] == [LR * (i / 4) for i in range(1, 4)] + [LR, LR]
    # interval="epoch", warmup "2ep": epoch 1 at half the LR, then the full LR until epoch milestone 3 of 4
    trainer, _, log = sgd_trainer(
        [LRDecay(interval="epoch", milestones=[0.75], warmup="2ep")], max_epochs=4, batch_size=5
    )
    trainer.train()
    assert log.lrs() == [LR * 0.5] * 2 + [LR] * 4 + [LR * G] * 2


# ---------------------------------------------------------------------------------------------- torch schedulers
def test_wrapped_steplr_instance_matches_a_raw_pytorch_loop() -> None:
    trainer, _, log = sgd_trainer(lambda opt: [LRDecay(StepLR(opt, step_size=3, gamma=0.5))], max_epochs=3)
    trainer.train()
    raw = raw_lrs(lambda opt: StepLR(opt, step_size=3, gamma=0.5), 12)[0]
    assert raw == [LR] * 3 + [LR / 2] * 3 + [LR / 4] * 3 + [LR / 8] * 3
    assert log.lrs() == raw
    assert [log.published[i][0] for i in range(1, 13)] == raw  # the LR each step used, not the next one


def test_wrapped_cosine_factory_matches_a_raw_pytorch_loop() -> None:
    trainer, optimizer, log = sgd_trainer([LRDecay(lambda opt: CosineAnnealingLR(opt, T_max=12))], max_epochs=3)
    decay = trainer.callbacks[0]
    assert isinstance(decay, LRDecay)
    assert isinstance(decay.scheduler, CosineAnnealingLR)
    assert decay.scheduler.optimizer is optimizer
    trainer.train()
    raw = raw_lrs(lambda opt: CosineAnnealingLR(opt, T_max=12), 12)[0]
    assert math.isclose(raw[6], LR / 2, rel_tol=1e-12)  # cos(pi/2) half way through
    assert log.lrs() == raw
    assert [log.published[i][0] for i in range(1, 13)] == raw
    assert len(set(raw)) == 12


def test_wrapped_scheduler_per_epoch_matches_a_raw_loop_stepped_per_epoch() -> None:
    trainer, _, log = sgd_trainer([LRDecay(lambda opt: ExponentialLR(opt, gamma=0.5), interval="epoch")], max_epochs=3)
    trainer.train()
    raw = raw_lrs(lambda opt: ExponentialLR(opt, gamma=0.5), 3)[0]
    assert raw == [LR, LR / 2, LR / 4]
    assert log.lrs() == [lr for lr in raw for _ in range(4)]


def test_published_lr_with_an_epoch_scheduler_is_the_lr_of_the_latest_step() -> None:
    # the module contract: state.metrics["lr"] is "the LR the latest step used", also with interval="epoch"
    trainer, _, log = sgd_trainer([LRDecay(lambda opt: ExponentialLR(opt, gamma=0.5), interval="epoch")], max_epochs=3)
    trainer.train()
    assert log.lrs() == [LR] * 4 + [LR / 2] * 4 + [LR / 4] * 4
    assert [log.published[i][0] for i in range(1, 13)] == log.lrs()


def test_iteration_and_epoch_intervals_differ_for_the_same_scheduler() -> None:
    by_step, _, log_step = sgd_trainer([LRDecay(lambda opt: StepLR(opt, step_size=2, gamma=0.5))], max_epochs=2)
    by_epoch, _, log_epoch = sgd_trainer(
        [LRDecay(lambda opt: StepLR(opt, step_size=2, gamma=0.5), interval="epoch")], max_epochs=3, batch_size=5
    )
    by_step.train()
    by_epoch.train()
    assert log_step.lrs() == [LR, LR, LR / 2, LR / 2, LR / 4, LR / 4, LR / 8, LR / 8]
    assert log_epoch.lrs() == [LR] * 4 + [LR / 2] * 2  # two epochs of LR, then the step at the end of epoch 2


def test_wrapped_scheduler_with_warmup_multiplies_the_scheduled_lr() -> None:
    trainer, _, log = sgd_trainer(
        lambda opt: [LRDecay(StepLR(opt, step_size=2, gamma=0.5), warmup=5, warmup_start=0.1)], max_epochs=2
    )
    trainer.train()
    raw = raw_lrs(lambda opt: StepLR(opt, step_size=2, gamma=0.5), 8)[0]
    lrs = log.lrs()
    for i in range(1, 9):
        expected = raw[i - 1] * warm(i, 5, 0.1)
        assert math.isclose(lrs[i - 1], expected, rel_tol=1e-12), (i, lrs[i - 1], expected)
        assert math.isclose(log.published[i][0], expected, rel_tol=1e-12)
    # the scheduler itself saw its own LRs, not the warmed ones: after 8 steps StepLR is at LR / 16
    assert trainer.optimizer.param_groups[0]["lr"] == LR / 16
    assert lrs[4:] == [LR / 4, LR / 4, LR / 8, LR / 8]


# ---------------------------------------------------------------------------------------------- ReduceLROnPlateau
LOSSES = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86, 0.87]


def test_reduce_on_plateau_follows_validation_losses_like_torch() -> None:
    plateau = {"factor": 0.5, "patience": 1}
    decay = LRDecay(lambda opt: ReduceLROnPlateau(opt, **plateau), monitor="val/loss")
    validator = Validator(fn=lambda t: {"loss": LOSSES[t.state.epoch - 1]}, every="1ep")
    trainer, optimizer, log = sgd_trainer([validator, decay], max_epochs=8, batch_size=5)
    trainer.train()
    assert validator.count == 8
    # the same numbers fed directly to torch's ReduceLROnPlateau
    direct_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    direct = ReduceLROnPlateau(direct_optimizer, **plateau)
    after: list[float] = []
    for loss in LOSSES:
        direct.step(loss)
        after.append(direct_optimizer.param_groups[0]["lr"])
    assert after == [LR, LR, LR, LR / 2, LR / 2, LR / 2, LR / 4, LR / 4]  # hand check: patience 1 -> 3rd bad epoch
    per_epoch = [LR, *after[:-1]]  # epoch e uses the LR after e - 1 validations
    assert log.lrs() == [lr for lr in per_epoch for _ in range(2)]
    assert [log.published[i][0] for i in range(1, 17)] == log.lrs()
    assert optimizer.param_groups[0]["lr"] == after[-1] == trainer.state.metrics["lr"]


def test_plateau_published_lr_at_post_epoch_is_the_lr_the_epoch_used() -> None:
    # the contract: state.metrics["lr"] is "the LR the latest step used"; a logger reading it at post_epoch (after
    # the validation of that epoch, which already reduced the LR for the next epoch) must see the LR the epoch used,
    # as it does in every other mode
    decay = LRDecay(lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=1), monitor="val/loss")
    validator = Validator(fn=lambda t: {"loss": LOSSES[t.state.epoch - 1]}, every="1ep")
    trainer, _, log = sgd_trainer([validator, decay], max_epochs=8, batch_size=5)
    seen: dict[int, float] = {}
    trainer.on("post_epoch", priority=Priority.LOGGING)(
        lambda t, **_: seen.__setitem__(t.state.epoch, t.state.metrics["lr"])
    )
    trainer.train()
    used = {e: log.used[2 * e][0] for e in range(1, 9)}
    assert used == {1: LR, 2: LR, 3: LR, 4: LR, 5: LR / 2, 6: LR / 2, 7: LR / 2, 8: LR / 4}
    assert seen == used


def test_plateau_needs_monitor_and_monitor_needs_plateau() -> None:
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs monitor="):
        sgd_trainer(lambda opt: [LRDecay(ReduceLROnPlateau(opt))], max_epochs=1)
    trainer, _, _ = sgd_trainer([], max_epochs=1)
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs monitor="):
        trainer.add_callback(LRDecay(lambda opt: ReduceLROnPlateau(opt)))
    with pytest.raises(ValueError, match="monitor= is for ReduceLROnPlateau; StepLR steps by count"):
        trainer.add_callback(LRDecay(lambda opt: StepLR(opt, 2), monitor="val/loss"))
    assert trainer.callbacks == ()


# ---------------------------------------------------------------------------------------------- parameter groups
class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.grid = nn.Linear(3, 4)
        self.decoder = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.grid(x)))


def field_trainer(optimizer_of: Callable[[nn.Module], torch.optim.Optimizer], decay: LRDecay, **kw: Any):
    model = Field()
    optimizer = optimizer_of(model)
    trainer = make_trainer(ITEMS, BATCH, 2, model=model, optimizer=optimizer, callbacks=[decay], **kw)
    return trainer, optimizer


def test_named_groups_publish_lr_per_name_and_keep_their_ratio() -> None:
    base = 0.01
    trainer, optimizer = field_trainer(
        lambda m: torch.optim.SGD(param_groups(m, {m.grid: {"lr_scale": 10}}, lr=base), lr=base),
        LRDecay(milestones=[0.5]),  # 8 iterations: decay from 5
    )
    log = LRLog(trainer, keys=("lr/grid", "lr/rest"))
    trainer.train()
    grid_lr = base * 10.0
    assert [g["name"] for g in optimizer.param_groups] == ["grid", "rest"]
    for i in range(1, 9):
        factor = 1.0 if i <= 4 else G
        assert log.used[i] == [grid_lr * factor, base * factor], i
        assert log.published[i] == log.used[i]
        assert math.isclose(log.used[i][0] / log.used[i][1], 10.0, rel_tol=1e-12)
    assert "lr" not in trainer.state.metrics


def test_unnamed_groups_publish_lr_per_index_with_a_wrapped_scheduler() -> None:
    def optimizer_of(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD([{"params": m.grid.parameters()}, {"params": m.decoder.parameters(), "lr": 0.5}], lr=LR)

    trainer, _ = field_trainer(optimizer_of, LRDecay(lambda opt: ExponentialLR(opt, gamma=0.5)))
    log = LRLog(trainer, keys=("lr/0", "lr/1"))
    trainer.train()
    raw = raw_lrs(lambda opt: ExponentialLR(opt, gamma=0.5), 8, lrs=(LR, 0.5))
    for i in range(1, 9):
        assert log.used[i] == [LR * 0.5 ** (i - 1), 0.5 * 0.5 ** (i - 1)] == [raw[0][i - 1], raw[1][i - 1]]
        assert log.published[i] == log.used[i]
    assert sorted(k for k in trainer.state.metrics if k.startswith("lr")) == ["lr/0", "lr/1"]


def test_mixed_named_and_unnamed_groups() -> None:
    def with_lr(m: nn.Module) -> torch.optim.Optimizer:
        groups = [{"params": m.grid.parameters(), "name": "grid"}, {"params": m.decoder.parameters()}]
        return torch.optim.SGD(groups, lr=LR)

    trainer, _ = field_trainer(with_lr, LRDecay(milestones=[0.5], gamma=0.5))
    log = LRLog(trainer, keys=("lr/grid", "lr/1"))
    trainer.train()
    assert [log.published[i] for i in range(1, 9)] == [[LR, LR]] * 4 + [[LR / 2, LR / 2]] * 4


# ---------------------------------------------------------------------------------------------- resume
N_EPOCHS, PER_EPOCH = 4, 4
N = N_EPOCHS * PER_EPOCH


def resume_decay(mode: str, optimizer: torch.optim.Optimizer) -> LRDecay:
    if mode == "milestones":
        return LRDecay(milestones=[0.25, 0.5, 0.9], warmup=5, warmup_start=0.1)  # 4, 8, round(14.4) = 14
    if mode == "epoch-milestones":
        return LRDecay(interval="epoch", milestones=[0.5, 0.75], warmup="2ep", warmup_start=0.25)
    if mode == "steplr":
        return LRDecay(StepLR(optimizer, step_size=3, gamma=0.5), warmup=5, warmup_start=0.1)
    if mode == "cosine":
        return LRDecay(lambda opt: CosineAnnealingLR(opt, T_max=N), warmup="5it")
    if mode == "epoch-steplr":
        return LRDecay(lambda opt: StepLR(opt, 1, gamma=0.5), interval="epoch", warmup="3ep", warmup_start=0.5)
    raise AssertionError(mode)


def resume_run(mode: str, *, init_seed: int = 0, state: dict[str, Any] | None = None, early: bool = False):
    """A fresh model (momentum SGD, so the optimizer's state matters), trainer and LRDecay; ``state`` is a saved
    checkpoint loaded into all four (the LRDecay's before the trainer exists when ``early``)."""
    model = make_model(init_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    decay = resume_decay(mode, optimizer)
    if state is not None and early:
        decay.load_state_dict(copy.deepcopy(state["decay"]))
    trainer = make_trainer(ITEMS, BATCH, N_EPOCHS, model=model, optimizer=optimizer, callbacks=[decay])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        trainer.load_state_dict(state["trainer"])
        if not early:
            decay.load_state_dict(copy.deepcopy(state["decay"]))
    return model, optimizer, trainer, decay, LRLog(trainer)


def checkpoint(model, optimizer, trainer, decay) -> dict[str, Any]:
    return copy.deepcopy(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "trainer": trainer.state_dict(),
            "decay": decay.state_dict(),
        }
    )


@pytest.mark.parametrize("mode", ["milestones", "epoch-milestones", "steplr", "cosine", "epoch-steplr"])
@pytest.mark.parametrize("k", [3, 6, 8], ids=["mid-epoch-in-warmup", "mid-epoch", "epoch-boundary"])
def test_resume_is_exact(mode: str, k: int) -> None:
    model_a, _, trainer_a, _, log_a = resume_run(mode)
    trainer_a.train()
    assert sorted(log_a.used) == list(range(1, N + 1))
    assert len(set(log_a.lrs())) >= 4  # the schedule really moves

    model_b, optimizer_b, trainer_b, decay_b, log_b = resume_run(mode)
    for _ in range(k):
        assert trainer_b.iterate()
    assert trainer_b.state.iteration == k
    saved = checkpoint(model_b, optimizer_b, trainer_b, decay_b)
    if mode in ("milestones", "epoch-milestones"):
        assert saved["decay"] == {}
    else:
        assert set(saved["decay"]) == {"scheduler", "base"}
        steps = k // PER_EPOCH if mode.startswith("epoch") else k  # the scheduler steps it has taken
        assert saved["decay"]["scheduler"]["last_epoch"] == steps

    # a fresh model with other weights: everything must come from the checkpoint
    model_c, _, trainer_c, _, log_c = resume_run(mode, init_seed=1, state=saved)
    trainer_c.train()
    assert sorted(log_c.used) == list(range(k + 1, N + 1))
    assert {i: log_c.used[i] for i in log_c.used} == {i: log_a.used[i] for i in range(k + 1, N + 1)}
    assert {i: log_c.published[i] for i in log_c.published} == {i: log_a.published[i] for i in range(k + 1, N + 1)}
    assert {i: log_b.used[i] for i in log_b.used} == {i: log_a.used[i] for i in range(1, k + 1)}
    assert same_params(params_of(model_c), params_of(model_a))


def test_resume_lr_values_by_hand_for_milestones_with_warmup() -> None:
    _, _, trainer, _, log = resume_run("milestones")
    trainer.train()
    points = [4, 8, 14]
    expected = [LR * warm(i, 5, 0.1) * G ** decays_before(i, points) for i in range(1, N + 1)]
    for got, want in zip(log.lrs(), expected, strict=True):
        assert math.isclose(got, want, rel_tol=1e-12)


@pytest.mark.parametrize("mode", ["cosine", "steplr"])
def test_state_loaded_before_the_callback_is_added_applies_at_setup(mode: str) -> None:
    k = 6
    model_a, _, trainer_a, _, log_a = resume_run(mode)
    trainer_a.train()
    model_b, optimizer_b, trainer_b, decay_b, _ = resume_run(mode)
    for _ in range(k):
        trainer_b.iterate()
    saved = checkpoint(model_b, optimizer_b, trainer_b, decay_b)

    model_c, _, trainer_c, decay_c, log_c = resume_run(mode, init_seed=1, state=saved, early=True)
    assert decay_c.scheduler is not None
    assert decay_c.scheduler.last_epoch == k  # applied in setup, when the scheduler was built
    assert decay_c.state_dict() == saved["decay"]
    trainer_c.train()
    assert {i: log_c.used[i] for i in log_c.used} == {i: log_a.used[i] for i in range(k + 1, N + 1)}
    assert same_params(params_of(model_c), params_of(model_a))


def test_plateau_resume_is_exact() -> None:
    def build(init_seed: int = 0, state: dict[str, Any] | None = None):
        model = make_model(init_seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        decay = LRDecay(lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=1), monitor="val/loss")
        validator = Validator(fn=lambda t: {"loss": LOSSES[t.state.epoch - 1]}, every="1ep")
        trainer = make_trainer(ITEMS, 5, 8, model=model, optimizer=optimizer, callbacks=[validator, decay])
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            trainer.load_state_dict(state["trainer"])
            decay.load_state_dict(copy.deepcopy(state["decay"]))
            validator.load_state_dict(copy.deepcopy(state["validator"]))
        return model, optimizer, trainer, decay, validator, LRLog(trainer)

    model_a, _, trainer_a, _, _, log_a = build()
    trainer_a.train()
    assert log_a.lrs() == [LR] * 8 + [LR / 2] * 6 + [LR / 4] * 2
    model_b, optimizer_b, trainer_b, decay_b, validator_b, _ = build()
    for _ in range(6):  # 3 epochs of 2: the plateau has seen 1.0, 0.9, 0.95 (one bad epoch so far)
        trainer_b.iterate()
    saved = checkpoint(model_b, optimizer_b, trainer_b, decay_b)
    saved["validator"] = copy.deepcopy(validator_b.state_dict())
    assert saved["decay"]["scheduler"]["num_bad_epochs"] == 1
    model_c, _, trainer_c, _, _, log_c = build(init_seed=1, state=saved)
    trainer_c.train()
    assert {i: log_c.used[i] for i in log_c.used} == {i: log_a.used[i] for i in range(7, 17)}
    assert same_params(params_of(model_c), params_of(model_a))


def test_state_dict_errors() -> None:
    with pytest.raises(ValueError, match="milestone mode has no state"):
        LRDecay().load_state_dict({"scheduler": {}, "base": [0.1]})
    LRDecay().load_state_dict({})  # nothing to restore: accepted
    trainer, _, _ = sgd_trainer([LRDecay(lambda opt: StepLR(opt, 2))], max_epochs=1)
    decay = trainer.callbacks[0]
    with pytest.raises(ValueError, match="the saved state has 2 parameter groups, the optimizer 1"):
        decay.load_state_dict({"scheduler": decay.scheduler.state_dict(), "base": [0.1, 0.2]})
    with pytest.raises(ValueError, match="not an LRDecay state dict"):
        decay.load_state_dict({"base": [0.1]})


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("milestones", [[0.0, 0.5], [0.5, 1.5], [-0.1], [0.5, "0.75"], "0.5", [True], 0.5])
def test_milestones_outside_zero_one_are_refused(milestones) -> None:
    with pytest.raises(ValueError, match=r"milestones must be a list of fractions of the run in \(0, 1\]"):
        LRDecay(milestones=milestones)


def test_milestone_edge_values_are_accepted() -> None:
    assert LRDecay(milestones=[1.0]).milestones == (1.0,)
    assert LRDecay(milestones=[0.25, 0.25, 1]).milestones == (0.25, 0.25, 1.0)
    assert LRDecay().milestones == (0.5, 0.75, 0.9)
    assert LRDecay().gamma == G


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="milestones must be in increasing order"):
        LRDecay(milestones=[0.75, 0.5])
    with pytest.raises(ValueError, match="either a torch scheduler or milestones=, not both"):
        LRDecay(lambda opt: StepLR(opt, 2), milestones=[0.5])
    with pytest.raises(ValueError, match="interval must be 'iteration' or 'epoch', got 'step'"):
        LRDecay(interval="step")
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        LRDecay(gamma=0)
    with pytest.raises(ValueError, match=r"gamma must be a finite number > 0 \(the decay factor\), got inf"):
        LRDecay(gamma=math.inf)
    with pytest.raises(ValueError, match="warmup_start must be a fraction in"):
        LRDecay(warmup=2, warmup_start=1.5)
    with pytest.raises(ValueError, match="monitor must be a metric name"):
        LRDecay(lambda opt: ReduceLROnPlateau(opt), monitor="")
    with pytest.raises(TypeError, match=r"scheduler must be a torch\.optim\.lr_scheduler instance or a factory"):
        LRDecay(5)


@pytest.mark.parametrize(
    ("warmup", "interval"),
    [
        ("5ep", "iteration"),
        ("5it", "epoch"),
        ("five", "iteration"),
        ("ep", "epoch"),
        (-1, "iteration"),
        (True, "epoch"),
    ],
)
def test_bad_warmup_is_refused(warmup, interval) -> None:
    with pytest.raises(ValueError, match="warmup"):
        LRDecay(warmup=warmup, interval=interval)


def test_bad_warmup_string_message_names_the_unit() -> None:
    with pytest.raises(ValueError, match=r"warmup='5ep': with interval='iteration' write an int or '<N>it'"):
        LRDecay(warmup="5ep")


def test_scheduler_on_another_optimizer_is_refused_at_construction_and_add() -> None:
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match="built on another optimizer than the trainer's"):
        sgd_trainer([LRDecay(StepLR(other, 2))], max_epochs=1)
    trainer, _, _ = sgd_trainer([], max_epochs=1)
    with pytest.raises(ValueError, match="built on another optimizer than the trainer's"):
        trainer.add_callback(LRDecay(lambda opt: StepLR(other, 2)))
    assert trainer.callbacks == ()


def test_factory_returning_a_non_scheduler_is_refused() -> None:
    trainer, _, _ = sgd_trainer([], max_epochs=1)
    with pytest.raises(TypeError, match="returned SGD"):
        trainer.add_callback(LRDecay(lambda opt: opt))
    with pytest.raises(TypeError, match="returned NoneType"):
        trainer.add_callback(LRDecay(lambda opt: None))
    assert trainer.callbacks == ()
