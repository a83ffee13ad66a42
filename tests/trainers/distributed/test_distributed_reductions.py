"""Sums and counts (``callbacks.reductions``) validated on 2 real ranks (gloo, under ``torchrun``): with
``ranks="all"`` each rank validates its shard and every rank publishes the values of the whole set -- exactly
those of the same validation on rank 0 alone when every sum is exact, to float64's rounding otherwise; means are
total / count, not means of the shards' means. The image field's sharded validation matches the single-process
one, and its image is assembled on every rank, bit for bit the single-process render. Then the failures, each on
every rank with the ranks left in step, and the FSDP rule. The ranks run ``reductions_app.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from callbacks import Validator, validation_shard
from tests.support import small_field
from tests.trainers.distributed.ranks import torchrun
from trainers import BaseTrainer

pytestmark = pytest.mark.slow  # one 2-rank job shared by the module

APP = Path(__file__).resolve().parent / "reductions_app.py"
#: as in reductions_app.py
FIELD: dict[str, Any] = {"size": 45, "occupancy_threshold": 0.2, "batches_per_epoch": 6, "max_epochs": 2, "threads": 1}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("reductions")
    done = torchrun([str(APP), str(out)], out, env={"OMP_NUM_THREADS": "1", "STEPBUS_DIST_TIMEOUT": "60"})
    assert done.returncode == 0, done.stdout + done.stderr
    reports = [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    for report in reports:
        report["out"] = out
    return reports


def test_exact_sums_equal_the_validation_on_one_rank_and_means_are_not_means_of_means(
    ranks: list[dict[str, Any]],
) -> None:
    zero, one = ranks
    # each rank saw its shard from validation_shard: 4 rows and 3 rows of 7; rank 0 alone saw all 7
    assert [(s["shard"], s["rows"]) for s in zero["exact_seen"]] == [([0, 2], [0, 2, 4, 6])]
    assert [(s["shard"], s["rows"]) for s in one["exact_seen"]] == [([1, 2], [1, 3, 5])]
    assert [(s["shard"], s["rows"]) for s in zero["exact_zero_seen"]] == [([0, 1], list(range(7)))]
    assert one["exact_zero_seen"] == []
    assert zero["exact"][0] == one["exact"][0] == zero["exact_zero"][0] == one["exact_zero"][0] == "ok"
    sharded = zero["exact"][1]
    assert one["exact"][1] == sharded
    # one all_reduce for every sum and count: mae (2 parts), sq (1), n (1), rmse (2)
    assert zero["exact_all_reduces"] == one["exact_all_reduces"] == [[6]]
    # outputs and targets are eighths: every sum below is exact in any order, so the values are equal, not close
    assert {k.split("/")[1]: v for k, v in zero["exact_zero"][1].items()} == {
        k.split("/")[1]: v for k, v in sharded.items()
    }
    # by hand, from what the ranks fed in
    shards = [(s["preds"], s["target"]) for s in (zero["exact_seen"][0], one["exact_seen"][0])]
    errors = [[abs(p - t) for p, t in zip(preds, target, strict=True)] for preds, target in shards]
    total, squares = sum(map(sum, errors)), sum(e * e for part in errors for e in part)
    assert sharded == {
        "exact/mae": total / 7,
        "exact/sq": squares,
        "exact/n": 7.0,
        "exact/rmse": math.sqrt(squares / 7),
        "exact/tm_mae": total / 7,  # a torchmetrics MeanMetric in the same result: the same number
    }
    mean_of_means = (sum(errors[0]) / 4 + sum(errors[1]) / 3) / 2
    assert abs(sharded["exact/mae"] - mean_of_means) > 1e-3  # 4 and 3 rows: a mean of means weighs rows unequally


def test_float32_values_match_one_process_to_float64_rounding(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    values = torch.randn(1001, generator=torch.Generator().manual_seed(11), dtype=torch.float32) ** 2
    whole = float(values.double().sum()) / 1001  # what one process publishes for Mean.of(values)
    for report in ranks:
        assert report["real"][0] == report["real_zero"][0] == "ok"
    assert zero["real"][1] == one["real"][1]
    assert zero["real_zero"][1] == one["real_zero"][1] == {"real_zero/mse": whole}
    # the squares are the same float32 numbers on every rank; only the order of the float64 additions differs
    # (501 + 500 terms, then one more addition): relative error well under 1001 * 2**-53 ~ 1e-13
    assert zero["real"][1]["real/mse"] == pytest.approx(whole, rel=1e-12, abs=0)


def test_the_image_field_validates_on_every_rank_as_in_one_process(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    assert zero["field"][0] == one["field"][0] == "ok"
    published = zero["field"][1]
    assert one["field"][1] == published
    assert [zero["field_shard"], one["field_shard"]] == [[0, 2], [1, 2]]
    saved = [torch.load(zero["out"] / f"field-{r}.pt", weights_only=True) for r in (0, 1)]
    trainer = small_field(**FIELD)  # the same weights and occupancy, in this one process
    trainer.pipeline.load_state_dict(saved[0]["weights"])
    trainer.pipeline.occupancy.forget()
    kept: dict[str, Any] = {}

    def validate(t: BaseTrainer) -> Any:
        result = t.validate()
        kept["image"], kept["shard"] = result["images"]["render"], validation_shard(t)
        return result

    validator = Validator(validate, every=None, at_end=False)
    trainer.add_callback(validator)
    alone = validator.run(trainer)
    assert alone is not None
    assert kept["shard"] == (0, 1)
    # every squared difference of two float32 values is exact in float64; the ranks add 23 and 22 rows' worth in
    # another order than one process adds all 45 rows: float64 rounding, relative ~1e-16 per addition
    assert published["val/mse"] == pytest.approx(alone["val/mse"], rel=1e-12, abs=0)
    assert published["val/psnr"] == pytest.approx(alone["val/psnr"], rel=1e-12, abs=0)
    assert alone["val/psnr"] == -10 * math.log10(alone["val/mse"])
    # the image put together on each rank is the one-process render, bit for bit
    assert torch.equal(saved[0]["image"], kept["image"])
    assert torch.equal(saved[1]["image"], kept["image"])
    # each rank evaluated the field once (the same number of times), on its rows' occupied pixels
    occupied = trainer.pipeline.occupancy.pixel_mask()
    assert occupied.sum() < occupied.numel()  # pruning left some blocks black
    assert zero["field_calls"] == [int(occupied[0::2].sum())]
    assert one["field_calls"] == [int(occupied[1::2].sum())]
    assert sum(zero["field_calls"] + one["field_calls"]) == trainer.pipeline.rendered_samples
    trainer.close()


def test_failures_raise_on_every_rank_and_leave_the_ranks_in_step(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    for report in ranks:
        assert [report[f"in_step_{n}"] for n in range(6)] == [[0, 1]] * 6
        assert report["names"] == [
            "ValueError",
            "Validator 'names': with ranks='all' every rank must return the same metrics in the same order; rank 0 "
            "returned ['mse (Mean)', 'a (Sum)'], rank 1 ['mse (Mean)', 'b (Sum)']",
        ]
        assert report["empty"] == [
            "ValueError",
            "Validator 'empty': metric 'mse': Mean: the count is 0 over every rank (nothing was measured), so there "
            "is no mean",
        ]
        assert report["derived"] == [
            "ValueError",
            "Validator 'derived': metric 'mse' is 1.0 on rank 0 but 2.0 on rank 1: the ranks added the same sums, so "
            "what turned them into this value differs between the ranks",
        ]
    # the rank that failed raises its own error, the other one naming it
    assert one["fails"] == ["ValueError", "no shard on rank 1"]
    assert zero["fails"] == [
        "RuntimeError",
        "Validator 'fails': validation failed on rank 1: ValueError: no shard on rank 1",
    ]
    bad = "Mean: total must be a number or a one-element real tensor, got a torch.float32 tensor of shape (2,)"
    assert zero["bad"] == ["TypeError", bad]
    assert one["bad"] == ["RuntimeError", f"Validator 'bad': validation failed on rank 0: TypeError: {bad}"]
