"""A resume refuses a checkpoint whose optimizer or GradScaler state does not fit the trainer, before anything
changes, and ``fresh_optimizer=True`` (``stepbus train --resume ... --fresh-optimizer``) continues such a run with
the optimizers as built.

Everything is real: small trainers train on the CPU, checkpoints are written to ``tmp_path`` and read back, and the
command line runs in subprocesses. The messages are asserted word for word.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import EMA, LRDecay
from lifecycle import Status
from tests.support import make_model, make_trainer, mse
from trainers import BaseTrainer
from trainers.checkpoint.format import CheckpointError, load_checkpoint, write_checkpoint
from trainers.cli import main

ROOT = Path(__file__).resolve().parents[3]
DEMO = str(ROOT / "trainers" / "apps" / "configs" / "demo.yaml")
STEPS = 6  # make_trainer: 6 items in batches of 2, 2 epochs
Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
FRESH = (
    "restore with fresh_optimizer=True (stepbus train --resume ... --fresh-optimizer) to keep the model, counters, "
    "callbacks and RNG and start the optimizers and the GradScaler anew with the configured hyper-parameters"
)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def adam(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.01)


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=0.01)


def two_groups(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.001}]
    return torch.optim.Adam(groups, lr=0.01)


def bias_first(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam([params[1], params[0]], lr=0.01)  # Linear's (bias, weight): same count, other shapes


def trained(optimizer: Factory, steps: int = 2, **kwargs: Any) -> BaseTrainer:
    trainer = make_trainer(optimizer=optimizer, **kwargs)
    for _ in range(steps):
        trainer.iterate()
    return trainer


def saved(tmp_path: Path, name: str, optimizer: Factory, steps: int = 2, **kwargs: Any) -> Path:
    return trained(optimizer, steps, **kwargs).save_checkpoint(tmp_path / name)


def without_recorded_types(path: Path) -> Path:
    """The same checkpoint as a stepbus that did not record optimizer classes and shapes wrote it."""
    payload = load_checkpoint(path)
    del payload["stepbus"]["optimizer_types"], payload["stepbus"]["optimizer_groups"]
    return write_checkpoint(path.with_name(f"legacy-{path.name}"), payload)


def refusal(trainer: BaseTrainer, path: Path, **kwargs: Any) -> str:
    """The reason of the ``CheckpointError`` that ``trainer.restore(path)`` raises, checked to name ``path``."""
    with pytest.raises(CheckpointError) as info:
        trainer.restore(path, **kwargs)
    assert info.value.path == path
    assert str(info.value) == f"checkpoint {path}: {info.value.reason}"
    return info.value.reason


def clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clone(v) for v in value)
    return value


def same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` are equal containers with bit-identical tensors (a dict and an ``OrderedDict`` alike)."""
    kinds = tuple(dict if isinstance(x, dict) else type(x) for x in (a, b))
    assert kinds[0] is kinds[1], f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {a.dtype} {a.shape} != {b.dtype} {b.shape}"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------- another class
@pytest.mark.parametrize(
    ("source", "target", "theirs", "ours"),
    [(sgd, adam, "SGD", "Adam"), (adam, sgd, "Adam", "SGD"), (adam, adamw, "Adam", "AdamW")],
    ids=["sgd-to-adam", "adam-to-sgd", "adam-to-adamw"],
)
def test_another_optimizer_class_is_refused_naming_both_and_the_file(
    tmp_path: Path, source: Factory, target: Factory, theirs: str, ours: str
) -> None:
    path = saved(tmp_path, f"{theirs}.pt", source)
    assert load_checkpoint(path)["stepbus"]["optimizer_types"] == {
        "optimizer": {"SGD": "torch.optim.sgd.SGD", "Adam": "torch.optim.adam.Adam"}[theirs]
    }
    assert refusal(make_trainer(optimizer=target), path) == (
        f"optimizer 'optimizer' was {theirs} in the checkpoint, the trainer has {ours}: {theirs}'s state cannot "
        f"drive {ours}; build the trainer with {theirs} to resume it, or {FRESH}"
    )


