"""``Validator`` with torchmetrics metrics, on real training runs of a tiny ``nn.Linear``: given as ``metrics=``
and updated by ``fn(trainer, metrics)``, or returned by ``validate()``; the published values against torchmetrics
computed directly on the same data and against a hand count; reset between validations and after a failure;
directions from ``higher_is_better`` and ``modes``; collections and dict-valued metrics; ``ranks="all"`` in one
process; the errors; the checkpoint holding only numbers; and ``import callbacks`` without torchmetrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection, SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, MulticlassAccuracy
from torchmetrics.wrappers import ClasswiseWrapper

from callbacks import Validator
from lifecycle import Status
from tests.support import Recorder, make_dataset, make_trainer, mse
from trainers import BaseTrainer

ROOT = Path(__file__).resolve().parents[2]

#: the validation set: 11 rows (batches of 4, 4 and 3), its target thresholded into a binary label
VAL = make_dataset(11, data_seed=3)


def labels(values: torch.Tensor) -> torch.Tensor:
    return (values.squeeze(1) > 0.5).long()


class Recording:
    """``fn(trainer, metrics)`` over ``VAL`` (rows ``rows(k)`` at the k-th validation): updates ``acc`` with the
    thresholded outputs and ``mse`` with the raw ones, and keeps every batch it fed them."""

    def __init__(self, rows: Callable[[int], range] = lambda k: range(len(VAL))) -> None:
        self.rows = rows
        self.fed: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def __call__(self, trainer: BaseTrainer, metrics: Mapping[str, Any]) -> None:
        x, y = VAL.tensors
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        chosen = list(self.rows(len(self.fed)))
        for start in range(0, len(chosen), 4):
            index = torch.tensor(chosen[start : start + 4])
            batch = (trainer.pipeline(x[index]).detach(), y[index])
            batches.append(batch)
            if "acc" in metrics:
                metrics["acc"].update(labels(batch[0]), labels(batch[1]))
            if "mse" in metrics:
                metrics["mse"].update(*batch)
            if "n" in metrics:
                metrics["n"].update(torch.ones(len(index)))
        self.fed.append(batches)


def published(rec: Recorder) -> list[dict[str, float]]:
    return [payload["metrics"] for event, payload in rec.payloads if event == "post_validation"]


def test_given_metrics_equal_torchmetrics_on_the_same_data_and_a_hand_count() -> None:
    fn = Recording()
    rec = Recorder()
    validator = Validator(fn, metrics={"acc": BinaryAccuracy(), "mse": MeanSquaredError()}, every="1ep")
    trainer = make_trainer(max_epochs=3, callbacks=[validator, rec])
    assert trainer.train() is Status.COMPLETED
    runs = published(rec)
    assert len(runs) == len(fn.fed) == 3
    for values, batches in zip(runs, fn.fed, strict=True):
        direct_acc, direct_mse = BinaryAccuracy(), MeanSquaredError()  # the same batches, in the same order
        for p, t in batches:
            direct_acc.update(labels(p), labels(t))
            direct_mse.update(p, t)
        assert values == {"val/acc": float(direct_acc.compute()), "val/mse": float(direct_mse.compute())}
        preds = torch.cat([p for p, _ in batches])
        target = torch.cat([t for _, t in batches])
        correct = int((labels(preds) == labels(target)).sum())
        assert values["val/acc"] == pytest.approx(correct / 11, abs=1e-7)
        errors = [(float(p) - float(t)) ** 2 for p, t in zip(preds.flatten(), target.flatten(), strict=True)]
        assert values["val/mse"] == pytest.approx(sum(errors) / 11, rel=1e-6)
    assert [runs[0]["val/mse"], runs[1]["val/mse"]] != [runs[1]["val/mse"]] * 2  # training moved the outputs
    assert trainer.state.metrics["best/mse"] == min(r["val/mse"] for r in runs)
    assert validator.metrics["acc"].update_count == validator.metrics["mse"].update_count == 0  # reset after each


def test_each_validation_starts_from_reset_metrics() -> None:
    halves = [range(0, 6), range(6, 11), range(0, 11)]
    fn = Recording(lambda k: halves[k])
    rec = Recorder()
    metrics = {"acc": BinaryAccuracy(), "n": SumMetric()}
    validator = Validator(fn, metrics=metrics, every="1ep", modes={"n": "max"})
    make_trainer(max_epochs=3, callbacks=[validator, rec]).train()
    runs = published(rec)
    assert [r["val/n"] for r in runs] == [6.0, 5.0, 11.0]  # not 6, 11, 22: each counts only its own rows
    for values, batches in zip(runs, fn.fed, strict=True):
        preds, target = torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches])
        assert values["val/acc"] == float(BinaryAccuracy()(labels(preds), labels(target)))


def test_a_failed_validation_resets_the_metrics_too() -> None:
    acc = BinaryAccuracy()
    calls: list[int] = []

    def fn(trainer: BaseTrainer, metrics: Mapping[str, Any]) -> None:
        calls.append(trainer.state.iteration)
        metrics["acc"].update(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long))  # 4 right
        if len(calls) == 1:
            raise RuntimeError("the validation set went away")

    validator = Validator(fn, metrics={"acc": acc}, every=None, at_end=False)
    trainer = make_trainer(max_epochs=1, callbacks=[validator])
    trainer.train()
    with pytest.raises(RuntimeError, match="the validation set went away"):
        validator.run(trainer)
    assert acc.update_count == 0
    acc.update(torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))  # 4 wrong, outside any validation
    assert validator.run(trainer, force=True) == {"val/acc": 1.0}  # reset before it too: only its own 4 right
    assert acc.update_count == 0


def test_a_returned_metric_is_reset_after_a_later_validation_that_failed_half_way() -> None:
    acc = BinaryAccuracy()
    calls: list[int] = []

    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        calls.append(trainer.state.iteration)
        acc.update(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
        if len(calls) == 2:
            raise RuntimeError("failed before returning its metrics")
        return {"acc": acc}

    validator = Validator(fn, every=None, at_end=False)
    trainer = make_trainer(max_epochs=1, callbacks=[validator])
    trainer.train()
    assert validator.run(trainer) == {"val/acc": 1.0}
    with pytest.raises(RuntimeError, match="failed before returning"):
        validator.run(trainer, force=True)
    assert acc.update_count == 0  # the validator knew it from the first validation
    acc.update(torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long))  # updated between validations
    assert validator.run(trainer, force=True) == {"val/acc": 1.0}


class ClassifyingTrainer(BaseTrainer):
    """The Lightning way: the metric is the trainer's attribute; ``validate()`` updates it and returns it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_acc = BinaryAccuracy()
        self.val_loss = MeanMetric()
        self.fed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validate(self) -> dict[str, Any]:
        x, y = VAL.tensors
        out = self.pipeline(x)
        self.fed.append((out, y))
        self.val_acc.update(labels(out), labels(y))
        self.val_loss.update(torch.nn.functional.mse_loss(out, y, reduction="none"))
        return {"acc": self.val_acc, "loss": self.val_loss, "images": {"out": out.expand(11, 4)}}


