"""One run on a disk that fills up, as a script: ``python -m tests.full_disk_run SPEC.json`` (see tests/full_disk.py).

The spec names the case, the run directory (off the disk: ``metrics.json`` and the note land there) and when to
fill the disk. The script trains a tiny real trainer -- 2 epochs of 16 steps -- with a ``ProgressBar`` printing its
summary to stdout and a ``MetricsFile``, warnings of the ``stepbus`` loggers going to stderr as ``name: message``;
what it saw goes to ``<run_dir>/note.json``. An exception that escapes training is not caught: the process then
exits 1 with its traceback, as any script would.

Cases: ``save`` (one ``trainer.save_checkpoint`` onto the full disk), ``checkpointer`` (a ``Checkpointer`` with
``on_error="warn"`` saving every iteration onto it), ``tensorboard`` and ``wandb`` (the logger's folder on it) and
``metrics`` (``metrics.json`` itself on it).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from callbacks import Callback, Checkpointer, MetricsFile, ProgressBar, TensorBoardLogger, WandbLogger
from lifecycle import Priority
from tests.full_disk import fill, unfill
from tests.support import make_trainer
from trainers import BaseTrainer
from trainers.checkpoint.format import CheckpointError


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


class _Unfill(Callback):
    """Lifts the stand-in's file size limit for this process at the end (a no-op on tmpfs: see tests/full_disk.py)."""

    priority = Priority.FINAL

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        unfill()


def _writer(case: dict[str, Any], disk: Path) -> Any:
    kind, on_error = case["case"], case.get("on_error", "warn")
    if kind == "checkpointer":
        return Checkpointer(dir=disk / "checkpoints", every="1it", on_error="warn")
    if kind == "tensorboard":
        return TensorBoardLogger(dir=disk / "tb", every="1it", on_error=on_error)
    if kind == "wandb":
        settings = {"x_disable_stats": True}
        return WandbLogger(dir=disk, every="1it", on_error=on_error, id="fulldisk", settings=settings)
    return None


def main(spec_file: str) -> int:
    case: dict[str, Any] = json.loads(Path(spec_file).read_text())
    run_dir, disk = Path(case["run_dir"]), Path(case["disk"])
    collect = _Collect()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for handler in (collect, stderr):
        logging.getLogger("stepbus").addHandler(handler)
    note: dict[str, Any] = {}
    if case["case"] == "save":
        saver = make_trainer(items=6, batch_size=2, max_epochs=2)
        saver.iterate()
        fill()
        target = disk / "checkpoints" / "step-00000001.pt"
        try:
            saver.save_checkpoint(target, reason="test")
        except CheckpointError as exc:
            note.update(error=str(exc), cause=type(exc.__cause__).__name__, errno=getattr(exc.__cause__, "errno", 0))
        unfill()
        note["left"] = sorted(p.name for p in target.parent.iterdir())
        (run_dir / "note.json").write_text(json.dumps(note))
        return 0
    writer = _writer(case, disk)
    metrics_path = disk / "metrics.json" if case["case"] == "metrics" else Path("metrics.json")
    console = Console(file=sys.stdout, width=200, force_terminal=False, color_system=None)
    # after the writers' last word (W&B's finish too: same priority, added before), before the summaries
    lift = None if case["case"] == "metrics" else _Unfill()
    callbacks = [c for c in (writer, lift, ProgressBar(console=console), MetricsFile(metrics_path)) if c is not None]
    trainer: BaseTrainer = make_trainer(
        128 if case["case"] == "tensorboard" else 32,  # TensorBoard: rows past a tmpfs page within the first epoch
        batch_size=2,
        max_epochs=2,
        run_dir=run_dir,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=callbacks,
    )
    fill_at = int(case.get("fill_at", 0))

    def fill_now(t: BaseTrainer, **payload: Any) -> None:
        if t.state.iteration == fill_at:
            fill()

    if fill_at:
        trainer.on("post_step", priority=Priority.STATE)(fill_now)
    else:
        fill()
    status = trainer.train()
    unfill()
    note.update(status=str(status), failed_writes=trainer.state.failed_writes, warnings=collect.messages)
    if writer is not None:
        note["failures"] = writer.failures
    if isinstance(writer, WandbLogger):
        note["sync_dir"] = str(writer.sync_dir)
    (run_dir / "note.json").write_text(json.dumps(note))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
