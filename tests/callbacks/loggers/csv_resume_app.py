"""One deterministic run with a ``CSVLogger``, for the kill -9 tests of the CSV file (not a test module).

Importable (:func:`build`, :func:`run_to_end`, :func:`table`, :func:`deterministic`, :func:`kill_run`) and runnable
as a script::

    python -m tests.callbacks.loggers.csv_resume_app --run-dir DIR [--resume auto] [--die-at write|rewrite]
        [--die-after ITERATION]

The run: ``nn.Linear(3, 1)`` on 8 rows in batches of 2 (4 iterations per epoch), 5 epochs; ``LRDecay`` (so ``lr``
changes), a ``Validator`` every 3 iterations (validation rows, and flushes between two checkpoints), a
``Checkpointer`` every epoch, and ``CSVLogger(every="1it")``. From iteration 6 on the loss function also returns an
``aux`` output (a column that appears mid-run) and odd iterations ``trainer.log`` an ``odd`` number.

Script behaviour: prints ``step <iteration>`` after every step (after the checkpoint of that step, flushed), then
``finished <status>``. Fault injection, wrapping ``os`` functions of this process: ``--die-at write`` SIGKILLs the
process halfway through its first write of rows to ``metrics.csv`` after iteration ``--die-after`` (half of the
bytes are written: a partial line); ``--die-at rewrite`` SIGKILLs it when a rewrite of the file (a new column) is
about to replace it (its temporary file complete, not renamed).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from callbacks import Checkpointer, LRDecay, Validator
from callbacks.loggers.csv_logger import CSVLogger
from tests.support import make_dataset, make_trainer
from trainers import BaseTrainer

ITEMS, BATCH, EPOCHS = 8, 2, 5
ITERATIONS = ITEMS // BATCH * EPOCHS  # 20
ROOT = Path(__file__).resolve().parents[3]


def build(run_dir: Path) -> BaseTrainer:
    """The trainer (see the module docstring)."""
    dataset = make_dataset(ITEMS, offset=0.0)
    x, y = dataset.tensors
    trainer: BaseTrainer | None = None

    def loss_fn(model: nn.Module, batch: Any) -> Any:
        assert trainer is not None
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        step = trainer.state.iteration
        if step % 2 == 1:
            trainer.log("odd", float(step) / 3.0)
        if step >= 6:
            return {"loss": loss, "aux": loss.detach() * 2.0 + 1.0}
        return loss

    trainer = make_trainer(
        batch_size=BATCH,
        max_epochs=EPOCHS,
        dataset=dataset,
        run_dir=run_dir,
        loss_fn=loss_fn,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        callbacks=[
            LRDecay(milestones=[0.5], gamma=0.5),
            Validator(lambda t: {"mse": nn.functional.mse_loss(t.pipeline(x), y)}, every="3it"),
            Checkpointer(every="1ep", keep_last=100),
            CSVLogger(every="1it"),
        ],
    )
    return trainer


def run_to_end(run_dir: Path, *, resume: bool) -> BaseTrainer:
    """In this process: build, ``restore("auto")`` when ``resume``, train to the end, close."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the script
    try:
        trainer = build(run_dir)
        if resume:
            trainer.restore("auto")
        trainer.train(handle_signals=False)
        trainer.close()
    finally:
        torch.set_num_threads(threads)
    return trainer


def table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a CSV file, read with the csv module."""
    with open(path, newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    return lines[0], lines[1:]


def deterministic(path: Path) -> tuple[list[str], list[list[str]]]:
    """:func:`table` without the ``time/*`` columns (wall times differ from run to run)."""
    header, rows = table(path)
    keep = [i for i, name in enumerate(header) if not name.startswith("time/")]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _die_in_csv(after: int, at: str, iteration: Callable[[], int]) -> None:
    real_write, real_replace = os.write, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def write(fd: int, data: Any) -> int:
        if at == "write" and iteration() >= after and os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.csv"):
            view = memoryview(data)
            real_write(fd, view[: max(1, len(view) // 2 - 1)])  # a partial line: no newline at the cut
            die()
        return real_write(fd, data)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if at == "rewrite" and iteration() >= after and os.path.basename(dst) == "metrics.csv":
            die()
        real_replace(src, dst, **kwargs)

    os.write, os.replace = write, replace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csv_resume_app")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--die-at", choices=("write", "rewrite"), default=None)
    parser.add_argument("--die-after", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trainer = build(Path(args.run_dir))
    if args.die_at is not None:
        _die_in_csv(args.die_after, args.die_at, lambda: trainer.state.iteration)
    if args.resume is not None:
        trainer.restore(args.resume)

    @trainer.on("post_step", priority=-10_000)  # after the Checkpointer's save of this step
    def announce(t: BaseTrainer, **_: Any) -> None:
        print(f"step {t.state.iteration}", flush=True)

    try:
        status = trainer.train(handle_signals=False)
        print(f"finished {status}", flush=True)
    finally:
        trainer.close()
    return 0


def kill_run(run_dir: Path, *, after_step: int | None, delay: float = 0.0, extra: Sequence[str] = ()) -> int:
    """Run the script on ``run_dir`` in a fresh interpreter; SIGKILL it ``delay`` seconds after its line ``step
    <after_step>`` (``None``: let it run, e.g. until a ``--die-at`` kills it). Returns its exit code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-u", "-m", "tests.callbacks.loggers.csv_resume_app", "--run-dir", str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.stderr", "wb") as err:
        proc = subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if after_step is not None and line.decode().strip() == f"step {after_step}":
                time.sleep(delay)
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)
        proc.stdout.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
