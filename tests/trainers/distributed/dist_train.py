"""A real training run for the distributed tests, in one process or under ``torchrun`` (or launched by hand with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``): ``python dist_train.py SPEC.json``.

The spec (JSON) says what to run; each rank writes ``<out>/report-<rank>.json`` (status, counters, events, the
error if any, what it published) and ``<out>/weights-<rank>.pt`` (its model and optimizer state: its own shards
under FSDP); rank 0 writes ``<out>/whole.pt``, the whole model's state (gathered from the shards under FSDP).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import TensorDataset

from callbacks import (
    EMA,
    Callback,
    Checkpointer,
    EarlyStopping,
    GradientGuard,
    PipelineExport,
    TensorBoardLogger,
    Validator,
    WandbLogger,
)
from lifecycle import Status
from tests.support import Recorder
from trainers.engine.trainer import BaseTrainer


class Mishap(Callback):
    """On one rank, at one iteration: ``stop()``, a SIGINT to itself, a SIGKILL to itself, a SIGSTOP to itself (a
    hung rank), or an error."""

    def __init__(self, what: str, rank: int, at: int) -> None:
        super().__init__(state_key=f"Mishap-{what}")
        self.what, self.rank, self.at = what, rank, at

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.rank != self.rank or trainer.state.iteration != self.at:
            return
        if self.what == "stop":
            trainer.stop()
        elif self.what == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif self.what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.what == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif self.what == "error":
            raise ValueError(f"a bad batch on rank {self.rank} at iteration {self.at}")


class KillWhenSaved:
    """A tracked object that SIGKILLs its process when a checkpoint asks for its state at iteration ``at``: on rank
    0 of an FSDP job that is after every rank wrote its shards and before ``stepbus.pt`` exists (a save cut short)."""

    def __init__(self, trainer: BaseTrainer, at: int) -> None:
        self.trainer, self.at = trainer, at

    def state_dict(self) -> dict[str, Any]:
        if self.trainer.state.iteration == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _data(samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(samples, 2, generator=generator) * 6 - 3
    target = (torch.sin(xy[:, :1]) * torch.cos(xy[:, 1:]) + 0.1 * xy[:, :1] * xy[:, 1:]).float()
    return TensorDataset(xy, target)


def _loss(pipeline: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(pipeline(x), y)


def build(spec: dict[str, Any], out: Path) -> tuple[BaseTrainer, Recorder]:
    torch.manual_seed(1234 + int(os.environ.get("RANK", "0")))  # different on purpose: DDP must make them equal
    layers: list[nn.Module] = [nn.Linear(2, 32), nn.Tanh()]
    if spec.get("dropout"):
        layers.append(nn.Dropout(spec["dropout"]))
    layers += [nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)]
    held_out = _data(256).tensors

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        x, y = held_out
        return {"mse": nn.functional.mse_loss(trainer.pipeline(x), y)}

    callbacks: list[Callback] = []
    recorder = Recorder(state_key="Recorder")
    callbacks.append(recorder)
    if spec.get("validate_every"):
        callbacks.append(Validator(fn=validate, every=spec["validate_every"], at_end=False))
    if spec.get("stop_below") is not None:
        callbacks.append(EarlyStopping("val/mse", stopping_threshold=spec["stop_below"], patience=1000))
    if spec.get("checkpoint_every") is not None:
        keep = spec.get("keep_last")
        callbacks.append(Checkpointer(out / "checkpoints", every=spec["checkpoint_every"], keep_last=keep))
    if spec.get("tensorboard"):
        callbacks.append(TensorBoardLogger(out / "tb", every="4it"))
    if spec.get("wandb"):
        callbacks.append(WandbLogger(dir=out / "wandb", every="4it", mode="offline"))
    if spec.get("ema") is not None:
        callbacks.append(EMA(decay=spec["ema"]))
    if spec.get("export"):
        callbacks.append(PipelineExport(spec["export"], every=None))
    if spec.get("clip_norm") is not None:
        callbacks.append(GradientGuard(clip_norm=spec["clip_norm"], every="1it"))
    for what in ("stop", "sigint", "kill", "hang", "error"):
        if spec.get(what) is not None:
            rank, at = spec[what]
            callbacks.append(Mishap(what, rank, at))
    trainer = BaseTrainer(
        nn.Sequential(*layers),
        _data(spec.get("samples", 512)),
        max_epochs=spec.get("epochs", 2),
        batch_size=spec.get("batch_size", 32),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        loss_fn=_loss,
        callbacks=callbacks,
        seed=7,
        device="cpu",
        dist_timeout=spec.get("timeout", 60),
        vote_every=spec.get("vote_every", 1),
        run_dir=out,
        accumulate=spec.get("accumulate", 1),
        precision=spec.get("precision", "32"),
        strategy=spec.get("strategy", "ddp"),
        fsdp=spec.get("fsdp"),
    )
    if spec.get("kill_when_saved") is not None:
        trainer.track("kill_when_saved", KillWhenSaved(trainer, spec["kill_when_saved"]))
    return trainer, recorder


def _local(value: Any) -> Any:
    """``value`` with every DTensor (FSDP's sharded parameters and optimizer states) as this rank's own shard."""
    if isinstance(value, DTensor):
        return value.to_local().clone()
    if isinstance(value, dict):
        return {key: _local(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_local(item) for item in value]
    return value


def main(spec_file: Path) -> int:
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    out = Path(spec["out"])
    trainer, recorder = build(spec, out)
    report: dict[str, Any] = {"rank": trainer.rank, "world_size": trainer.world_size, "pid": os.getpid()}
    code = 0
    try:
        if spec.get("resume"):
            trainer.restore(spec["resume"])
        status = trainer.train()
        report["status"] = str(status)
        report["interrupted_by"] = trainer.interrupted_by
    except Exception as exc:  # noqa: BLE001 - the report says what happened
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["error_type"] = type(exc).__name__
        report["ranks"] = list(getattr(exc, "ranks", ()))
        traceback.print_exc()
        code = 1
    report["iteration"] = trainer.state.iteration
    report["epoch"] = trainer.state.epoch
    report["optimizer_step"] = trainer.state.optimizer_step
    averages = [cb.average for cb in trainer.callbacks if isinstance(cb, EMA)]
    if averages:
        torch.save(averages[0], out / f"ema-{trainer.rank}.pt")
    report["events"] = [row[0] for row in recorder.log if row[0] in ("post_epoch", "post_training", "pre_training")]
    report["event_iterations"] = [[row[0], row[3]] for row in recorder.log if row[0] != "pre_step"]
    report["steps"] = [row[3] for row in recorder.log if row[0] == "post_step"]
    report["metrics"] = {k: v for k, v in trainer.state.metrics.items() if isinstance(v, (int, float, str))}
    report["status_enum"] = str(trainer.status) if trainer.status is not None else None
    torch.save(
        {"model": _local(trainer.pipeline.state_dict()), "optimizer": _local(trainer.optimizer.state_dict())},
        out / f"weights-{trainer.rank}.pt",
    )
    whole = trainer.full_state_dict()  # a collective under FSDP: rank 0 gets the whole model
    if trainer.rank == 0:
        torch.save(whole, out / "whole.pt")
    (out / f"report-{trainer.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    trainer.close()
    if trainer.status is Status.INTERRUPTED:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
