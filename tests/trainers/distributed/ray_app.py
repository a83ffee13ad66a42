"""Callbacks the Ray Train tests add to the demo config through a registry that ``run_with_ray`` sends to the
workers: ``probe`` records what each worker's trainer sees of the job, ``fail_once`` makes one rank fail once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from lifecycle import Callback
from trainers.config.registry import Registry
from trainers.distributed.environment import launched_world_size
from trainers.engine.trainer import BaseTrainer


class Probe(Callback):
    """At ``pre_training``: ``<run_dir>/probe-<rank>.json`` with the trainer's rank and world size, Ray's, the
    environment Ray set, the process group's backend and the resumed-from path."""

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        import ray.train

        context = ray.train.get_context()
        seen = {
            "trainer": [trainer.rank, trainer.world_size],
            "ray": [context.get_world_rank(), context.get_world_size(), context.get_local_rank()],
            "env": [os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")],
            "launched_world_size": launched_world_size(),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "resumed_from": None if trainer.resumed_from is None else str(trainer.resumed_from),
            "iteration": trainer.state.iteration,
            "pid": os.getpid(),
        }
        assert trainer.run_dir is not None
        path = Path(trainer.run_dir) / f"probe-{trainer.rank}-{os.getpid()}.json"
        path.write_text(json.dumps(seen), encoding="utf-8")


class FailOnce(Callback):
    """On rank ``rank`` after step ``at``: raise, the first time only (``marker`` records that it did)."""

    def __init__(self, *, at: int, rank: int, marker: str) -> None:
        super().__init__()
        self.at, self.rank, self.marker = at, rank, Path(marker)

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.iteration != self.at or trainer.rank != self.rank or self.marker.exists():
            return
        self.marker.write_text(str(os.getpid()), encoding="utf-8")
        raise RuntimeError(f"a planned failure on rank {self.rank} after step {self.at}")


def registry() -> Registry:
    """The default names plus ``probe`` and ``fail_once``."""
    names = Registry.default()
    names.register_callback("probe", Probe)
    names.register_callback("fail_once", FailOnce)
    return names
