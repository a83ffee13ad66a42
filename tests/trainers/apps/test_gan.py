"""The GAN app (``trainers/apps/gan.py``, ``configs/gan.yaml``): two named optimizers stepped by the app's own
``optimization_step``. It learns the eight-Gaussian ring (every mode covered, most samples near one), resumes
bit-exactly from a mid-epoch checkpoint in a new process, and trains the same on two gloo ranks as in one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from callbacks import Validator
from lifecycle import Status
from trainers.apps.gan import gan_trainer, mode_metrics, ring_centres
from trainers.checkpoint.format import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
CONFIG = str(ROOT / "trainers" / "apps" / "configs" / "gan.yaml")


def _stepbus(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "1000"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "trainers", "train", "--config", CONFIG, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def _same_tree(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two checkpoint parts differ (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [where]
        return [d for k in a for d in _same_tree(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same_tree(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def test_mode_metrics_count_modes_and_near_samples() -> None:
    centres = ring_centres()
    on_three = centres[torch.tensor([0, 1, 2] * 10)] + 0.01
    assert mode_metrics(on_three) == {"modes": 3.0, "quality": 1.0}
    far = torch.zeros(30, 2)
    assert mode_metrics(torch.cat([on_three, far])) == {"modes": 3.0, "quality": 0.5}


def test_the_gan_learns_every_mode_of_the_ring() -> None:
    trainer = gan_trainer(max_epochs=32)
    before = mode_metrics(trainer.pipeline.generator(trainer._held_out).detach())
    trainer.add_callback(Validator(every="32ep", modes={"modes": "max", "quality": "max"}))
    assert trainer.train() is Status.COMPLETED
    assert before["quality"] < 0.1
    assert trainer.state.metrics["val/modes"] == 8.0
    assert trainer.state.metrics["val/quality"] >= 0.5
    assert trainer.state.optimizer_step == trainer.state.iteration == 32 * 64
    image = trainer.validate()["images"]["samples"]
    assert image.shape == (64, 64, 3)
    assert float(image.max()) == 1.0


def test_a_mid_epoch_checkpoint_resumes_bit_exactly_in_a_new_process(tmp_path: Path) -> None:
    """3 epochs of 64 iterations, checkpoints every 40: the run resumed from iteration 80 (epoch 2, step 16; before
    the LR milestones at 144) ends with the straight run's weights, both optimizers' states and LR decays."""
    sets = [
        "--epochs",
        "3",
        "--set",
        "callbacks.checkpointer.every=40it",
        "--set",
        "callbacks.checkpointer.keep_last=9",
    ]
    straight = _stepbus(tmp_path, *sets, "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    middle = tmp_path / "straight" / "checkpoints" / "step-00000080.pt"
    assert load_checkpoint(middle)["stepbus"]["epoch_iteration"] == 16
    resumed = _stepbus(tmp_path, *sets, "--run-dir", str(tmp_path / "resumed"), "--resume", str(middle))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-00000192.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000192.pt")
    assert a["stepbus"]["optimizers"] == ["discriminator", "generator"]
    assert _same_tree(a["model"], b["model"]) == []
    assert _same_tree(a["optimizer"], b["optimizer"]) == []
    del a["callbacks"]["Checkpointer"], b["callbacks"]["Checkpointer"]  # they name their own run directories
    assert _same_tree(a["callbacks"], b["callbacks"]) == []
    assert sorted(a["callbacks"]) == ["LRDecay@discriminator", "LRDecay@generator", "ProgressBar", "Validator"]
    assert a["optimizer"]["generator"]["param_groups"][0]["lr"] == pytest.approx(0.0005)


def test_two_ranks_train_the_gan_as_one_process_does(tmp_path: Path) -> None:
    """No DDP wrapper: rank 0's weights are broadcast, each optimizer's gradients averaged before it steps; each
    rank gets half of every batch (with its noise), so the run follows the single-process one within float error."""
    sets = ["--epochs", "2", "--set", "callbacks.checkpointer.every=2ep"]
    one = _stepbus(tmp_path, *sets, "--run-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stdout + one.stderr
    two = _stepbus(tmp_path, *sets, "--nproc", "2", "--run-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stdout + two.stderr
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "step-00000128.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "step-00000128.pt")
    assert b["stepbus"]["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(a["model"]["generator.0.weight"], gan_trainer().pipeline.state_dict()["generator.0.weight"])