def test_a_checkpoint_without_recorded_classes_is_judged_by_its_hyper_parameter_keys(tmp_path: Path) -> None:
    from_sgd = without_recorded_types(saved(tmp_path, "sgd.pt", sgd))
    from_adam = without_recorded_types(saved(tmp_path, "adam.pt", adam))
    from_adamw = without_recorded_types(saved(tmp_path, "adamw.pt", adamw))
    assert "optimizer_types" not in load_checkpoint(from_sgd)["stepbus"]
    assert refusal(make_trainer(optimizer=adam), from_sgd) == (
        "optimizer 'optimizer' in the checkpoint has the hyper-parameters of another optimizer than the trainer's "
        "Adam (those of SGD): its parameter groups lack amsgrad, betas, capturable, decoupled_weight_decay, eps and "
        "have dampening, momentum, nesterov, which Adam has not (this checkpoint does not record its optimizer's "
        f"class); build the trainer with the saved optimizer to resume it, or {FRESH}"
    )
    assert refusal(make_trainer(optimizer=sgd), from_adam) == (
        "optimizer 'optimizer' in the checkpoint has the hyper-parameters of another optimizer than the trainer's "
        "SGD (those of Adam): its parameter groups lack dampening, momentum, nesterov and have amsgrad, betas, "
        "capturable, decoupled_weight_decay, eps, which SGD has not (this checkpoint does not record its "
        f"optimizer's class); build the trainer with the saved optimizer to resume it, or {FRESH}"
    )
    # Adam and AdamW have the same keys: decoupled_weight_decay tells them apart
    assert refusal(make_trainer(optimizer=adamw), from_adam) == (
        "optimizer 'optimizer' in the checkpoint has decoupled_weight_decay=False (as Adam), the trainer's AdamW "
        "has decoupled_weight_decay=True: the weight decay would change its meaning; build the trainer with Adam "
        f"to resume it, or {FRESH}"
    )
    assert refusal(make_trainer(optimizer=adam), from_adamw) == (
        "optimizer 'optimizer' in the checkpoint has decoupled_weight_decay=True (as AdamW), the trainer's Adam "
        "has decoupled_weight_decay=False: the weight decay would change its meaning; build the trainer with AdamW "
        f"to resume it, or {FRESH}"
    )
    nadam = make_trainer(optimizer=lambda p: torch.optim.NAdam(p, lr=0.01, decoupled_weight_decay=True))
    from_nadam = without_recorded_types(saved(tmp_path, "nadam.pt", lambda p: torch.optim.NAdam(p, lr=0.01)))
    assert refusal(nadam, from_nadam) == (
        "optimizer 'optimizer' in the checkpoint has decoupled_weight_decay=False, the trainer's NAdam has "
        "decoupled_weight_decay=True: the weight decay would change its meaning; build the trainer with "
        f"decoupled_weight_decay=False to resume it, or {FRESH}"
    )
    # the same class still resumes, with the saved state
    resumed = make_trainer(optimizer=adam)
    assert resumed.restore(from_adam) == from_adam
    same(resumed.optimizer.state_dict(), load_checkpoint(from_adam)["optimizer"], "optimizer")


# ---------------------------------------------------------------------------------------------- parameter layout
def test_another_parameter_group_layout_is_refused(tmp_path: Path) -> None:
    grouped = saved(tmp_path, "two-groups.pt", two_groups)
    assert load_checkpoint(grouped)["stepbus"]["optimizer_groups"] == {"optimizer": [[[1, 3]], [[1]]]}
    assert refusal(make_trainer(optimizer=adam), grouped) == (
        "optimizer 'optimizer' (Adam) does not fit: the checkpoint has 2 parameter groups of [1, 1] parameters, "
        f"the trainer has 1 parameter group of [2] parameters; {FRESH}"
    )
    assert refusal(make_trainer(optimizer=two_groups), saved(tmp_path, "one-group.pt", adam)) == (
        "optimizer 'optimizer' (Adam) does not fit: the checkpoint has 1 parameter group of [2] parameters, "
        f"the trainer has 2 parameter groups of [1, 1] parameters; {FRESH}"
    )
    # same counts, parameters in another order: only the recorded shapes tell
    reordered = saved(tmp_path, "weight-first.pt", adam)
    assert refusal(make_trainer(optimizer=bias_first), reordered) == (
        "optimizer 'optimizer' (Adam) does not fit: parameter 0 of group 0 has shape (1, 3) in the checkpoint, (1,) "
        f"in the trainer (its parameters are in another order or of other sizes); {FRESH}"
    )
    make_trainer(optimizer=bias_first).restore(without_recorded_types(reordered))  # unrecorded: not detectable


