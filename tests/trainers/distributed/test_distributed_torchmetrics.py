"""``Validator`` with torchmetrics metrics under 2 real ranks (gloo): with ``ranks="all"`` each rank validates its
own shard of an 11-row set (6 and 5 rows) and every rank publishes the values of the whole set -- exactly what
torchmetrics computes over all 11 rows in one process, not a mean of the shards' means; with ``ranks="zero"`` rank 0
computes from its own states without waiting for a sync nobody else joins. Images come from rank 0 only. Then the
bad combinations: each fails on every rank, and the ranks stay in step. The ranks run ``tm_app.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy

from tests.trainers.distributed.ranks import start_ranks, wait_ranks

APP = Path(__file__).resolve().parent / "tm_app.py"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("torchmetrics")
    processes = start_ranks([str(APP), str(out)], out, env={"OMP_NUM_THREADS": "1", "STEPBUS_DIST_TIMEOUT": "60"})
    outputs, _ = wait_ranks(processes, 180)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    reports = [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    reports[0]["out"] = str(out)
    return reports


def labels(values: torch.Tensor) -> torch.Tensor:
    return (values.squeeze(1) > 0.5).long()


def in_one_process(preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The metrics over the whole set, computed by torchmetrics in this single process."""
    return {
        "acc": float(BinaryAccuracy()(labels(preds), labels(target))),
        "mse": float(MeanSquaredError()(preds, target)),
        "err": float(MeanMetric()((preds - target).abs())),
    }


def whole_set(zero: dict[str, Any], one: dict[str, Any], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th validation's rows from both ranks, put back in row order."""
    rows = zero["sharded"][k]["rows"] + one["sharded"][k]["rows"]
    preds = torch.tensor(zero["sharded"][k]["preds"] + one["sharded"][k]["preds"])
    target = torch.tensor(zero["sharded"][k]["target"] + one["sharded"][k]["target"])
    order = torch.tensor(sorted(range(len(rows)), key=rows.__getitem__))
    return preds[order], target[order]


def test_each_rank_validates_its_own_unequal_shard(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert [f["rows"] for f in zero["sharded"]] == [[0, 2, 4, 6, 8, 10]] * 2
    assert [f["rows"] for f in one["sharded"]] == [[1, 3, 5, 7, 9]] * 2
    assert [f["rows"] for f in zero["whole"]] == [list(range(11))] * 2  # ranks="zero": rank 0 alone, every row
    assert one["whole"] == []


def test_every_rank_publishes_the_values_of_the_whole_set(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    paths = [v["paths"] for v in zero["validations"]]  # only rank 0 has images (test_images_come_from_rank_zero)
    assert zero["validations"] == [
        {**v, "images": ["rank"], "paths": p} for v, p in zip(one["validations"], paths, strict=True)
    ]
    everywhere = [v for v in zero["validations"] if v["validator"] == "Validator"]
    on_zero = [v for v in zero["validations"] if v["validator"] == "zero"]
    assert len(everywhere) == len(on_zero) == 2
    assert everywhere[0]["metrics"]["val/mse"] != everywhere[1]["metrics"]["val/mse"]  # training went on between
    for k, (published, whole) in enumerate(zip(everywhere, on_zero, strict=True)):
        preds, target = whole_set(zero, one, k)
        expected = in_one_process(preds, target)
        assert published["metrics"] == {f"val/{name}": value for name, value in expected.items()}
        assert whole["metrics"] == {f"zero/{name}": value for name, value in expected.items()}
        assert torch.equal(preds, torch.tensor(zero["whole"][k]["preds"]))  # the same outputs as rank 0 alone saw
        # by hand: counts and sums over the 11 rows
        correct = int((labels(preds) == labels(target)).sum())
        assert published["metrics"]["val/acc"] == pytest.approx(correct / 11, abs=1e-7)
        errors = (preds - target).double()
        assert published["metrics"]["val/mse"] == pytest.approx(float((errors**2).sum()) / 11, rel=1e-7)
        assert published["metrics"]["val/err"] == pytest.approx(float(errors.abs().sum()) / 11, rel=1e-7)
        # not the mean of the shards' means (6 and 5 rows weigh differently)
        shard_means = [
            float(torch.tensor(r["sharded"][k]["preds"]).sub(torch.tensor(r["sharded"][k]["target"])).abs().mean())
            for r in (zero, one)
        ]
        assert published["metrics"]["val/err"] != pytest.approx(sum(shard_means) / 2, rel=1e-4)


def test_best_values_and_the_state_are_the_same_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert zero["state"] == one["state"]
    assert zero["checkpoint_state"] == one["checkpoint_state"]
    last = zero["validations"][-2]["metrics"]
    assert zero["state"]["best/acc"] == max(v["metrics"]["val/acc"] for v in zero["validations"][::2])
    assert zero["checkpoint_state"]["last"] == {name.split("/")[1]: value for name, value in last.items()}
    assert zero["counts_after"] == one["counts_after"] == [0, 0]  # reset after each validation, on every rank


def test_images_come_from_rank_zero(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    out = Path(zero["out"]) / "run"
    assert [v["paths"] for v in zero["validations"]] == [
        {"rank": str(out / prefix / f"rank-{iteration:08d}.png")} for iteration in (4, 8) for prefix in ("val", "zero")
    ]
    assert all(v["paths"] == {} for v in one["validations"])
    for path in out.rglob("*.png"):
        assert np.asarray(Image.open(path)).tolist() == [[0, 0], [0, 0]]  # filled with its rank: rank 1's is white


def test_bad_combinations_fail_on_every_rank_and_leave_the_ranks_in_step(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    for report in ranks:
        assert [report[f"in_step_{n}"] for n in range(1, 5)] == [[0, 1]] * 4
        kind, message = report["plain"]
        assert kind == "TypeError"
        assert message.startswith("Validator 'plain': ['loss'] from its fn <function main.<locals>.plain at 0x")
        assert message.endswith(
            " must be sums and counts (callbacks.Mean, callbacks.Sum) or torchmetrics metrics: with ranks='all' "
            "each rank sees only its shard, so plain numbers would differ between ranks (return e.g. Mean(total, "
            "count) or Sum(value), which the ranks add up, or a torchmetrics MeanMetric), or use ranks='zero'"
        )
        assert report["other_names"] == [
            "ValueError",
            "Validator 'names': with ranks='all' every rank must return the same metrics in the same order; rank 0 "
            "returned ['n', 'a'], rank 1 ['n', 'b']",
        ]
        assert report["unsynced"] == [
            "ValueError",
            "Validator 'unsynced': metric 'n' is 6.0 on rank 0 but 5.0 on rank 1: its compute() did not combine the "
            "ranks' states; with ranks='all' use torchmetrics metrics with sync_on_compute=True (the default)",
        ]
    assert one["fails_on_one"] == ["ValueError", "no shard on rank 1"]  # the rank that failed: its own error
    assert zero["fails_on_one"] == [
        "RuntimeError",
        "Validator 'fails': validation failed on rank 1: ValueError: no shard on rank 1",
    ]