def test_validate_may_return_the_metric_objects_it_updated(tmp_path: Path) -> None:
    rec = Recorder()
    trainer = make_trainer(
        max_epochs=2, cls=ClassifyingTrainer, loss_fn=mse, run_dir=tmp_path, callbacks=[Validator(), rec]
    )
    assert isinstance(trainer, ClassifyingTrainer)
    trainer.train()
    runs = published(rec)
    assert len(runs) == len(trainer.fed) == 2
    for values, (out, y) in zip(runs, trainer.fed, strict=True):
        assert values == {
            "val/acc": float(BinaryAccuracy()(labels(out), labels(y))),
            "val/loss": float(torch.nn.functional.mse_loss(out, y)),
        }
    assert trainer.val_acc.update_count == trainer.val_loss.update_count == 0
    assert trainer.state.metrics["best/loss"] == min(r["val/loss"] for r in runs)  # "loss" is min by name
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["out-00000003.png", "out-00000006.png"]


class Scripted:
    """``fn(trainer, metrics)`` feeding ``acc`` (BinaryAccuracy) the k-th ``(right, wrong)`` counts and ``err``
    (MeanSquaredError) the k-th squared error, so the values of each validation are known in advance."""

    def __init__(self, counts: Sequence[tuple[int, int]], errors: Sequence[float]) -> None:
        self.counts, self.errors, self.k = counts, errors, 0

    def __call__(self, trainer: BaseTrainer, metrics: Any) -> None:
        right, wrong = self.counts[self.k]
        target = torch.ones(right + wrong, dtype=torch.long)
        preds = torch.cat([torch.ones(right, dtype=torch.long), torch.zeros(wrong, dtype=torch.long)])
        metrics["acc"].update(preds, target)
        if "f1" in metrics:
            metrics["f1"].update(preds, target)
        metrics["err"].update(torch.tensor([self.errors[self.k] ** 0.5]), torch.zeros(1))
        self.k += 1


