"""The open step with real torch training: mixed precision (autocast, the GradScaler and its checkpoint), gradient
accumulation (equivalence with the large batch, event order, windows and resumable points, stops, LR schedules on
optimizer steps, exact resume) and torch.compile (checkpoint keys, resume compiled <-> plain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import Checkpointer, GradientGuard, LRDecay
from lifecycle import Callback, Status
from tests.support import Recorder, make_trainer, params_of, same_params
from trainers import BaseTrainer
from trainers.checkpoint.format import CheckpointError, load_checkpoint


def _data(items: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(items, 4, generator=generator)
    return TensorDataset(x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(dim=1, keepdim=True))


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def _trainer(items: int = 136, batch_size: int = 8, **kwargs: Any) -> BaseTrainer:
    """The shared factory with a small MLP on 4 features and SGD (lr 0.05); 2 epochs unless ``max_epochs`` says."""
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.05))
    return make_trainer(batch_size=batch_size, model=_model(), dataset=_data(items), **kwargs)


# ---------------------------------------------------------------------------------------------- accumulation
def test_accumulate_4_of_batch_8_is_batch_32_including_a_shorter_last_window() -> None:
    """136 items: batch 32 gives 5 steps an epoch (the last of 8 items); batch 8 x 4 gives windows of 4, 4, 4, 4
    and 1 micro-batches, each loss divided by its window's length: the same gradients, step for step."""
    big, small = _trainer(batch_size=32), _trainer(batch_size=8, accumulate=4)
    assert (big.train(), small.train()) == (Status.COMPLETED, Status.COMPLETED)
    assert (small.state.iteration, small.state.optimizer_step) == (34, 10)
    assert (big.state.iteration, big.state.optimizer_step) == (10, 10)
    for a, b in zip(params_of(big.pipeline), params_of(small.pipeline), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_step_fires_once_per_window_with_complete_gradients_and_pre_post_step_per_iteration() -> None:
    grads: list[tuple[int, int]] = []

    class Grads(Callback):
        def step(self, trainer: BaseTrainer, **payload: Any) -> None:
            grads.append((trainer.state.iteration, trainer.state.optimizer_step))

    recorder = Recorder()
    trainer = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=1, callbacks=[recorder, Grads()])
    trainer.train()
    names = recorder.names()
    assert names.count("pre_step") == names.count("post_step") == 7
    # windows [1-3], [4-6], [7]: the step event at their last iteration, before the optimizer step is counted
    assert grads == [(3, 0), (6, 1), (7, 2)]
    steps = [row[3] for row in recorder.log if row[0] == "step"]
    assert steps == [3, 6, 7]
    assert trainer.state.optimizer_step == 3


def test_a_checkpoint_is_refused_inside_a_window_and_a_requested_one_waits_for_its_end(tmp_path: Path) -> None:
    class Ask(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            if trainer.state.iteration == 4:
                with pytest.raises(RuntimeError, match=r"inside an accumulation window \(accumulate=3"):
                    trainer.save_checkpoint(tmp_path / "mid.pt")
                trainer.request_checkpoint()

    checkpointer = Checkpointer(dir=tmp_path / "ck", every=None, at_end=False)
    trainer = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=1, callbacks=[Ask(), checkpointer])
    trainer.train()
    assert not (tmp_path / "mid.pt").exists()
    assert [p.name for p in sorted((tmp_path / "ck").glob("step-*.pt"))] == ["step-00000006.pt"]  # [4-6] ended
    assert load_checkpoint(tmp_path / "ck" / "step-00000006.pt")["stepbus"]["reason"] == "request"


def test_a_step_schedule_saves_at_window_ends_only(tmp_path: Path) -> None:
    checkpointer = Checkpointer(dir=tmp_path, every="1it", keep_last=None, at_end=False)
    _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2, callbacks=[checkpointer]).train()
    iterations = sorted(int(p.name[5:13]) for p in tmp_path.glob("step-*.pt"))
    assert iterations == [3, 6, 7, 10, 13, 14]


def test_stop_inside_a_window_lands_at_its_end() -> None:
    class StopAt5(Callback):
        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            if trainer.state.iteration == 5:
                trainer.stop()

    trainer = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2, callbacks=[StopAt5()])
    assert trainer.train() is Status.STOPPED
    assert (trainer.state.iteration, trainer.state.optimizer_step) == (6, 2)


