"""Checks of docs/run-control.md's blocks: the TimeLimit example trains and resumes with its budget carried, the
``trainer.max_time`` config builds its TimeLimit, and the ModelSummary block, added to the GAN app's config, prints
exactly the table the page shows."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lifecycle import Status
from tests.doc_checks import check, run, small_trainer
from tests.doc_pages import DOCS, ROOT, Block, blocks
from trainers import BaseTrainer


@check("run-control-time-limit")
def _time_limit(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run trains within its two hours; the same lines again resume from its end save, carrying the time
    it counted."""
    from callbacks.time_limit import TimeLimit
    from trainers.checkpoint.format import load_checkpoint

    monkeypatch.chdir(tmp_path)

    def my_trainer(*placeholders: object, run_dir: str, callbacks: list[object]) -> BaseTrainer:
        assert placeholders == (...,)  # the page's "..." stands for the trainer's own arguments
        return small_trainer(run_dir=run_dir, callbacks=callbacks)

    def limit_of(trainer: BaseTrainer) -> TimeLimit:
        (limit,) = [c for c in trainer.callbacks if isinstance(c, TimeLimit)]
        return limit

    first = run(block, {"MyTrainer": my_trainer})
    trainer = first["trainer"]
    assert isinstance(trainer, BaseTrainer)
    assert first["status"] is Status.COMPLETED
    assert limit_of(trainer).max_time == 7200.0
    counted = limit_of(trainer).elapsed
    saved = load_checkpoint(tmp_path / "runs/a/checkpoints/last.pt")
    assert saved["callbacks"]["TimeLimit"] == {"elapsed_s": counted}
    trainer.close()
    again = run(block, {"MyTrainer": my_trainer})["trainer"]
    assert isinstance(again, BaseTrainer)
    assert again.resumed_from is not None
    assert limit_of(again).elapsed >= counted  # continued, not started over


@check("run-control-config")
def _config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callbacks.time_limit import TimeLimit
    from trainers import build, load_config

    config = load_config(yaml.safe_load(block.text))
    assert config.data["trainer"]["max_time"] == "3h50min"
    assert "max_time" not in config.trainer_kwargs
    trainer = build(config, run_dir=tmp_path / "run")
    try:
        (limit,) = [c for c in trainer.callbacks if isinstance(c, TimeLimit)]
        assert limit.max_time == 3 * 3600 + 50 * 60
    finally:
        trainer.close()


@check("run-control-model-summary")
def _model_summary(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GAN app's config with this block prints the table of the text block that follows it on the page."""
    from trainers import build

    config = yaml.safe_load((ROOT / "trainers/apps/configs/gan.yaml").read_text(encoding="utf-8"))
    config["callbacks"].update(yaml.safe_load(block.text)["callbacks"])
    config["trainer"].update(samples=256, max_epochs=1)
    out = io.StringIO()
    trainer = build(config, run_dir=tmp_path / "run", objects={"console": Console(file=out, width=100)})
    assert trainer.train() is Status.COMPLETED
    page = blocks(DOCS / "run-control.md")
    shown = page[page.index(block) + 1]
    assert shown.language == "text"
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    assert printed[: len(shown.text.splitlines())] == shown.text.splitlines()