COUNTS = [(1, 1), (4, 0), (1, 3)]  # acc 0.5, 1.0, 0.25
ERRORS = [4.0, 1.0, 9.0]


def best_over_time(rec: Recorder) -> list[dict[str, float]]:
    return [payload["best"] for event, payload in rec.payloads if event == "post_validation"]


@pytest.mark.parametrize("whole", [False, True], ids=["dict", "collection"])
def test_directions_come_from_higher_is_better(whole: bool) -> None:
    # neither "acc" nor "err" is in the built-in table: the metrics' own directions decide
    members = {"acc": BinaryAccuracy(), "err": MeanSquaredError()}
    rec = Recorder()
    metrics = MetricCollection(members) if whole else members
    validator = Validator(Scripted(COUNTS, ERRORS), metrics=metrics, every="1ep")
    trainer = make_trainer(max_epochs=3, callbacks=[validator, rec])
    trainer.train()
    assert [r["val/acc"] for r in published(rec)] == [0.5, 1.0, 0.25]
    assert [r["val/err"] for r in published(rec)] == [4.0, 1.0, 9.0]
    # best/acc follows the max, best/err the min; the payload holds the best of the validation's metrics
    assert best_over_time(rec) == [
        {"best/acc": 0.5, "best/err": 4.0},
        {"best/acc": 1.0, "best/err": 1.0},
        {"best/acc": 1.0, "best/err": 1.0},
    ]
    assert validator.best == {"acc": (1.0, 6), "err": (1.0, 6)}


def test_modes_override_higher_is_better() -> None:
    rec = Recorder()
    metrics = {"acc": BinaryAccuracy(), "err": MeanSquaredError()}
    validator = Validator(Scripted(COUNTS, ERRORS), metrics=metrics, every="1ep", modes={"acc": "min", "err": "max"})
    make_trainer(max_epochs=3, callbacks=[validator, rec]).train()
    assert best_over_time(rec)[-1] == {"best/acc": 0.25, "best/err": 9.0}


