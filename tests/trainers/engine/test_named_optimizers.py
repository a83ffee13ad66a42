"""Named optimizers and a trainer that orders its own updates (``optimization_step``), with real torch training:
the default step over two optimizers against the same loop by hand, the ``step`` event per optimizer, accumulation
through ``backward``/``optimizer_step``, per-optimizer skips, GradScaler, GradientGuard and LRDecay by name, and
checkpoints that hold every optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

from callbacks import GradientGuard, LRDecay
from lifecycle import Callback, Status
from tests.support import Recorder, make_trainer, params_of, same_params
from trainers import BaseTrainer
from trainers.checkpoint.format import CheckpointError, load_checkpoint


class Two(nn.Module):
    """Two parts that an optimizer each: ``encoder`` and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # type: ignore[no-any-return]


def _data(items: int = 32) -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(items, 4, generator=generator)
    return TensorDataset(x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(dim=1, keepdim=True))


def _optimizers() -> dict[str, Any]:
    return {
        "encoder": lambda p: torch.optim.Adam(p.encoder.parameters(), lr=0.01),
        "head": lambda p: torch.optim.SGD(p.head.parameters(), lr=0.05, momentum=0.9),
    }


def _mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return functional.mse_loss(model(x), y)


class Alternating(BaseTrainer):
    """A GAN-shaped update: the head's loss into the head only, its step; then the encoder's loss into the encoder
    only (through the stepped head), its step."""

    def optimization_step(self, batch: Any) -> dict[str, Any]:
        x, y = batch
        head_loss = functional.mse_loss(self.pipeline.head(self.pipeline.encoder(x).detach()), y)
        self.backward(head_loss, optimizer="head")
        self.optimizer_step("head")
        encoder_loss = functional.mse_loss(self.pipeline(x), y)
        self.backward(encoder_loss, optimizer="encoder")
        self.optimizer_step("encoder")
        return {"loss": encoder_loss.detach(), "head_loss": head_loss.detach()}


def _alternating(**kwargs: Any) -> Alternating:
    kwargs.setdefault("max_epochs", 2)
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("optimizer", _optimizers())
    return Alternating(Two(), _data(kwargs.pop("items", 32)), seed=0, device="cpu", **kwargs)


def _batches(trainer: BaseTrainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.on("pre_step")(lambda t, batch, **_: seen.append((batch[0].clone(), batch[1].clone())))
    return seen


# ---------------------------------------------------------------------------------------------- the default step
def test_two_named_optimizers_step_in_order_like_the_loop_by_hand() -> None:
    trainer = make_trainer(model=Two(), dataset=_data(), batch_size=8, max_epochs=2, optimizer=_optimizers())
    seen = _batches(trainer)
    recorder = trainer.add_callback(Recorder())
    assert trainer.train() is Status.COMPLETED
    assert list(trainer.optimizers) == ["encoder", "head"]
    assert isinstance(trainer.optimizers["head"], torch.optim.SGD)

    model = Two()
    encoder = torch.optim.Adam(model.encoder.parameters(), lr=0.01)
    head = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    for x, y in seen:
        encoder.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        functional.mse_loss(model(x), y).backward()
        encoder.step()
        head.step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(trainer.pipeline), params_of(model), strict=True))
    steps = [p["optimizer"] for event, p in recorder.payloads if event == "step"]
    assert steps == ["encoder", "head"] * 8
    assert recorder.names()[2:6] == ["pre_step", "step", "step", "post_step"]


def test_a_lone_optimizer_is_named_optimizer_and_named_ones_have_no_single_attribute() -> None:
    lone = make_trainer()
    assert list(lone.optimizers) == ["optimizer"]
    assert lone.optimizers["optimizer"] is lone.optimizer
    named = make_trainer(model=Two(), dataset=_data(), batch_size=8, optimizer=_optimizers())
    with pytest.raises(AttributeError, match=r"named optimizers \('encoder', 'head'\): use trainer.optimizers\[name\]"):
        named.optimizer  # noqa: B018


def test_optimizers_that_share_a_parameter_are_refused_naming_both() -> None:
    both = {
        "a": lambda p: torch.optim.SGD(p.parameters(), lr=0.1),
        "b": lambda p: torch.optim.SGD(p.head.parameters(), lr=0.1),
    }
    with pytest.raises(ValueError, match=r"optimizers 'a' and 'b' both hold head.weight"):
        make_trainer(model=Two(), dataset=_data(), batch_size=8, optimizer=both)
    with pytest.raises(TypeError, match=r"optimizer 'a' must be a torch.optim.Optimizer or a factory"):
        make_trainer(model=Two(), dataset=_data(), batch_size=8, optimizer={"a": 3})


