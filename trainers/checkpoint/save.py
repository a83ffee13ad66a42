"""What a trainer's checkpoint holds, and how it is written: by this process alone, or in a job by rank 0 with
every rank's RNG state (so that a resumed job draws the same dropout masks on every rank).

A save that failed for lack of room says so in plain words, whatever wrapped the error on its way up::

    checkpoint runs/x/checkpoints/step-00000042.pt: could not be written: no space left on device (0 bytes free on
    /mnt); any previous file is intact

(``disk quota exceeded on /home``, ``file too large (...: ulimit -f)`` likewise; see
:mod:`trainers.checkpoint.disk_space`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lifecycle import Status
from trainers.checkpoint.disk_space import describe_full_disk
from trainers.checkpoint.format import (
    FORMAT,
    LONE_OPTIMIZER,
    CheckpointError,
    now_metadata,
    stepbus_version,
    write_checkpoint,
)
from trainers.checkpoint.optimizer_fit import optimizer_record
from trainers.checkpoint.rng import capture_rng
from trainers.distributed.collective import RankZeroFailure
from trainers.distributed.ranks import Ranks

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["checkpoint_payload", "optimizer_states", "save"]


def checkpoint_payload(
    trainer: BaseTrainer,
    *,
    reason: str,
    resumable: bool,
    status: Status | None,
    tracked: Mapping[str, Any],
    sharded: bool = False,
) -> dict[str, Any]:
    """Everything an exact resume needs, as tensors and plain containers (see ``trainers.checkpoint.format``).
    ``sharded``: the model and optimizer tensors go to the shards (``trainers.checkpoint.sharded``), so the
    payload holds no ``"model"`` and only the optimizers' parameter groups."""
    state = trainer.state
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": stepbus_version(),
        "torch": str(torch.__version__),
        **now_metadata(),
        "reason": reason,
        "resumable": resumable,
        "iteration": state.iteration,
        "epoch": state.epoch,
        "epoch_iteration": state.epoch_iteration,
        "max_epochs": state.max_epochs,
        "iterations_per_epoch": state.iterations_per_epoch,
        "status": str(status) if status is not None else None,
        "metrics": _plain_metrics(state.metrics),
        "config": trainer.config,
        "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "writer": {"host": socket.gethostname(), "pid": os.getpid(), "rank": trainer.rank},
        "world_size": trainer.world_size,
        "optimizers": list(trainer.optimizers),
        **optimizer_record(trainer.optimizers),  # what a restore checks the optimizers against
    }
    payload = {
        "stepbus": meta,
        "trainer": trainer.state_dict(),
        "model": None if sharded else trainer.pipeline.state_dict(),
        "optimizer": optimizer_states(trainer.optimizers, groups_only=sharded),
        "tracked": {name: obj.state_dict() for name, obj in tracked.items()},
        "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks},
        "rng": capture_rng(),
    }
    if sharded:
        del payload["model"]
        meta["sharded"] = True
    return payload


def optimizer_states(optimizers: Mapping[str, torch.optim.Optimizer], *, groups_only: bool = False) -> dict[str, Any]:
    """The checkpoint's ``"optimizer"``: the lone optimizer's state dict, or named ones' by name (the metadata's
    ``"optimizers"`` lists the names, so a loader knows which it holds). ``groups_only``: their parameter groups
    with an empty ``"state"`` (a sharded checkpoint keeps the state tensors in its shards)."""

    def state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if groups_only:
            return {"state": {}, "param_groups": optimizer.state_dict()["param_groups"]}
        return optimizer.state_dict()

    if list(optimizers) == [LONE_OPTIMIZER]:
        return state(optimizers[LONE_OPTIMIZER])
    return {name: state(optimizer) for name, optimizer in optimizers.items()}


def save(
    path: Path,
    payload: Callable[[], dict[str, Any]],
    ranks: Ranks,
    *,
    resumable: bool,
) -> Path:
    """Write ``payload()`` to ``path`` atomically.

    A resumable checkpoint is a collective: every rank sends its RNG state to rank 0 (the entry barrier; in a job the
    file keeps them all as ``rank_rng``), rank 0 writes the file, and its outcome is broadcast (the exit barrier):
    every rank returns the path, or raises (a ``CheckpointError`` where rank 0 raised one). In a single process each
    of those steps is the process itself. A non-resumable one (the state at a failure) is written by the caller."""
    if not resumable:
        return _write(path, payload())
    states = ranks.gather(capture_rng())

    def write_on_zero() -> str:
        written = payload()
        if states is not None and len(states) > 1:
            written["rank_rng"] = states
        return str(_write(path, written))

    def elsewhere(failure: RankZeroFailure) -> Exception:
        if failure.kind == "CheckpointError" and failure.reason is not None:
            return CheckpointError(path, f"{failure.reason} (rank 0 writes the checkpoints)")
        return RuntimeError(f"rank 0 could not save checkpoint {path}: {failure}")

    return Path(ranks.on_rank_zero(write_on_zero, elsewhere))


def _write(path: Path, written: dict[str, Any]) -> Path:
    """``write_checkpoint``, with a lack of room told in plain words (see the module docstring)."""
    try:
        return write_checkpoint(path, written)
    except CheckpointError as exc:
        words = describe_full_disk(exc.__cause__, exc.path)
        if words is None:
            raise
        raise CheckpointError(exc.path, f"could not be written: {words}; any previous file is intact") from (
            exc.__cause__
        )


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | str]:
    """The published metrics that are plain numbers or strings (a tensor value is left out: no device sync)."""
    plain: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        if type(value) in (int, float, str) and isinstance(key, str):
            plain[key] = value
    return plain
