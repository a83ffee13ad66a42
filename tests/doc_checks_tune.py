"""The check of docs/lr-finder.md's Python block: it runs as the page shows it, in a folder holding the demo's config,
and its effect is asserted -- the files written, the suggestion applied, the run trained."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from lifecycle import Status
from tests.doc_checks import check, run
from tests.doc_pages import ROOT, Block
from trainers import BaseTrainer
from trainers.tune import LRRangeResult


@check("lr-range-test")
def _lr_range_test(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The range test of the demo: a suggestion near the configured 0.01, the JSON and the PNG written, the tested
    trainer untouched, and a run built with the suggestion trained to its end."""
    (tmp_path / "trainers/apps/configs").mkdir(parents=True)
    shutil.copy(ROOT / "trainers/apps/configs/demo.yaml", tmp_path / "trainers/apps/configs/demo.yaml")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        namespace = run(block, {})
    probe, trainer, result = namespace["probe"], namespace["trainer"], namespace["result"]
    assert isinstance(probe, BaseTrainer)
    assert isinstance(trainer, BaseTrainer)
    assert isinstance(result, LRRangeResult)
    assert result.suggestion is not None
    assert 1e-3 < result.suggestion < 1e-1
    assert printed.getvalue().splitlines()[:2] == [result.stopped, f"{result.suggestion} {result.reason}"]
    assert probe.state.iteration == 0
    assert probe.optimizer.param_groups[0]["lr"] == 0.01
    assert probe.optimizer.state_dict()["state"] == {}
    data = json.loads((tmp_path / "runs/demo-lr/lr_find.json").read_text(encoding="utf-8"))
    assert data["suggestion"] == result.suggestion
    assert sorted(p.name for p in (tmp_path / "runs/demo-lr").iterdir()) == ["lr_find.json", "lr_find.png"]
    assert trainer.status is Status.COMPLETED
    assert trainer.config is not None
    assert trainer.config["trainer"]["optimizer"]["lr"] == result.suggestion
    assert (tmp_path / "runs/demo-tuned/config.yaml").is_file()