def test_resume_at_a_window_end_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    straight = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2)
    straight.train()
    first = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2)
    for _ in range(6):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at6.pt")
    second = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2)
    assert second.restore(path) == path
    assert second.state.optimizer_step == 2
    second.train()
    assert second.state.optimizer_step == straight.state.optimizer_step == 6
    assert same_params(params_of(second.pipeline), params_of(straight.pipeline))


def test_restoring_into_a_misaligned_accumulation_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    first = _trainer(items=14, batch_size=2, accumulate=3, max_epochs=2)
    for _ in range(6):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at6.pt")
    other = _trainer(items=14, batch_size=2, accumulate=4, max_epochs=2)
    before = params_of(other.pipeline)
    with pytest.raises(CheckpointError, match=r"inside an accumulation window of this trainer \(accumulate=4\)"):
        other.restore(path)
    assert same_params(params_of(other.pipeline), before)
    assert other.state.iteration == 0


def test_lr_milestones_count_optimizer_steps() -> None:
    lrs: list[float] = []
    decay = LRDecay(milestones=[0.5], gamma=0.1)
    trainer = _trainer(items=16, batch_size=2, accumulate=2, max_epochs=2, callbacks=[decay])  # 8 optimizer steps
    trainer.on("step")(lambda t, **_: lrs.append(t.optimizer.param_groups[0]["lr"]))
    trainer.train()
    assert lrs == pytest.approx([0.05] * 4 + [0.005] * 4)


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_a_bad_accumulate_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="accumulate"):
        _trainer(accumulate=value)


# ---------------------------------------------------------------------------------------------- precision
def test_bf16_mixed_computes_the_loss_in_bf16_and_converges() -> None:
    dtypes: list[torch.dtype] = []

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        prediction = model(batch[0])
        dtypes.append(prediction.dtype)
        return nn.functional.mse_loss(prediction.float(), batch[1])

    trainer = _trainer(loss_fn=loss, precision="bf16-mixed", max_epochs=6)
    losses: list[float] = []
    trainer.on("post_step")(lambda t, *, outputs, **_: losses.append(float(outputs["loss"].detach())))
    trainer.train()
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.pipeline.parameters())  # weights stay float32
    assert sum(losses[-17:]) / 17 < 0.25 * sum(losses[:17]) / 17  # the last epoch's mean loss vs the first's


def test_bf16_mixed_trains_the_demo_as_well_as_full_precision() -> None:
    """The demo app (an MLP fitting a 2-D function) for 3 epochs: under bf16 autocast its held-out error falls from
    0.37 to the full-precision run's level (both about 0.0075 here; within 1.5x of each other)."""
    from io import StringIO

    from rich.console import Console

    from trainers.apps.demo import demo_trainer

    errors = {}
    for precision in ("32", "bf16-mixed"):
        trainer = demo_trainer(max_epochs=3, precision=precision, console=Console(file=StringIO()))
        trainer.train()
        with torch.no_grad():
            errors[precision] = float(trainer.validate()["mse"])
    assert errors["bf16-mixed"] < 0.02
    assert errors["bf16-mixed"] < 1.5 * errors["32"]
    assert errors["32"] < 1.5 * errors["bf16-mixed"]


def test_a_precision_the_device_cannot_run_or_a_wrong_name_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of '32', 'bf16-mixed', '16-mixed'; got 'fp16'"):
        _trainer(precision="fp16")


