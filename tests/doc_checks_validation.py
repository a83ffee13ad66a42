"""Checks of docs/validation.md's blocks: the sharded validation runs as the page shows it on 2 real ranks (gloo)
and its values are compared with a computation over the whole set; the derived PSNR runs in one process; the
command line parses and its config asks for ``ranks: all``."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from callbacks import Validator
from tests.doc_checks import check, run, small_trainer
from tests.doc_pages import ROOT, Block
from tests.doc_ranks import run_on_two_ranks
from tests.doc_shell import check_shell


def val_points(count: int = 11) -> TensorDataset:
    """A validation set of ``count`` points (11: 6 and 5 rows on two ranks), target the sum of x."""
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(7))
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


def whole_set(model: torch.nn.Module, val_set: TensorDataset) -> dict[str, float]:
    """The page's values over every row at once, by hand: squared errors in float64, right signs counted."""
    x, y = val_set.tensors
    with torch.no_grad():
        pred = model(x)
    right = int(((pred > 0) == (y > 0)).sum())
    return {"mse": float(((pred - y).double() ** 2).sum()) / len(y), "sign": right / len(y), "rows": float(len(y))}


@check("validation-shard", slow=True)
def _validation_shard(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preamble = "from tests.doc_checks_validation import val_points, whole_set"
    zero, one = run_on_two_ranks(block, tmp_path, preamble=preamble, reference="whole_set")
    assert zero["world_size"] == 2
    assert zero["published"] == one["published"]  # every rank publishes the same values
    assert zero["reference"] == one["reference"]  # the same weights on both ranks
    assert zero["count"] == 1
    published, whole = zero["published"], zero["reference"]
    assert set(published) == {"val/mse", "val/sign", "val/rows", "best/mse", "best/sign", "best/rows"}
    assert published["val/rows"] == 11.0
    assert published["val/sign"] == whole["sign"]  # counts of right signs: exact
    # 6 and 5 rows' float64 sums added, against one sum of 11 rows (and model outputs of batches of other sizes)
    assert published["val/mse"] == pytest.approx(whole["mse"], rel=1e-6)


@check("validation-derived")
def _validation_derived(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.randn(10, 2, generator=torch.Generator().manual_seed(3))
    targets = torch.rand(10, 1, generator=torch.Generator().manual_seed(4))
    trainer = small_trainer(max_epochs=1)
    namespace = run(block, {"trainer": trainer, "images": images, "targets": targets})
    validator = namespace["validator"]
    assert isinstance(validator, Validator)
    assert validator.ranks == "all"
    trainer.train()
    with torch.no_grad():
        squared = (trainer.pipeline(images) - targets) ** 2
        direct = namespace["evaluate"](trainer)  # type: ignore[operator]
    mse = float(squared.double().sum()) / 10
    published = {k: v for k, v in trainer.state.metrics.items() if k.startswith("val/")}
    assert published == {"val/mse": mse, "val/psnr": -10 * math.log10(mse)}
    assert float(direct["psnr"]) == published["val/psnr"]  # one process: float() of the value is the same
    trainer.close()


@check("validation-command")
def _validation_command(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainers.cli.parser import build_parser, overrides
    from trainers.config.builder import load_config

    check_shell(block.text)
    (line,) = block.text.strip().splitlines()
    parsed = build_parser().parse_args(shlex.split(line)[1:])
    config = load_config(ROOT / parsed.config, overrides=overrides(parsed))
    (validator,) = (spec for spec in config.callbacks if spec.key == "validator")
    assert validator.kwargs["ranks"] == "all"
    assert config.trainer.name == "image_field"
