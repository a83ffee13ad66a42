"""The reference app (image field) with grid pruning, for ``test_distributed_field.py``: ``python dist_field.py
OUT`` in one process or under ``torchrun``. Each rank writes ``OUT/field-<rank>.pt``: the occupancy densities, the
occupied pixels it trains on (the cache derived from them), every prune's ``prune/occupancy`` as that rank computed
it, and the field's weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from callbacks import Callback, GridPruning
from trainers.apps.image_field import image_field_trainer
from trainers.engine.trainer import BaseTrainer


class PruneLog(Callback):
    """What each prune published on this rank, read right after it (before the next forward, where DDP would
    overwrite rank 1's buffers with rank 0's)."""

    def __init__(self) -> None:
        super().__init__(state_key="PruneLog")
        self.values: list[tuple[int, float]] = []

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        count = trainer.state.metrics.get("prune/count")
        if count is not None and count > len(self.values):
            self.values.append((trainer.state.iteration, float(trainer.state.metrics["prune/occupancy"])))


def main(out: Path) -> None:
    trainer = image_field_trainer(
        size=32,
        dense=(8, 16),
        hashed=(32,),
        table=2**8,
        hidden=16,
        occupancy_cells=8,
        occupancy_threshold=0.2,
        batch_size=256,
        batches_per_epoch=8,
        max_epochs=3,
        threads=1,
    )
    log = trainer.add_callback(PruneLog())
    trainer.add_callback(GridPruning(every="4it", start=4))
    trainer.train()
    occupancy = trainer.pipeline.occupancy
    torch.save(
        {
            "density": occupancy.density.clone(),
            "pixels": occupancy.pixels().clone(),
            "prunes": torch.tensor(log.values, dtype=torch.float64),
            "weights": {k: v.clone() for k, v in trainer.pipeline.state_dict().items()},
        },
        out / f"field-{trainer.rank}.pt",
    )
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
