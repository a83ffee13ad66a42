"""Run under ``torchrun`` by ``test_distributed.py``: a demo trainer with a rank-0-only callback and an everywhere
callback; each rank writes what it saw to ``<out>/rank-<r>.json``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch
from rich.console import Console

from tests.support import Recorder
from trainers.apps.demo import demo_trainer
from trainers.distributed.environment import init_from_env
from trainers.engine.trainer import BaseTrainer


class Counter(Recorder):
    """The shared recorder, which also notes whether it was set up."""

    def __init__(self, state_key: str, *, zero_only: bool) -> None:
        super().__init__(state_key=state_key)
        self.rank_zero_only = zero_only
        self.set_up = False

    def setup(self, trainer: BaseTrainer) -> None:
        self.set_up = True


def main(out: Path) -> None:
    distributed = init_from_env(torch.device("cpu"))
    trainer = demo_trainer(max_epochs=1, samples=256, batch_size=32, console=Console(file=io.StringIO()))
    everywhere = trainer.add_callback(Counter("Everywhere", zero_only=False))
    zero_only = trainer.add_callback(Counter("ZeroOnly", zero_only=True))
    trainer.train()
    report = {
        "distributed": distributed,
        "rank": trainer.rank,
        "world_size": trainer.world_size,
        "is_global_zero": trainer.is_global_zero,
        "everywhere": everywhere.names(),
        "zero_only": zero_only.names(),
        "zero_only_set_up": zero_only.set_up,
        "zero_only_handles": len(trainer.handles_of(zero_only)),
        "registered": [callback.state_key for callback in trainer.callbacks],
    }
    (out / f"rank-{trainer.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    trainer.remove_callback(zero_only)  # never set up on rank 1: no teardown either
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