# ---------------------------------------------------------------------------------------------- optimization_step
@pytest.mark.parametrize("accumulate", [1, 3])
def test_optimization_step_matches_the_update_by_hand(accumulate: int) -> None:
    """32 items in batches of 8: windows of 3 and 1 with accumulate=3 (the epoch's last window is shorter)."""
    trainer = _alternating(accumulate=accumulate)
    seen = _batches(trainer)
    recorder = trainer.add_callback(Recorder())
    assert trainer.train() is Status.COMPLETED
    reference = _by_hand(epochs=[seen[:4], seen[4:]], window=accumulate)
    assert same_params(params_of(trainer.pipeline), params_of(reference))
    steps = [
        (row[3], p["optimizer"])
        for row, (event, p) in zip(recorder.log, recorder.payloads, strict=True)
        if event == "step"
    ]
    ends = [4, 8] if accumulate == 1 else [3, 4, 7, 8]
    expected = [(i, name) for i in (range(1, 9) if accumulate == 1 else ends) for name in ("head", "encoder")]
    assert steps == expected
    assert trainer.state.optimizer_step == (8 if accumulate == 1 else 4)


def _by_hand(epochs: list[list[tuple[torch.Tensor, torch.Tensor]]], window: int) -> Two:
    """The alternating update in plain torch, accumulating over ``window`` micro-batches (windows restart each
    epoch, as the trainer's do)."""
    model = Two()
    head = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    encoder = torch.optim.Adam(model.encoder.parameters(), lr=0.01)
    for batches in epochs:
        for start in range(0, len(batches), window):
            chunk = batches[start : start + window]
            head.zero_grad(set_to_none=True)
            encoder.zero_grad(set_to_none=True)
            for i, (x, y) in enumerate(chunk):
                loss = functional.mse_loss(model.head(model.encoder(x).detach()), y) / len(chunk)
                loss.backward(inputs=list(model.head.parameters()))
                if i == len(chunk) - 1:
                    head.step()
                loss = functional.mse_loss(model(x), y) / len(chunk)
                loss.backward(inputs=list(model.encoder.parameters()))
            encoder.step()
    return model


def test_skipping_one_optimizers_step_leaves_only_its_parameters_and_state_unchanged() -> None:
    class SkipHead(Callback):
        def step(self, trainer: BaseTrainer, *, optimizer: str, **payload: Any) -> None:
            if optimizer == "head" and trainer.state.iteration == 2:
                trainer.skip_optimizer_step()

    trainer = _alternating(callbacks=[SkipHead()])
    trainer.iterate()  # pre_training, pre_epoch and step 1
    head = [p.clone() for p in trainer.pipeline.head.parameters()]
    head_state = {k: v["momentum_buffer"].clone() for k, v in trainer.optimizers["head"].state.items()}
    encoder = [p.clone() for p in trainer.pipeline.encoder.parameters()]
    trainer.iterate()  # step 2: the head's update withheld
    assert trainer.state.iteration == 2
    assert all(torch.equal(a, b) for a, b in zip(head, trainer.pipeline.head.parameters(), strict=True))
    after = trainer.optimizers["head"].state
    assert all(torch.equal(v, after[k]["momentum_buffer"]) for k, v in head_state.items())
    assert not any(torch.equal(a, b) for a, b in zip(encoder, trainer.pipeline.encoder.parameters(), strict=True))


def test_helpers_refuse_unknown_names_and_a_second_step_of_one_optimizer() -> None:
    class Twice(Alternating):
        def optimization_step(self, batch: Any) -> dict[str, Any]:
            loss = _mse(self.pipeline, batch)
            self.backward(loss)
            self.optimizer_step("head")
            self.optimizer_step("head")
            return {"loss": loss}

    twice = Twice(Two(), _data(), max_epochs=1, batch_size=8, device="cpu", optimizer=_optimizers())
    with pytest.raises(RuntimeError, match=r"optimizer 'head' already stepped at iteration 1"):
        twice.train()

    class Unknown(Alternating):
        def optimization_step(self, batch: Any) -> dict[str, Any]:
            loss = _mse(self.pipeline, batch)
            self.backward(loss, optimizer="decoder")
            return {"loss": loss}

    unknown = Unknown(Two(), _data(), max_epochs=1, batch_size=8, device="cpu", optimizer=_optimizers())
    with pytest.raises(
        ValueError, match=r"no optimizer named 'decoder'; this trainer's optimizers are 'encoder', 'head'"
    ):
        unknown.train()
    with pytest.raises(ValueError, match=r"compile= compiles compute_loss, which Alternating.optimization_step"):
        _alternating(compile=True)


