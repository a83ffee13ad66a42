"""What ``strategy="fsdp"`` refuses, and the words it uses: in a real 2-rank job (``fsdp_refusals.py``) and in one
process, where the whole model is trained and only the options are checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.trainers.distributed.ranks import torchrun
from trainers.distributed.fsdp import check_options, units_of
from trainers.engine.trainer import BaseTrainer

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "tests" / "trainers" / "distributed" / "fsdp_refusals.py"


@pytest.mark.slow  # a 2-rank job
def test_an_fsdp_job_refuses_what_cannot_work_on_shards(tmp_path: Path) -> None:
    result = torchrun([str(APP), str(tmp_path)], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "refusals.json").read_text(encoding="utf-8"))
    assert found == {
        "sharded": "True FSDPSequential",
        "ema": "ValueError: EMA 'EMA': with strategy='fsdp' each rank holds only a shard of the weights, and the "
        "average is checkpointed whole by rank 0; train with strategy='ddp' to keep an EMA",
        "export_full": "ValueError: PipelineExport 'PipelineExport': format='full' pickles the module, and with "
        "strategy='fsdp' each rank's module holds only its shard; use format='state_dict' (the whole state, "
        "gathered from the ranks)",
        "validator_zero": "ValueError: Validator 'Validator': ranks='zero' cannot validate under strategy='fsdp': the "
        "parameters are sharded over the ranks, so rank 0 alone cannot run the model (every forward is a "
        "collective); use ranks='all', every rank validating its shard into sums and counts (callbacks.Mean, "
        "callbacks.Sum) or torchmetrics metrics",
        "validator_all": "accepted",
        "own_steps": "ValueError: strategy='fsdp' shards the parameters under the default step; "
        "OwnSteps.optimization_step orders its own updates, which run with strategy='ddp'",
        "stepped_optimizer": "ValueError: strategy='fsdp': the SGD optimizer already holds state (it stepped before "
        "the trainer was built); its state cannot follow the parameters onto their shards -- give the trainer a "
        "fresh optimizer or a factory",
        "units": "ValueError: fsdp options: units ['Block'] match no submodule of Sequential; its submodules are of "
        "the classes ['Linear', 'Tanh']",
        "ddp_options": "ValueError: ddp options are given but strategy='fsdp': give fsdp options instead, or "
        "strategy='ddp'",
    }


def _tiny(**options: Any) -> BaseTrainer:
    data = TensorDataset(torch.rand(32, 2), torch.rand(32, 1))
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    return BaseTrainer(
        model, data, max_epochs=1, batch_size=8, loss_fn=lambda p, b: nn.functional.mse_loss(p(b[0]), b[1]), **options
    )


def test_one_process_trains_the_whole_model_with_strategy_fsdp(tmp_path: Path) -> None:
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    trainer = _tiny(strategy="fsdp", fsdp={"units": "root"}, device="cpu", run_dir=tmp_path)
    assert (trainer.strategy, trainer.sharded, type(trainer.pipeline).__name__) == ("fsdp", False, "Sequential")
    trainer.train()
    trainer.save_checkpoint(tmp_path / "step.pt")
    assert (tmp_path / "step.pt").is_file()  # a whole-model file: one process holds everything
    trainer.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"strategy": "zero"},
            "strategy must be 'ddp' (each rank holds the whole model; gradients all-reduced) or "
            "'fsdp' (parameters, gradients and optimizer state sharded over the ranks), got 'zero'",
        ),
        (
            {"fsdp": {"units": "root"}},
            "fsdp options are given but strategy='ddp': set strategy='fsdp' to shard the model",
        ),
        (
            {"strategy": "fsdp", "fsdp": {"unit": "root"}},
            "fsdp options: unknown ['unit']; valid options are units: "
            "'children', 'root', a list of module class names, or a function pipeline -> modules; "
            "reshard_after_forward: True (free the gathered parameters after each forward) or False (keep them until "
            "the backward: less communication, more memory)",
        ),
        (
            {"strategy": "fsdp", "fsdp": {"units": "leaves"}},
            "fsdp options: units must be 'children', 'root', a list "
            "of module class names, or a function pipeline -> modules; got 'leaves'",
        ),
    ],
)
def test_bad_strategy_options_are_refused_in_any_process(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"options|strategy") as refused:
        _tiny(**options)
    assert str(refused.value) == message


def test_units_choose_submodules_innermost_first() -> None:
    first, second, last = nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 1)
    inner = nn.Sequential(first, second)
    model = nn.Sequential(inner, nn.ReLU(), last)
    assert units_of(model, "root") == []
    assert units_of(model, "children") == [last, inner]  # ReLU holds no parameter
    assert units_of(model, ["Linear"]) == [last, second, first]
    assert units_of(model, lambda m: [inner]) == [inner]
    with pytest.raises(ValueError, match=r"units\(\) must return submodules of the pipeline"):
        units_of(model, lambda m: [m])
    assert check_options(None) == {"units": "children", "reshard_after_forward": True}
    with pytest.raises(TypeError, match="reshard_after_forward must be True or False, got 'yes'"):
        check_options({"reshard_after_forward": "yes"})
