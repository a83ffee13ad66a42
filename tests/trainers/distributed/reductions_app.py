"""Run as each rank of a gloo job by ``test_distributed_reductions.py``: validators whose values are sums and counts
(``callbacks.reductions``), with ``ranks="all"`` beside the same validation on rank 0 alone (``ranks="zero"``).

Part one, a linear model briefly trained under DDP, then validators run by hand:

- ``exact``: each rank takes its shard ``range(index, 7, count)`` of a 7-row set (4 rows on rank 0, 3 on rank 1,
  from ``validation_shard``); outputs and targets are rounded to eighths, so every sum is exact in any order. It
  returns a mean absolute error, a sum of squares, a count, an RMSE derived from the mean square, and the same mean
  as a torchmetrics ``MeanMetric``; ``exact_zero`` is the same function on rank 0 alone. The ``all_reduce`` calls
  of the ``exact`` validation are counted (the real one, called through a wrapper).
- ``real``: the mean of 1001 float32 squares (501 and 500 per rank), summed in float64 on each rank;
  ``real_zero`` on rank 0 alone.
- the failures: one rank raising in validate(), a bad value on one rank, different names, a count of 0 everywhere,
  a derived value that differs between ranks -- each followed by a collective to show the ranks are in step.

Part two, the image field: trained briefly with pruning, then validated with ``ranks="all"``; each rank keeps the
image it assembled and counts the field evaluations of its validation. Each rank writes ``<out>/rank-<r>.json``
and ``<out>/field-<r>.pt``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import MeanMetric

from callbacks import GridPruning, Mean, Sum, Validator, validation_shard
from tests.support import make_dataset, make_trainer, small_field
from trainers import BaseTrainer

#: the exact case: 7 rows, cut 4 and 3 over two ranks
VAL = make_dataset(7, data_seed=5)
#: the realistic case: 1001 float32 values, squared
REAL = torch.randn(1001, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
#: the image field of part two (45 rows: 23 and 22 over two ranks); pruning leaves some blocks black
FIELD: dict[str, Any] = {"size": 45, "occupancy_threshold": 0.2, "batches_per_epoch": 6, "max_epochs": 2, "threads": 1}


def eighths(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values * 8) / 8


class Exact:
    """The exact case over this validation's shard; keeps the rows, outputs and targets it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.tm = MeanMetric()

    def __call__(self, trainer: BaseTrainer) -> dict[str, Any]:
        index, count = validation_shard(trainer)
        rows = list(range(index, len(VAL), count))
        x, y = VAL.tensors
        preds, target = eighths(trainer.pipeline(x[rows])).squeeze(1), eighths(y[rows]).squeeze(1)
        errors = (preds - target).abs()
        self.tm.update(errors)
        self.seen.append({"shard": [index, count], "rows": rows, "preds": preds.tolist(), "target": target.tolist()})
        square = Mean((errors**2).sum(), len(rows))
        return {
            "mae": Mean(errors.sum(), len(rows)),
            "sq": Sum((errors**2).sum()),
            "n": Sum(len(rows)),
            "rmse": square.then(math.sqrt),
            "tm_mae": self.tm,
        }


def real(trainer: BaseTrainer) -> dict[str, Any]:
    index, count = validation_shard(trainer)
    return {"mse": Mean.of(REAL[index::count] ** 2)}


def outcome(call: Callable[[], Any]) -> list[Any]:
    try:
        return ["ok", call()]
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return [type(exc).__name__, str(exc)]


def linear_part(out: Path, report: dict[str, Any]) -> None:
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731 - a step big enough to move the weights
    trainer = make_trainer(items=8, batch_size=2, max_epochs=1, optimizer=sgd)  # starts the process group
    rank = trainer.rank
    trainer.train()

    def run(name: str, fn: Callable[[BaseTrainer], Any], ranks: str = "all", **kwargs: Any) -> list[Any]:
        validator = Validator(fn, ranks=ranks, prefix=name, state_key=name, every=None, at_end=False, **kwargs)
        trainer.add_callback(validator)
        return outcome(lambda: validator.run(trainer, force=True))

    exact, exact_zero = Exact(), Exact()
    modes = {"mae": "min", "sq": "min", "n": "max", "rmse": "min", "tm_mae": "min"}
    report["rank"] = rank
    reduced: list[list[int]] = []  # the shape of each all_reduce during the exact validation
    all_reduce = dist.all_reduce

    def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        reduced.append(list(tensor.shape))
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        report["exact"] = run("exact", exact, modes=modes)
    finally:
        dist.all_reduce = all_reduce
    report["exact_all_reduces"] = reduced
    report["exact_zero"] = run("exact_zero", exact_zero, "zero", modes=modes)
    report["exact_seen"], report["exact_zero_seen"] = exact.seen, exact_zero.seen
    report["real"] = run("real", real)
    report["real_zero"] = run("real_zero", real, "zero")
    report["in_step_0"] = trainer.all_gather_object(rank)

    def fails_on_one(t: BaseTrainer) -> dict[str, Any]:
        if t.rank == 1:
            raise ValueError(f"no shard on rank {t.rank}")
        return {"mse": Mean(1.0, 2)}

    def bad_on_zero(t: BaseTrainer) -> dict[str, Any]:
        return {"mse": Mean(torch.ones(2) if t.rank == 0 else torch.ones(()), 2)}

    def other_names(t: BaseTrainer) -> dict[str, Any]:
        return {"mse": Mean(1.0, 1), "a" if t.rank == 0 else "b": Sum(1)}

    def nothing(t: BaseTrainer) -> dict[str, Any]:
        return {"mse": Mean(0.0, 0)}

    def by_rank(t: BaseTrainer) -> dict[str, Any]:
        return {"mse": Mean(1.0, 1).then(lambda m: m + t.rank)}

    for step, (name, fn) in enumerate(
        [
            ("fails", fails_on_one),
            ("bad", bad_on_zero),
            ("names", other_names),
            ("empty", nothing),
            ("derived", by_rank),
        ],
        start=1,
    ):
        report[name] = run(name, fn)
        report[f"in_step_{step}"] = trainer.all_gather_object(rank)

    torch.save({k: v.clone() for k, v in trainer.pipeline.state_dict().items()}, out / f"linear-{rank}.pt")
    trainer.close()


def field_part(out: Path, report: dict[str, Any]) -> None:
    trainer = small_field(**FIELD)
    trainer.add_callback(GridPruning(every="4it", start=4))
    trainer.train()
    field = trainer.pipeline
    calls: list[int] = []  # the points of each field evaluation
    field.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    kept: dict[str, Any] = {}

    def validate(t: BaseTrainer) -> Any:
        calls.clear()
        result = t.validate()
        kept["calls"] = list(calls)
        kept["image"] = result["images"]["render"].clone()
        kept["shard"] = validation_shard(t)
        return result

    validator = Validator(validate, ranks="all", every=None, at_end=False)
    trainer.add_callback(validator)
    report["field"] = outcome(lambda: validator.run(trainer, force=True))
    report["field_calls"] = kept.get("calls")
    report["field_shard"] = kept.get("shard")
    torch.save(
        {"image": kept.get("image"), "weights": {k: v.clone() for k, v in field.state_dict().items()}},
        out / f"field-{trainer.rank}.pt",
    )
    trainer.close()


def main(out: Path) -> None:
    report: dict[str, Any] = {}
    linear_part(out, report)
    field_part(out, report)
    (out / f"rank-{report['rank']}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
