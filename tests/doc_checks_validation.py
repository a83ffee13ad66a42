"""Checks of docs/validation.md's blocks: the sharded validation runs as the page shows it on 2 real ranks (gloo)
and its values are compared with a computation over the whole set; the derived PSNR runs in one process; the
command line parses and its config asks for ``ranks: all``."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from callbacks import Validator
from tests.doc_checks import check, run, small_trainer
from tests.doc_pages import ROOT, Block
from tests.doc_shell import check_shell
from tests.trainers.distributed.ranks import start_ranks, wait_ranks


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


#: what each rank runs: the page's block on the docs' small trainer, then what it published and the whole-set values
SHARDED = r"""
import json, sys
from pathlib import Path

from tests.doc_checks import small_trainer
from tests.doc_checks_validation import val_points, whole_set

out = Path(sys.argv[1])
trainer = small_trainer(max_epochs=1)  # starts the group
val_set = val_points()
exec(compile((out / "block.py").read_text(), "block", "exec"))
trainer.train()
report = {
    "published": {k: v for k, v in trainer.state.metrics.items() if k.split("/")[0] in ("val", "best")},
    "count": validator.count,
    "whole": whole_set(trainer.pipeline, val_set),
    "world_size": trainer.world_size,
}
(out / f"rank-{trainer.rank}.json").write_text(json.dumps(report))
trainer.close()
"""


@check("validation-shard", slow=True)
def _validation_shard(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "block.py").write_text(block.text, encoding="utf-8")
    env = {"OMP_NUM_THREADS": "1", "STEPBUS_DIST_TIMEOUT": "60"}
    processes = start_ranks(["-c", SHARDED, str(tmp_path)], ROOT, env=env)
    outputs, _ = wait_ranks(processes, 180)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    zero, one = (json.loads((tmp_path / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1))
    assert zero["world_size"] == 2
    assert zero["published"] == one["published"]  # every rank publishes the same values
    assert zero["whole"] == one["whole"]  # the same weights on both ranks
    assert zero["count"] == 1
    published, whole = zero["published"], zero["whole"]
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
