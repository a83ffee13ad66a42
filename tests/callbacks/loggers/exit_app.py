"""A training that logs every step to TensorBoard and MLflow, as a script for the tests of how a run ends with
writes still queued in the loggers' background writers (not a test module)::

    python -m tests.callbacks.loggers.exit_app --run-dir DIR --mode {signal,exit}

Prints ``step <iteration>`` after every step (after the loggers' rows). ``signal``: ``train()`` with its signal
handling, then ``finished <status> <iteration>`` -- the parent sends SIGTERM mid-run. ``exit``: 25 ``iterate()``
calls, then ``left at 25`` and the interpreter exits with the run unfinished (no ``post_training``, no ``close``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from callbacks import MLflowLogger, TensorBoardLogger
from tests.support import make_trainer
from trainers import BaseTrainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exit_app")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--mode", choices=("signal", "exit"), required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trainer = make_trainer(
        64,
        batch_size=2,
        max_epochs=1000,
        run_dir=Path(args.run_dir),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        callbacks=[TensorBoardLogger(every="1it"), MLflowLogger(every="1it")],
    )

    @trainer.on("post_step", priority=-10_000)
    def announce(t: BaseTrainer, **_: Any) -> None:
        print(f"step {t.state.iteration}", flush=True)

    if args.mode == "exit":
        for _ in range(25):
            trainer.iterate()
        print("left at 25", flush=True)
        return 0
    status = trainer.train()
    print(f"finished {status} {trainer.state.iteration}", flush=True)
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
