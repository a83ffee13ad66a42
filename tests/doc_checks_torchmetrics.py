"""Checks of docs/torchmetrics.md's blocks: each runs as the page shows it on a small real trainer (the names a
fragment uses, ``trainer``, ``val_set``, ``run_dir``, supplied), and its values are compared with torchmetrics run
directly on the same batches; the sharded validation runs on 2 real ranks (gloo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy

from callbacks import Validator
from lifecycle import Status
from tests.doc_checks import check, points, run, small_trainer
from tests.doc_pages import Block
from tests.doc_ranks import run_on_two_ranks
from tests.support import Recorder


def val_points(count: int = 11) -> TensorDataset:
    """A validation set of its own (not rows of the training set): ``count`` points, target the sum of x."""
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(7))
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


def direct(model: nn.Module, val_set: TensorDataset) -> dict[str, float]:
    """The page's metrics computed by torchmetrics directly, over the same batches in the same order."""
    mse, sign, loss = MeanSquaredError(), BinaryAccuracy(), MeanMetric()
    with torch.no_grad():
        for x, y in DataLoader(val_set, batch_size=16):
            pred = model(x)
            mse.update(pred, y)
            sign.update((pred > 0).long(), (y > 0).long())
            loss.update(nn.functional.mse_loss(pred, y, reduction="none"))
    return {"mse": float(mse.compute()), "sign": float(sign.compute()), "loss": float(loss.compute())}


def by_hand(model: nn.Module, val_set: TensorDataset) -> dict[str, float]:
    x, y = val_set.tensors
    with torch.no_grad():
        pred = model(x).double()
    return {"mse": float(((pred - y) ** 2).mean()), "sign": float(((pred > 0) == (y > 0)).double().mean())}


def validations(rec: Recorder) -> list[dict[str, float]]:
    return [payload["metrics"] for event, payload in rec.payloads if event == "post_validation"]


@check("tm-given")
def _tm_given(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = small_trainer(max_epochs=3)
    rec = trainer.add_callback(Recorder())
    val_set = val_points(40)  # batches of 16, 16 and 8
    namespace = run(block, {"trainer": trainer, "val_set": val_set})
    validator = namespace["validator"]
    assert isinstance(validator, Validator)
    assert trainer.status is Status.COMPLETED
    runs = validations(rec)
    assert len(runs) == validator.count == 3
    expected = direct(trainer.pipeline, val_set)  # the last validation ran on the final weights
    assert runs[-1] == {"val/mse": expected["mse"], "val/sign": expected["sign"]}
    hand = by_hand(trainer.pipeline, val_set)
    assert runs[-1]["val/mse"] == pytest.approx(hand["mse"], rel=1e-6)
    assert runs[-1]["val/sign"] == pytest.approx(hand["sign"], abs=1e-7)
    metrics = trainer.state.metrics
    assert metrics["best/mse"] == min(r["val/mse"] for r in runs)  # MeanSquaredError: lower is better
    assert metrics["best/sign"] == max(r["val/sign"] for r in runs)  # BinaryAccuracy: higher is better
    assert all(m.update_count == 0 for m in validator.metrics.values())  # type: ignore[union-attr]


@check("tm-validate")
def _tm_validate(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    my_trainer = run(block, {})["MyTrainer"]
    val_set = val_points(40)
    rec = Recorder()
    trainer = my_trainer(  # type: ignore[operator]
        nn.Linear(2, 1),
        points(),
        val_set=val_set,
        loss_fn=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
        max_epochs=2,
        batch_size=8,
        device="cpu",
        callbacks=[Validator(), rec],
    )
    assert trainer.train() is Status.COMPLETED
    runs = validations(rec)
    assert len(runs) == 2
    expected = direct(trainer.pipeline, val_set)
    assert runs[-1] == {"val/loss": expected["loss"], "val/sign": expected["sign"]}
    assert runs[-1]["val/loss"] == pytest.approx(by_hand(trainer.pipeline, val_set)["mse"], rel=1e-6)
    assert trainer.val_loss.update_count == trainer.val_sign.update_count == 0


@check("tm-monitor")
def _tm_monitor(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callbacks import EarlyStopping

    namespace = run(block, {"run_dir": tmp_path})
    assert namespace["stop"].mode == namespace["best"].mode == "max"  # type: ignore[attr-defined]
    assert EarlyStopping(monitor="val/mse").mode == "min"  # a known name needs no mode
    with pytest.raises(ValueError, match=r"metric 'val/sign' has no known direction"):
        EarlyStopping(monitor="val/sign")


@check("tm-sharded")
def _tm_sharded(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preamble = (
        "from torchmetrics import MeanSquaredError\nfrom torchmetrics.classification import BinaryAccuracy\n\n"
        "from callbacks import Validator\nfrom tests.doc_checks_torchmetrics import by_hand, val_points"
    )
    zero, one = run_on_two_ranks(block, tmp_path, preamble=preamble, reference="by_hand")
    assert zero["world_size"] == 2
    assert zero["published"] == one["published"]  # every rank publishes the same values
    assert zero["count"] == one["count"] == 1
    published: dict[str, Any] = zero["published"]
    assert set(published) == {"val/mse", "best/mse", "val/sign", "best/sign"}
    # the whole set's values (6 rows on rank 0, 5 on rank 1), on the weights both ranks hold
    assert published["val/mse"] == pytest.approx(zero["reference"]["mse"], rel=1e-6)
    assert published["val/sign"] == pytest.approx(zero["reference"]["sign"], abs=1e-7)
    assert zero["reference"] == one["reference"]