# ---------------------------------------------------------------------------------------------- GradScaler
def test_a_grad_scaler_present_in_one_and_absent_in_the_other_is_refused(tmp_path: Path) -> None:
    full = saved(tmp_path, "fp32.pt", adam)
    mixed = saved(tmp_path, "fp16.pt", adam, precision="16-mixed")
    assert "grad_scaler" in load_checkpoint(mixed)["tracked"]
    assert refusal(make_trainer(optimizer=adam, precision="16-mixed"), full) == (
        "it holds no GradScaler state (it was saved with precision '32' or 'bf16-mixed'), the trainer runs "
        f"precision='16-mixed': build the trainer with the saved precision to resume it, or {FRESH}"
    )
    for precision in ("32", "bf16-mixed"):
        assert refusal(make_trainer(optimizer=adam, precision=precision), mixed) == (
            "it holds a GradScaler state (it was saved with precision='16-mixed'), the trainer has no GradScaler "
            "(its precision is '32' or 'bf16-mixed'): build the trainer with precision='16-mixed' to resume it, "
            f"or {FRESH}"
        )
    # with fresh_optimizer the GradScaler is not read: both resume, the 16-mixed one with a scaler as built
    into_mixed = make_trainer(optimizer=adam, precision="16-mixed")
    assert into_mixed.restore(full, fresh_optimizer=True) == full
    assert into_mixed.scaler is not None
    assert into_mixed.scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()
    into_full = make_trainer(optimizer=adam)
    assert into_full.restore(mixed, fresh_optimizer=True) == mixed
    assert into_full.state.iteration == 2
    assert into_full.train() is Status.COMPLETED


# ---------------------------------------------------------------------------------------------- untouched
def _target() -> BaseTrainer:
    """An Adam trainer with an EMA and LR decay whose optimizer already holds state (from another run), so that
    "unchanged" means something for the optimizer too."""
    trainer = make_trainer(optimizer=adam, callbacks=[EMA(decay=0.5), LRDecay(milestones=[0.5], gamma=0.1)])
    donor = trained(adam, 3, init_seed=9, callbacks=[LRDecay(milestones=[0.5], gamma=0.1)])
    trainer.optimizer.load_state_dict(donor.optimizer.state_dict())
    return trainer


def _snapshot(trainer: BaseTrainer) -> dict[str, Any]:
    return {
        "model": clone(trainer.pipeline.state_dict()),
        "optimizer": clone(trainer.optimizer.state_dict()),
        "counters": trainer.state.state_dict(),
        "callbacks": [clone(cb.state_dict()) for cb in trainer.callbacks],
        "torch_rng": torch.get_rng_state(),
        "resumed_from": trainer.resumed_from,
    }


def test_a_refused_checkpoint_leaves_the_trainer_untouched_and_trainable(tmp_path: Path) -> None:
    refused = [
        saved(tmp_path, "sgd.pt", sgd, callbacks=[EMA(decay=0.5)]),
        saved(tmp_path, "adamw.pt", adamw, steps=4),
        saved(tmp_path, "groups.pt", two_groups),
        saved(tmp_path, "fp16.pt", adam, precision="16-mixed"),
        without_recorded_types(saved(tmp_path, "legacy-sgd.pt", sgd)),
    ]
    trainer = _target()
    before = _snapshot(trainer)
    for path in refused:
        refusal(trainer, path)
        same(_snapshot(trainer), before, f"after {path.name}")
    assert trainer.state.iteration == 0
    reference = _target()
    assert trainer.train() is reference.train() is Status.COMPLETED
    same(clone(trainer.pipeline.state_dict()), clone(reference.pipeline.state_dict()), "model after training")
    same(clone(trainer.optimizer.state_dict()), clone(reference.optimizer.state_dict()), "optimizer after training")


