"""Run as each rank of a gloo job by ``test_distributed_torchmetrics.py``: validators with torchmetrics metrics.

``Validator(ranks="all")`` validates at every epoch: each rank evaluates its shard ``range(rank, 11, world_size)``
of an 11-row validation set (6 rows on rank 0, 5 on rank 1) into accuracy, mean squared error and a mean absolute
error; a second validator (``ranks="zero"``) evaluates the whole set on rank 0 only. The outputs are rounded to
eighths, so every sum of the metrics' states is exact in float32 in any order, and the values can be compared
exactly with torchmetrics run in one process over the whole set. Then the bad combinations, each on one more
validator, with a collective after each to show that the ranks are still in step. Each rank writes what it saw to
``<out>/rank-<r>.json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchmetrics import MeanMetric, MeanSquaredError, SumMetric
from torchmetrics.classification import BinaryAccuracy

from callbacks import Validator
from tests.support import Recorder, make_dataset, make_trainer
from trainers import BaseTrainer

#: the validation set: 11 rows, their target thresholded into a binary label for the accuracy
VAL = make_dataset(11, data_seed=3)


def eighths(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values * 8) / 8


def labels(values: torch.Tensor) -> torch.Tensor:
    return (values.squeeze(1) > 0.5).long()


class Shard:
    """``fn(trainer, metrics)`` over the rows ``rows(trainer)``; keeps what it fed the metrics."""

    def __init__(self, rows: Callable[[BaseTrainer], list[int]]) -> None:
        self.rows = rows
        self.fed: list[dict[str, Any]] = []

    def __call__(self, trainer: BaseTrainer, metrics: Any) -> dict[str, Any]:
        rows = self.rows(trainer)
        x, y = VAL.tensors
        preds, target = eighths(trainer.pipeline(x[rows])), eighths(y[rows])
        metrics["acc"].update(labels(preds), labels(target))
        metrics["mse"].update(preds, target)
        metrics["err"].update((preds - target).abs())
        self.fed.append({"rows": rows, "preds": preds.tolist(), "target": target.tolist()})
        return {"images": {"rank": torch.full((2, 2), float(trainer.rank))}}


def metrics() -> dict[str, Any]:
    return {"acc": BinaryAccuracy(), "mse": MeanSquaredError(), "err": MeanMetric()}


def outcome(call: Callable[[], Any]) -> list[Any]:
    try:
        return ["ok", call()]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return [type(exc).__name__, str(exc)]


def main(out: Path) -> None:
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731 - a step big enough to show between validations
    trainer = make_trainer(items=8, batch_size=2, max_epochs=2, run_dir=out / "run", optimizer=sgd)  # starts the group
    rank, world = trainer.rank, trainer.world_size
    sharded = Shard(lambda t: list(range(t.rank, len(VAL), t.world_size)))
    whole = Shard(lambda t: list(range(len(VAL))))
    everywhere = Validator(sharded, metrics=metrics(), ranks="all", modes={"err": "min"})
    on_zero = Validator(whole, metrics=metrics(), modes={"err": "min"}, prefix="zero", state_key="zero")
    rec = Recorder()
    for callback in (everywhere, on_zero, rec):
        trainer.add_callback(callback)
    trainer.train()
    report: dict[str, Any] = {
        "rank": rank,
        "world_size": world,
        "sharded": sharded.fed,
        "whole": whole.fed,
        "validations": [
            {
                "validator": p["validator"],
                "metrics": p["metrics"],
                "best": p["best"],
                "images": sorted(p["images"]),
                "paths": {k: str(v) for k, v in p["image_paths"].items()},
                "reason": p["reason"],
            }
            for event, p in rec.payloads
            if event == "post_validation"
        ],
        "state": {k: v for k, v in trainer.state.metrics.items() if k.split("/")[0] in ("val", "best", "zero")},
        "checkpoint_state": everywhere.state_dict(),
    }

    def extra(name: str, fn: Callable[[BaseTrainer, Any], Any], given: dict[str, Any]) -> list[Any]:
        validator = trainer.add_callback(
            Validator(fn, metrics=given, ranks="all", prefix=name, state_key=name, every=None, at_end=False)
        )
        return outcome(lambda: validator.run(trainer, force=True))

    def plain(t: BaseTrainer, m: Any) -> dict[str, Any]:
        m["n"].update(torch.ones(3))
        return {"loss": 0.5}

    def fails_on_one(t: BaseTrainer, m: Any) -> None:
        m["n"].update(torch.ones(3))
        if t.rank == 1:
            raise ValueError(f"no shard on rank {t.rank}")

    def other_names(t: BaseTrainer, m: Any) -> dict[str, Any]:
        return {"a" if t.rank == 0 else "b": SumMetric()}

    def shard_count(t: BaseTrainer, m: Any) -> None:
        m["n"].update(torch.ones(len(range(t.rank, len(VAL), t.world_size))))

    report["plain"] = extra("plain", plain, {"n": SumMetric()})
    report["in_step_1"] = trainer.all_gather_object(rank)
    report["fails_on_one"] = extra("fails", fails_on_one, {"n": SumMetric()})
    report["in_step_2"] = trainer.all_gather_object(rank)
    report["other_names"] = extra("names", other_names, {"n": SumMetric()})
    report["in_step_3"] = trainer.all_gather_object(rank)
    unsynced = SumMetric(sync_on_compute=False)
    report["unsynced"] = extra("unsynced", shard_count, {"n": unsynced})
    report["in_step_4"] = trainer.all_gather_object(rank)
    report["counts_after"] = [everywhere.metrics["acc"].update_count, unsynced.update_count]
    trainer.close()
    (out / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