def test_a_collection_under_a_name_publishes_each_key_with_its_own_direction() -> None:
    def fn(trainer: BaseTrainer, metrics: Any) -> dict[str, Any]:
        scripted(trainer, metrics["cls"])
        per_class.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2]))
        return {"pc": per_class}

    scripted = Scripted(COUNTS, ERRORS)
    per_class = ClasswiseWrapper(MulticlassAccuracy(num_classes=3, average=None), labels=["a", "b", "c"])
    collection = MetricCollection({"acc": BinaryAccuracy(), "err": MeanSquaredError(), "f1": BinaryF1Score()})
    rec = Recorder()
    validator = Validator(fn, metrics={"cls": collection}, every="1ep")
    make_trainer(max_epochs=3, callbacks=[validator, rec]).train()
    runs = published(rec)
    assert list(runs[0]) == [
        "val/cls/acc",
        "val/cls/err",
        "val/cls/f1",
        "val/pc/multiclassaccuracy_a",
        "val/pc/multiclassaccuracy_b",
        "val/pc/multiclassaccuracy_c",
    ]
    assert [r["val/cls/acc"] for r in runs] == [0.5, 1.0, 0.25]
    assert [r["val/cls/f1"] for r in runs] == [pytest.approx(2 / 3), 1.0, pytest.approx(0.4)]
    assert runs[0]["val/pc/multiclassaccuracy_b"] == 0.5  # one of two right: the wrapper's dict, per class
    assert best_over_time(rec)[-1] == {
        "best/cls/acc": 1.0,
        "best/cls/err": 1.0,
        "best/cls/f1": 1.0,
        "best/pc/multiclassaccuracy_a": 1.0,
        "best/pc/multiclassaccuracy_b": 0.5,
        "best/pc/multiclassaccuracy_c": 1.0,
    }
    assert per_class.metric.update_count == 0  # a returned metric is reset as the given ones are


def test_ranks_all_in_one_process_publishes_the_same_values() -> None:
    values = []
    for ranks in ("zero", "all"):
        rec = Recorder()
        validator = Validator(Recording(), metrics={"acc": BinaryAccuracy(), "mse": MeanSquaredError()}, ranks=ranks)
        make_trainer(max_epochs=2, callbacks=[validator, rec]).train()
        values.append(published(rec))
    assert values[0] == values[1]
    assert len(values[0]) == 2


# ---------------------------------------------------------------------------------------------------- errors