def test_16_mixed_scales_the_loss_and_a_planted_inf_skips_exactly_that_step(tmp_path: Path) -> None:
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        value = nn.functional.mse_loss(model(batch[0]).float(), batch[1])
        return value * float("inf") if trainer.state.iteration == 12 else value

    trainer = _trainer(loss_fn=loss, precision="16-mixed", max_epochs=1)
    scaler = trainer.scaler
    assert scaler is not None
    seen: dict[int, tuple[list[torch.Tensor], float]] = {}
    trainer.on("pre_step")(
        lambda t, **_: seen.__setitem__(t.state.iteration, (params_of(t.pipeline), scaler.get_scale()))
    )
    for _ in range(13):
        trainer.iterate()
    # the first steps overflow float16 at the initial 65536 scale and are skipped while it halves; by step 11 the
    # scale has settled, and step 11 is a normal update
    assert seen[11][1] == seen[12][1] < 65536.0
    assert not same_params(seen[11][0], seen[12][0])
    assert same_params(seen[12][0], seen[13][0])  # the inf step 12 changed no weight
    assert seen[13][1] == seen[12][1] / 2  # and halved the scale
    scale_4 = seen[13][1]
    path = trainer.save_checkpoint(tmp_path / "fp16.pt")
    saved = load_checkpoint(path)["tracked"]["grad_scaler"]
    assert saved["scale"] == scale_4
    resumed = _trainer(loss_fn=loss, precision="16-mixed", max_epochs=1)
    resumed.restore(path)
    assert resumed.scaler is not None
    assert resumed.scaler.state_dict() == scaler.state_dict()


def test_16_mixed_resume_is_bit_identical(tmp_path: Path) -> None:
    straight = _trainer(precision="16-mixed")
    straight.train()
    first = _trainer(precision="16-mixed")
    for _ in range(20):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at20.pt")
    second = _trainer(precision="16-mixed")
    second.restore(path)
    second.train()
    assert same_params(params_of(second.pipeline), params_of(straight.pipeline))
    assert second.scaler is not None
    assert straight.scaler is not None
    assert second.scaler.state_dict() == straight.scaler.state_dict()


def test_gradient_guard_clips_the_unscaled_gradients_under_16_mixed() -> None:
    published: list[float] = []
    clipped: list[float] = []

    def after_the_guard(trainer: BaseTrainer, **_: Any) -> None:
        published.append(trainer.state.metrics["grad_norm"])
        grads = [p.grad for p in trainer.pipeline.parameters() if p.grad is not None]
        clipped.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    guard = GradientGuard(clip_norm=1e-3, every="1it")
    trainer = _trainer(precision="16-mixed", max_epochs=1, items=64, callbacks=[guard])
    trainer.on("step", priority=-100)(after_the_guard)  # after the guard (priority STATE)
    trainer.train()
    finite = [i for i, norm in enumerate(published) if norm != float("inf")]
    assert len(finite) >= 4  # the scaler's first steps may overflow and be skipped; the rest are finite
    # the published norm is the true one, not multiplied by the 65536 loss scale, and the clip applied to it
    assert all(1e-2 < published[i] < 1e3 for i in finite)
    assert all(clipped[i] <= 1e-3 * 1.001 for i in finite)


# ---------------------------------------------------------------------------------------------- compile
def test_compiled_and_plain_runs_share_checkpoint_keys_and_resume_each_other(tmp_path: Path) -> None:
    options = {"backend": "aot_eager"}
    plain = _trainer(max_epochs=2)
    plain.train()
    compiled = _trainer(max_epochs=1, compile=options)
    compiled.train()
    path = compiled.save_checkpoint(tmp_path / "compiled.pt")
    keys = list(load_checkpoint(path)["model"])
    assert keys == list(plain.pipeline.state_dict())
    assert not [key for key in keys if "_orig_mod" in key]
    into_plain = _trainer(max_epochs=2)
    into_plain.restore(path)
    into_plain.train()
    assert same_params(params_of(into_plain.pipeline), params_of(plain.pipeline))

    half = _trainer(max_epochs=1)
    half.train()
    into_compiled = _trainer(max_epochs=2, compile=options)
    into_compiled.restore(half.save_checkpoint(tmp_path / "plain.pt"))
    into_compiled.train()
    assert same_params(params_of(into_compiled.pipeline), params_of(plain.pipeline))


def test_inductor_compiles_the_loss_on_the_cpu_and_trains() -> None:
    trainer = _trainer(max_epochs=1, items=32, compile=True)
    before = params_of(trainer.pipeline)
    trainer.train()
    assert not same_params(before, params_of(trainer.pipeline))
    assert list(trainer.pipeline.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_bad_compile_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"compile options \['fullgarph'\] are not torch.compile arguments"):
        _trainer(compile={"fullgarph": True})
    with pytest.raises(TypeError, match="compile must be True, False or a mapping"):
        _trainer(compile="yes")