def test_16_mixed_with_two_optimizers_skips_only_the_one_whose_gradients_overflow() -> None:
    """One GradScaler for both: once the scale has settled (its first steps overflow in float16), an inf in the
    head's gradients skips the head's update (its own inf check), the encoder steps, and the scale is halved once
    by the window's single update()."""

    class Poison(Callback):
        armed = False

        def step(self, trainer: BaseTrainer, *, optimizer: str, **payload: Any) -> None:
            if optimizer == "head" and self.armed:
                trainer.pipeline.head.weight.grad[0, 0] = float("inf")

    poison = Poison()
    trainer = _alternating(precision="16-mixed", callbacks=[poison], max_epochs=4)
    assert trainer.scaler is not None
    scales = []
    for _ in range(12):
        trainer.iterate()
        scales.append(trainer.scaler.get_scale())
    assert scales[0] < 65536.0
    assert scales[-1] == scales[-2]
    encoder = [p.clone() for p in trainer.pipeline.encoder.parameters()]
    head = [p.clone() for p in trainer.pipeline.head.parameters()]
    poison.armed = True
    trainer.iterate()
    poison.armed = False
    assert all(torch.equal(a, b) for a, b in zip(head, trainer.pipeline.head.parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(encoder, trainer.pipeline.encoder.parameters(), strict=True))
    assert trainer.scaler.get_scale() == scales[-1] / 2
    assert trainer.train() is Status.COMPLETED


# ---------------------------------------------------------------------------------------------- callbacks by name
def test_lr_decay_targets_one_optimizer_by_name() -> None:
    decay = LRDecay(optimizer="head", milestones=[0.5], gamma=0.1)
    assert decay.state_key == "LRDecay.head"
    trainer = _alternating(callbacks=[decay])
    assert trainer.train() is Status.COMPLETED
    assert trainer.optimizers["head"].param_groups[0]["lr"] == pytest.approx(0.005)
    assert trainer.optimizers["encoder"].param_groups[0]["lr"] == 0.01
    assert trainer.state.metrics["lr/head"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match=r"optimizer= must name one of the trainer's optimizers \('encoder', 'head'\)"):
        _alternating(callbacks=[LRDecay()])


def test_gradient_guard_clips_each_optimizers_parameters_on_its_own_step() -> None:
    norms: dict[str, float] = {}

    class Measure(Callback):
        priority = -100  # after the guard

        def step(self, trainer: BaseTrainer, *, optimizer: str, **payload: Any) -> None:
            part = getattr(trainer.pipeline, optimizer)
            norms[optimizer] = float(torch.nn.utils.get_total_norm([p.grad for p in part.parameters()]))

    trainer = _alternating(callbacks=[GradientGuard(clip_norm=0.01, every="1it"), Measure()], max_epochs=1)
    trainer.iterate()
    trainer.iterate()
    assert norms == pytest.approx({"head": 0.01, "encoder": 0.01}, rel=1e-4)
    assert set(trainer.state.metrics) >= {"grad_norm/head", "grad_norm/encoder"}
    assert trainer.state.metrics["grad_norm/head"] > 0.01


# ---------------------------------------------------------------------------------------------- checkpoints
def test_every_optimizer_is_in_the_checkpoint_and_resume_is_exact(tmp_path: Path) -> None:
    straight = _alternating(max_epochs=2)
    straight.train()
    first = _alternating(max_epochs=2)
    for _ in range(6):  # pre_training + 5 steps: mid-epoch 2
        first.iterate()
    path = first.save_checkpoint(tmp_path / "mid.pt")
    saved = load_checkpoint(path)
    assert saved["stepbus"]["optimizers"] == ["encoder", "head"]
    assert sorted(saved["optimizer"]) == ["encoder", "head"]
    resumed = _alternating(max_epochs=2)
    resumed.restore(path)
    assert resumed.train() is Status.COMPLETED
    assert same_params(params_of(straight.pipeline), params_of(resumed.pipeline))
    for name in ("encoder", "head"):
        theirs = straight.optimizers[name].state_dict()["state"]
        ours = resumed.optimizers[name].state_dict()["state"]
        assert all(torch.equal(v, ours[k][s]) for k in theirs for s, v in theirs[k].items())


def test_a_checkpoint_with_other_optimizers_is_refused_naming_both_and_changes_nothing(tmp_path: Path) -> None:
    lone = make_trainer(model=Two(), dataset=_data(), batch_size=8, max_epochs=1)
    lone.iterate()
    path = lone.save_checkpoint(tmp_path / "lone.pt")
    named = _alternating()
    before = [p.clone() for p in params_of(named.pipeline)]
    with pytest.raises(
        CheckpointError, match=r"holds the optimizers \['optimizer'\], this trainer has \['encoder', 'head'\]"
    ):
        named.restore(path)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(named.pipeline), strict=True))
