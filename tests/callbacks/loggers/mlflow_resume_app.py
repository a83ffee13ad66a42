"""The exact-resume training of ``tests.trainers.checkpoint.resume_app`` with an ``MLflowLogger`` logging every
step into the default store of its run directory (or, ``--logger tensorboard``, a ``TensorBoardLogger`` into
``DIR/tb``), as a script for the kill -9 tests (not a test module)::

    python -m tests.callbacks.loggers.mlflow_resume_app --run-dir DIR [--logger L] [--resume] [--wait-after K]
        [--no-flush]

The Checkpointer saves every epoch (8 iterations), so a process killed mid-epoch has logged steps its checkpoint
does not hold. Prints ``run <id>`` once the MLflow run is open, ``step <iteration>`` after every step (after the
logger's row of that step), then ``finished <status> <iteration>``. ``--resume``: ``restore("auto")`` first.
``--wait-after K``: after announcing step ``K`` the process waits to be killed (SIGKILL from the parent), so the kill
lands at a known point; the logger first writes every row queued (``logger.flush()``), unless ``--no-flush``: then
the kill lands while the last rows may still wait in the logger's background writer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from callbacks import MLflowLogger, TensorBoardLogger
from tests.trainers.checkpoint.resume_app import build
from trainers import BaseTrainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlflow_resume_app")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--wait-after", type=int, default=None)
    parser.add_argument("--logger", choices=("mlflow", "tensorboard"), default="mlflow")
    parser.add_argument("--no-flush", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as resume_app's script: the same arithmetic in every process
    trainer = build(Path(args.run_dir), every="1ep")
    logger: MLflowLogger | TensorBoardLogger
    if args.logger == "mlflow":
        logger = MLflowLogger(every="1it", on_error="raise")
    else:
        logger = TensorBoardLogger(every="1it", on_error="raise")
    trainer.add_callback(logger)
    if args.resume:
        trainer.restore("auto")

    @trainer.on("pre_training", priority=-10_000)  # after the logger opened its run
    def opened(t: BaseTrainer, **_: Any) -> None:
        print(f"run {getattr(logger, 'run_id', None)}", flush=True)

    @trainer.on("post_step", priority=-10_000)  # after the logger's row of this step
    def announce(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration == args.wait_after and not args.no_flush:
            logger.flush()  # the rows of the steps the checkpoint does not hold are in the store
        print(f"step {t.state.iteration}", flush=True)
        if t.state.iteration == args.wait_after:
            time.sleep(120)  # killed here

    try:
        status = trainer.train(handle_signals=False)
        print(f"finished {status} {trainer.state.iteration}", flush=True)
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