def test_a_metric_without_a_direction_needs_modes() -> None:
    def fn(trainer: BaseTrainer, metrics: Any) -> None:
        metrics["spread"].update(torch.tensor([1.0, 2.0]))

    with pytest.raises(ValueError, match=r"metric 'spread' has no known direction") as caught:
        run_once(fn, metrics={"spread": MeanMetric()})
    message = str(caught.value)
    assert message.startswith("Validator 'Validator': metric 'spread' has no known direction")
    assert "modes={'spread': 'max'}" in message
    assert message.endswith("(its torchmetrics MeanMetric has higher_is_better=None)")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"metrics": {"acc": BinaryAccuracy()}},
            TypeError,
            "Validator 'Validator': metrics= needs fn(trainer, metrics) to update them (trainer.validate() takes no "
            "metrics; it may return the metric objects it updated instead)",
        ),
        (
            {"fn": print, "metrics": {"acc": 0.5}},
            TypeError,
            "Validator 'Validator': metrics['acc'] must be a torchmetrics Metric or MetricCollection, got float",
        ),
        (
            {"fn": print, "metrics": [BinaryAccuracy()]},
            TypeError,
            "Validator 'Validator': metrics must be a non-empty dict of names to torchmetrics Metric or "
            "MetricCollection objects, or a MetricCollection, got list",
        ),
        (
            {"fn": print, "metrics": {"images": BinaryAccuracy()}},
            ValueError,
            "Validator 'Validator': metrics name 'images' must be a non-empty name without '/' at its ends, and not "
            "'images'",
        ),
        (
            {"fn": print, "ranks": "some"},
            ValueError,
            "Validator 'Validator': ranks must be 'zero' (rank 0 validates, the other ranks get its values) or 'all' "
            "(every rank validates its shard into sums and counts or torchmetrics metrics), got 'some'",
        ),
        (
            {"fn": 3, "metrics": {"acc": BinaryAccuracy()}},
            TypeError,
            "Validator 'Validator': fn must be callable as fn(trainer, metrics) -> dict or None, got 3",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        Validator(**kwargs)
    assert str(caught.value) == message


def run_once(fn: Callable[..., Any], **kwargs: Any) -> BaseTrainer:
    validator = Validator(fn, every=None, at_end=False, **kwargs)
    trainer = make_trainer(max_epochs=1, callbacks=[validator])
    trainer.train()
    validator.run(trainer)
    return trainer


def test_plain_numbers_are_refused_on_every_rank() -> None:
    acc = BinaryAccuracy()

    def fn(trainer: BaseTrainer, metrics: Any) -> dict[str, Any]:
        metrics["acc"].update(torch.ones(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
        return {"loss": 0.25, "count": torch.tensor(3)}

    with pytest.raises(TypeError) as caught:
        run_once(fn, metrics={"acc": acc}, ranks="all")
    assert str(caught.value) == (
        f"Validator 'Validator': ['count', 'loss'] from its fn {fn!r} must be sums and counts (callbacks.Mean, "
        "callbacks.Sum) or torchmetrics metrics: with ranks='all' each rank sees only its shard, so plain numbers "
        "would differ between ranks (return e.g. Mean(total, count) or Sum(value), which the ranks add up, or a "
        "torchmetrics MeanMetric), or use ranks='zero'"
    )
    assert acc.update_count == 0


def test_a_metric_that_computes_a_vector_is_refused() -> None:
    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        per_class.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
        return {"acc": per_class}

    per_class = MulticlassAccuracy(num_classes=3, average=None)
    with pytest.raises(TypeError) as caught:
        run_once(fn)
    assert str(caught.value) == (
        "Validator 'Validator': metric 'acc': MulticlassAccuracy.compute() gave Tensor of shape (3,), not one "
        "number; use a metric that averages (e.g. average='macro'), or a ClasswiseWrapper, whose compute() is a "
        "dict of numbers"
    )
    assert per_class.update_count == 0


def test_a_returned_metric_may_not_reuse_a_given_name() -> None:
    def fn(trainer: BaseTrainer, metrics: Any) -> dict[str, Any]:
        return {"acc": BinaryAccuracy()}

    with pytest.raises(ValueError, match=r"returned 'acc', a name of metrics=$"):
        run_once(fn, metrics={"acc": BinaryAccuracy()})


# ---------------------------------------------------------------------------------------------------- state


def test_the_checkpoint_holds_numbers_only(tmp_path: Path) -> None:
    validator = Validator(Recording(), metrics={"acc": BinaryAccuracy(), "mse": MeanSquaredError()})
    trainer = make_trainer(max_epochs=2, callbacks=[validator])
    trainer.train()
    path = trainer.save_checkpoint(tmp_path / "c.pt")
    saved = torch.load(path, weights_only=True)["callbacks"]["Validator"]
    assert saved == validator.state_dict()
    assert set(saved) == {"last", "best", "count", "last_iteration"}
    assert all(type(v) is float for v in saved["last"].values())
    assert {k: type(v[0]) for k, v in saved["best"].items()} == {"acc": float, "mse": float}
    fresh = Validator(Recording(), metrics={"acc": BinaryAccuracy(), "mse": MeanSquaredError()})
    resumed = make_trainer(max_epochs=3, callbacks=[fresh])
    resumed.restore(path)
    assert fresh.best == validator.best
    assert resumed.train() is Status.COMPLETED
    assert fresh.count == 3


def test_callbacks_import_without_torchmetrics() -> None:
    code = (
        "import sys\n"
        "import callbacks\n"
        "from callbacks.validator import Validator\n"
        "import callbacks.validation_torchmetrics, callbacks.validation_ranks\n"
        "from tests.support import make_trainer\n"
        "trainer = make_trainer(max_epochs=1, callbacks=[Validator(lambda t: {'loss': 1.0}, ranks='zero')])\n"
        "trainer.train()\n"
        "assert trainer.state.metrics['val/loss'] == 1.0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchmetrics'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
