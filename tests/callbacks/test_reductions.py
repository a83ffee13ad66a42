"""Sums and counts as validation results (``callbacks.reductions``), in one process: the value types and their
errors, the one float64 vector the ranks would add up, a ``Validator`` publishing them with ``ranks="zero"`` and
``"all"`` (beside plain numbers and torchmetrics metrics), the errors it raises for them, the shard a validation
sees (``validation_shard``) and the FSDP rule's condition on the world size. Two ranks:
``tests/trainers/distributed/test_distributed_reductions.py``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torchmetrics import MeanMetric

from callbacks import Mean, Reduction, Sum, Validator, validation_shard
from callbacks.reductions import pack, sum_over_ranks, unpack
from callbacks.validation_sharding import ValidationShard
from tests.support import Recorder, make_trainer
from trainers import BaseTrainer


# ---------------------------------------------------------------------------------------------- the value types
def test_values_over_one_process() -> None:
    mean = Mean(torch.tensor(3.0), 4)
    assert mean.parts == (torch.tensor(3.0), 4)
    assert (mean.kind, float(mean), mean.local()) == ("Mean", 0.75, 0.75)
    assert mean.value([6.0, 8.0]) == 0.75  # from every rank's parts added up
    assert float(Sum(5)) == 5.0
    assert float(Sum(torch.tensor([2.5], dtype=torch.float16))) == 2.5
    root = mean.then(math.sqrt)
    assert isinstance(root, Reduction)
    assert root.parts == mean.parts
    assert (root.kind, float(root)) == ("Mean.then(sqrt)", math.sqrt(0.75))
    twice = root.then(lambda r: torch.tensor(r * 2, dtype=torch.float64))  # a one-element tensor is a number too
    assert (twice.kind, float(twice)) == ("Mean.then(sqrt).then(<lambda>)", 2 * math.sqrt(0.75))
    of = Mean.of(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    assert of.parts[0].dtype == torch.float64
    assert (float(of.parts[0]), of.parts[1], float(of)) == (12.0, 4, 3.0)
    assert repr(Mean(1.5, 2)) == "<Mean of (1.5, 2)>"
    assert repr(Sum(torch.tensor(2.0))) == "<Sum of (tensor(2.0))>"


def test_a_tensor_part_stays_on_its_device_and_out_of_the_graph() -> None:
    weight = torch.tensor(2.0, requires_grad=True)
    total = Sum(weight * 3)
    assert isinstance(total.parts[0], torch.Tensor)
    assert not total.parts[0].requires_grad


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Mean("3", 4), TypeError, "Mean: total must be a number or a one-element real tensor, got str"),
        (lambda: Mean(3.0, None), TypeError, "Mean: count must be a number or a one-element real tensor, got NoneType"),
        (lambda: Mean(3.0, -1), ValueError, "Mean: count must be a finite number >= 0, got -1"),
        (lambda: Mean(3.0, math.inf), ValueError, "Mean: count must be a finite number >= 0, got inf"),
        (lambda: Mean(3.0, math.nan), ValueError, "Mean: count must be a finite number >= 0, got nan"),
        (lambda: Sum(True), TypeError, "Sum: value must be a number or a one-element real tensor, got bool"),
        (
            lambda: Mean(torch.ones(2), 2),
            TypeError,
            "Mean: total must be a number or a one-element real tensor, got a torch.float32 tensor of shape (2,)",
        ),
        (
            lambda: Sum(torch.tensor(1j)),
            TypeError,
            "Sum: value must be a number or a one-element real tensor, got a torch.complex64 tensor of shape ()",
        ),
        (lambda: Mean(1.0, 2).then(3), TypeError, "Mean.then(fn): fn must be callable as fn(value) -> number, got 3"),
        (lambda: Mean.of([1.0, 2.0]), TypeError, "Mean.of: values must be a real tensor, got list"),
    ],
)
def test_bad_values_are_refused_when_built(build: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        build()
    assert str(caught.value) == message


def test_the_parts_travel_as_one_float64_vector() -> None:
    values = {
        "mse": Mean(torch.tensor(3.0, dtype=torch.float32), 4),
        "n": Sum(7),
        "psnr": Mean(1.0, torch.tensor(8)).then(lambda m: -10 * math.log10(m)),
    }
    packed = pack(values, torch.device("cpu"))
    assert packed.dtype == torch.float64
    assert packed.tolist() == [3.0, 4.0, 7.0, 1.0, 8.0]
    assert sum_over_ranks(packed, 1) is packed  # one process: nothing to add
    doubled = packed * 2  # what two ranks with the same parts would add up to
    assert unpack(values, doubled, "V") == {"mse": 0.75, "n": 14.0, "psnr": -10 * math.log10(1 / 8)}
    assert pack({}, torch.device("cpu")).shape == (0,)
    with pytest.raises(ValueError, match=r"^V: metric 'mse': Mean: the count is 0 over every rank"):
        unpack({"mse": Mean(0.0, 0)}, pack({"mse": Mean(0.0, 0)}, torch.device("cpu")), "V")


# ---------------------------------------------------------------------------------------------- in a Validator
def run_once(fn: Any, **kwargs: Any) -> tuple[dict[str, float] | None, Recorder, BaseTrainer]:
    rec = Recorder()
    validator = Validator(fn, every=None, at_end=False, **kwargs)
    trainer = make_trainer(max_epochs=1, callbacks=[validator, rec])
    trainer.train()
    return validator.run(trainer), rec, trainer


@pytest.mark.parametrize("ranks", ["zero", "all"])
def test_a_validator_publishes_total_over_count_and_derived_values(ranks: str) -> None:
    seen: list[tuple[int, int]] = []
    tm = MeanMetric()

    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        seen.append(validation_shard(trainer))
        tm.update(torch.tensor([1.0, 2.0]))
        mse = Mean(torch.tensor(0.5), 8)
        return {"mse": mse, "psnr": mse.then(lambda m: -10 * math.log10(m)), "count": Sum(8), "tm": tm}

    published, rec, trainer = run_once(fn, ranks=ranks, modes={"count": "max", "tm": "min"})
    expected = {"val/mse": 0.0625, "val/psnr": -10 * math.log10(0.0625), "val/count": 8.0, "val/tm": 1.5}
    assert published == expected
    assert list(published or {}) == list(expected)  # the result's order, metrics after
    assert seen == [(0, 1)]  # one process: the whole set either way
    payload = next(p for event, p in rec.payloads if event == "post_validation")
    assert payload["metrics"] == expected
    assert payload["best"] == {"best/mse": 0.0625, "best/psnr": expected["val/psnr"], "best/count": 8.0, "best/tm": 1.5}
    assert {k: v for k, v in trainer.state.metrics.items() if k.startswith("val/")} == expected
    assert tm.update_count == 0  # reset after the validation, as before


def test_plain_numbers_beside_sums_are_fine_on_rank_zero() -> None:
    published, _, _ = run_once(lambda t: {"loss": 0.5, "mse": Mean(1.0, 4)})
    assert published == {"val/loss": 0.5, "val/mse": 0.25}


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        (
            {"mse": Mean(1.0, 2), "loss": 0.5},
            TypeError,
            "Validator 'Validator': ['loss'] from its fn {fn} must be sums and counts (callbacks.Mean, callbacks.Sum) "
            "or torchmetrics metrics: with ranks='all' each rank sees only its shard, so plain numbers would differ "
            "between ranks (return e.g. Mean(total, count) or Sum(value), which the ranks add up, or a torchmetrics "
            "MeanMetric), or use ranks='zero'",
        ),
        (
            {"mse": Mean(0.0, 0)},
            ValueError,
            "Validator 'Validator': metric 'mse': Mean: the count is 0 over every rank (nothing was measured), so "
            "there is no mean",
        ),
        (
            {"psnr": Mean(1.0, 2).then(str)},
            TypeError,
            "Validator 'Validator': metric 'psnr': Mean.then(str) must return a number or a one-element tensor, got "
            "str",
        ),
        (
            {"psnr": [1.0]},
            TypeError,
            "Validator 'Validator': metric 'psnr' from its fn {fn} must be a number, a one-element tensor, a sum or "
            "mean (callbacks.Mean, callbacks.Sum) or a torchmetrics metric, got list; put images under the 'images' "
            "key",
        ),
    ],
)
def test_bad_results_are_errors_that_name_the_validator(result: Any, error: type[Exception], message: str) -> None:
    def fn(trainer: BaseTrainer) -> Any:
        return result

    with pytest.raises(error) as caught:
        run_once(fn, ranks="all")
    assert str(caught.value) == message.format(fn=repr(fn))


def test_the_shard_is_the_whole_set_between_validations_and_after_a_failure() -> None:
    trainer = make_trainer(max_epochs=1)
    shard = ValidationShard.of(trainer)
    assert shard is ValidationShard.of(trainer)  # one per trainer
    assert validation_shard(trainer) == (0, 1)
    inside: list[tuple[int, int]] = []

    def fails_inside() -> None:
        with shard.sharded(1, 3):
            inside.append(validation_shard(trainer))
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        fails_inside()
    assert inside == [(1, 3)]
    assert validation_shard(trainer) == (0, 1)
    assert validation_shard(make_trainer(max_epochs=1)) == (0, 1)  # another trainer: its own


def test_ranks_zero_under_fsdp_is_only_refused_with_several_ranks() -> None:
    trainer = make_trainer(max_epochs=1)
    assert trainer.strategy == "ddp"
    trainer.strategy = "fsdp"  # one process: there is nothing to shard, rank 0 runs the whole model
    validator = Validator(lambda t: {"mse": Mean(1.0, 1)}, every=None, at_end=False)
    trainer.add_callback(validator)
    assert validator.run(trainer) == {"val/mse": 1.0}