# ---------------------------------------------------------------------------------------------- fresh optimizer
def test_fresh_optimizer_continues_the_run_from_the_saved_weights_with_a_new_optimizer(tmp_path: Path) -> None:
    def recording(trainer: BaseTrainer) -> dict[int, tuple[torch.Tensor, ...]]:
        batches: dict[int, tuple[torch.Tensor, ...]] = {}
        trainer.on("pre_step")(lambda t, batch, **_: batches.__setitem__(t.state.iteration, clone(tuple(batch))))
        return batches

    straight = make_trainer(optimizer=sgd)
    straight_batches = recording(straight)
    straight.train()
    path = saved(tmp_path, "sgd-4.pt", sgd, steps=4)
    checkpoint = load_checkpoint(path)

    trainer = make_trainer(optimizer=adam)
    batches = recording(trainer)
    assert trainer.restore(path, fresh_optimizer=True) == path
    # the saved run's weights and position, a new optimizer
    same(clone(trainer.pipeline.state_dict()), checkpoint["model"], "model")
    assert trainer.optimizer.state_dict()["state"] == {}
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert (trainer.state.epoch, trainer.state.epoch_iteration, trainer.state.iteration) == (2, 1, 4)
    assert trainer.resumed_from == path
    assert trainer.train() is Status.COMPLETED
    # the data went on at the next batch
    assert sorted(batches) == [5, 6]
    for iteration in (5, 6):
        same(batches[iteration], straight_batches[iteration], f"batch {iteration}")
    # and every update was a plain Adam's, from the saved weights
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    optimizer = adam(list(model.parameters()))
    for iteration in (5, 6):
        optimizer.zero_grad()
        torch.autograd.backward(mse(model, batches[iteration]))
        optimizer.step()
    same(clone(trainer.pipeline.state_dict()), clone(model.state_dict()), "model after training")
    assert float(trainer.optimizer.state_dict()["state"][0]["step"]) == 2.0
    same(trainer.optimizer.state_dict()["state"], optimizer.state_dict()["state"], "optimizer state")


def test_fresh_optimizer_applies_the_position_s_lr_decay_to_the_configured_lr(tmp_path: Path) -> None:
    # 6 iterations, milestone 0.5: iterations 1-3 at lr, 4-6 at lr * 0.1; saved after iteration 4
    path = saved(tmp_path, "sgd-4.pt", sgd, steps=4, callbacks=[LRDecay(milestones=[0.5], gamma=0.1)])
    trainer = make_trainer(optimizer=adam, callbacks=[LRDecay(milestones=[0.5], gamma=0.1)])
    used: list[float] = []
    trainer.on("step")(lambda t, **_: used.append(t.optimizer.param_groups[0]["lr"]))
    trainer.restore(path, fresh_optimizer=True)
    trainer.train()
    assert used == [0.01 * 0.1, 0.01 * 0.1]


def test_fresh_optimizer_restores_callback_state_and_skips_the_optimizer_checks(tmp_path: Path) -> None:
    source = trained(two_groups, 4, callbacks=[EMA(decay=0.5)])
    path = source.save_checkpoint(tmp_path / "groups.pt")
    ema = EMA(decay=0.5)
    trainer = make_trainer(optimizer=sgd, callbacks=[ema])
    trainer.restore(path, fresh_optimizer=True)
    average = load_checkpoint(path)["callbacks"]["EMA"]["average"]
    same(ema.average_state_dict(), {"weight": average[0], "bias": average[1]}, "EMA average")
    assert ema.updates == 4
    with pytest.raises(TypeError, match=r"^restore\(\): fresh_optimizer must be True or False, got 'yes'$"):
        make_trainer().restore(path, fresh_optimizer="yes")  # type: ignore[arg-type]


