"""Failed-write counts travel with the checkpoint: a run resumed from it reports the failures of the run it
continues plus its own, in the progress summary and in ``metrics.json``. The counts go through the public route
every writer uses, ``trainer.state.count_failed_write``; the checkpoints, the restore and the reports are real."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from callbacks import Checkpointer, MetricsFile, ProgressBar
from lifecycle import Priority, Status
from tests.support import make_trainer
from trainers import BaseTrainer


def _trainer(run_dir: Path, max_epochs: int, console: Console) -> BaseTrainer:
    trainer = make_trainer(
        6,
        batch_size=2,
        max_epochs=max_epochs,
        run_dir=run_dir,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=[Checkpointer(every="1ep"), ProgressBar(console=console), MetricsFile()],
    )

    @trainer.on("post_epoch", priority=Priority.STATE)
    def one_failed_write_per_epoch(t: BaseTrainer, **payload: Any) -> None:
        t.state.count_failed_write("uploader")

    return trainer


def test_a_resumed_run_reports_the_failed_writes_of_the_run_it_continues(tmp_path: Path) -> None:
    out = io.StringIO()
    first = _trainer(tmp_path, 2, Console(file=out, width=120, color_system=None))
    assert first.train() is Status.COMPLETED
    assert first.state.failed_writes == {"uploader": 2}
    assert json.loads((tmp_path / "metrics.json").read_text())["failed_writes"] == {"uploader": 2}
    assert out.getvalue().strip().splitlines()[-1] == "training completed with 2 failed writes: uploader 2"
    first.close()

    out = io.StringIO()
    second = _trainer(tmp_path, 3, Console(file=out, width=120, color_system=None))
    assert second.restore("auto") == tmp_path / "checkpoints" / "step-00000006.pt"
    assert second.state.failed_writes == {"uploader": 2}  # saved with the counters, restored with them
    assert second.train() is Status.COMPLETED
    assert second.state.failed_writes == {"uploader": 3}
    assert json.loads((tmp_path / "metrics.json").read_text())["failed_writes"] == {"uploader": 3}
    assert out.getvalue().strip().splitlines()[-1] == "training completed with 3 failed writes: uploader 3"
    second.close()


def test_a_run_without_failed_writes_says_nothing_of_them(tmp_path: Path) -> None:
    out = io.StringIO()
    trainer = make_trainer(
        6, run_dir=tmp_path, callbacks=[ProgressBar(console=Console(file=out, width=120)), MetricsFile()]
    )
    assert trainer.train() is Status.COMPLETED
    assert json.loads((tmp_path / "metrics.json").read_text())["failed_writes"] == {}
    assert "failed write" not in out.getvalue()
    assert "failed_writes/" not in str(trainer.state_dict())
