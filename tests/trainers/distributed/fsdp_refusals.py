"""Run under ``torchrun`` by ``test_fsdp_refusals.py``: what an FSDP job refuses, with the message each refusal
gives. Every rank builds the same trainers in the same order (building one is a collective), and rank 0 writes
``OUT/refusals.json``: ``{case: "ExceptionType: message"}``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from callbacks import EMA, Mean, PipelineExport, Validator
from trainers.engine.trainer import BaseTrainer


def _data() -> TensorDataset:
    return TensorDataset(torch.rand(64, 2), torch.rand(64, 1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(pipeline: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(pipeline(x), y)


def _trainer(run_dir: Path, **options: Any) -> BaseTrainer:
    model = options.pop("model", None) or _model()
    settings: dict[str, Any] = {"max_epochs": 1, "batch_size": 16, "loss_fn": _loss, "device": "cpu"}
    settings.update(strategy="fsdp", run_dir=run_dir, **options)
    return BaseTrainer(model, _data(), **settings)


class OwnSteps(BaseTrainer):
    """A trainer that orders its own updates (as a GAN does)."""

    def optimization_step(self, batch: Any) -> torch.Tensor:
        loss = _loss(self.pipeline, batch)
        self.backward(loss)
        self.optimizer_step("optimizer")
        return loss


def main(out: Path) -> None:
    results: dict[str, str] = {}

    def attempt(case: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except (ValueError, TypeError) as exc:
            results[case] = f"{type(exc).__name__}: {exc}"
        else:
            results[case] = "accepted"

    sharded = _trainer(out)
    results["sharded"] = f"{sharded.sharded} {type(sharded.pipeline).__name__}"
    attempt("ema", lambda: sharded.add_callback(EMA()))
    attempt("export_full", lambda: sharded.add_callback(PipelineExport("model.pt", format="full")))
    attempt("validator_zero", lambda: sharded.add_callback(Validator(lambda t: {"x": 1.0})))
    attempt("validator_all", lambda: sharded.add_callback(Validator(lambda t: {"x": Mean(1.0, 1)}, ranks="all")))
    attempt("own_steps", lambda: OwnSteps(_model(), _data(), max_epochs=1, batch_size=16, strategy="fsdp"))
    model = _model()
    stepped = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 2)).sum().backward()
    stepped.step()
    attempt("stepped_optimizer", lambda: _trainer(out, model=model, optimizer=stepped))
    attempt("units", lambda: _trainer(out, fsdp={"units": ["Block"]}))
    attempt("ddp_options", lambda: _trainer(out, ddp={"static_graph": True}))
    sharded.close()
    if sharded.rank == 0:
        (out / "refusals.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