def test_fresh_optimizer_resumes_into_other_named_optimizers(tmp_path: Path) -> None:
    def stack() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))

    path = trained(adam, 4, model=stack()).save_checkpoint(tmp_path / "lone.pt")

    def named() -> BaseTrainer:
        return make_trainer(
            model=stack(),
            optimizer={
                "first": lambda m: torch.optim.SGD(m[0].parameters(), lr=0.1),
                "second": lambda m: torch.optim.Adam(m[1].parameters(), lr=0.01),
            },
        )

    assert refusal(named(), path) == (
        f"does not fit this trainer: it holds the optimizers ['optimizer'], this trainer has ['first', 'second']; "
        f"{FRESH}"
    )
    trainer = named()
    assert trainer.restore(path, fresh_optimizer=True) == path
    same(clone(trainer.pipeline.state_dict()), load_checkpoint(path)["model"], "model")
    assert [opt.state_dict()["state"] for opt in trainer.optimizers.values()] == [{}, {}]
    assert trainer.state.iteration == 4
    assert trainer.train() is Status.COMPLETED
    assert float(trainer.optimizers["second"].state_dict()["state"][0]["step"]) == 2.0


def test_the_same_class_with_other_hyper_parameters_resumes_with_the_saved_ones_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = saved(tmp_path, "adam.pt", adam)
    trainer = make_trainer(optimizer=lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, betas=(0.8, 0.9)))
    with caplog.at_level(logging.WARNING, logger="stepbus"):
        trainer.restore(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"resume: {path}: optimizer 'optimizer' continues with its saved hyper-parameters, not the configured ones: "
        "group 0 betas (0.9, 0.999) (configured (0.8, 0.9)); group 0 weight_decay 0 (configured 0.1) (restore with "
        "fresh_optimizer=True to start it with the configured ones)"
    ]
    assert (trainer.optimizer.param_groups[0]["weight_decay"], trainer.optimizer.param_groups[0]["betas"]) == (
        0,
        (0.9, 0.999),
    )
    caplog.clear()
    fresh = make_trainer(optimizer=lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1))
    with caplog.at_level(logging.WARNING, logger="stepbus"):
        fresh.restore(path, fresh_optimizer=True)
    assert caplog.records == []
    assert fresh.optimizer.param_groups[0]["weight_decay"] == 0.1


# ---------------------------------------------------------------------------------------------- command line
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "80"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _stepbus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trainers", "train", "--config", DEMO, "--set", "trainer.samples=512", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=cwd, env=_env())


def test_cli_refuses_another_optimizer_with_exit_2_and_resumes_with_fresh_optimizer(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _stepbus(tmp_path, "--epochs", "1", "--run-dir", str(run))
    assert first.returncode == 0, first.stdout + first.stderr
    checkpoint = run / "checkpoints" / "step-00000008.pt"  # 512 samples in batches of 64
    assert load_checkpoint(checkpoint)["stepbus"]["optimizer_types"] == {"optimizer": "torch.optim.adam.Adam"}
    files = sorted(p.name for p in (run / "checkpoints").iterdir())

    refused = _stepbus(tmp_path, "--resume", str(checkpoint), "--epochs", "2", "--set", "trainer.optimizer.name=sgd")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == (
        f"error: --resume {checkpoint}: checkpoint {checkpoint}: optimizer 'optimizer' was Adam in the checkpoint, "
        f"the trainer has SGD: Adam's state cannot drive SGD; build the trainer with Adam to resume it, or {FRESH}\n"
    )
    assert "Traceback" not in refused.stdout + refused.stderr
    assert "training completed" not in refused.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == files  # nothing trained, nothing written

    fresh = _stepbus(
        tmp_path,
        "--resume",
        str(checkpoint),
        "--epochs",
        "2",
        "--set",
        "trainer.optimizer.name=sgd",
        "--fresh-optimizer",
    )
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert (
        f"resumed from {checkpoint} at epoch 1/2, step 8/8, iteration 8 with a fresh optimizer (SGD) and the "
        "configured hyper-parameters\n" in fresh.stdout
    )
    assert "training completed: 16 iterations" in fresh.stdout
    meta = load_checkpoint(run / "checkpoints" / "step-00000016.pt")["stepbus"]
    assert (meta["iteration"], meta["optimizer_types"]) == (16, {"optimizer": "torch.optim.sgd.SGD"})
    assert meta["config"]["trainer"]["optimizer"] == {"name": "sgd", "lr": 0.01}


def test_cli_fresh_optimizer_needs_resume(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", DEMO, "--fresh-optimizer"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "stepbus train: error: --fresh-optimizer needs --resume PATH|auto: it changes how a checkpoint is loaded\n"
    )
