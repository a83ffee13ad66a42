"""The exact-resume training of ``tests.trainers.checkpoint.resume_app`` with an ``MLflowLogger`` logging every
step into the default store of its run directory, as a script for the kill -9 test (not a test module)::

    python -m tests.callbacks.loggers.mlflow_resume_app --run-dir DIR [--resume] [--wait-after K]

The Checkpointer saves every epoch (8 iterations), so a process killed mid-epoch has logged steps its checkpoint
does not hold. Prints ``run <id>`` once the MLflow run is open, ``step <iteration>`` after every step (after the
logger's row of that step), then ``finished <status> <iteration>``. ``--resume``: ``restore("auto")`` first.
``--wait-after K``: after announcing step ``K`` the process waits to be killed (SIGKILL from the parent), so the kill
lands at a known point.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from callbacks import MLflowLogger
from tests.trainers.checkpoint.resume_app import build
from trainers import BaseTrainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlflow_resume_app")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--wait-after", type=int, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as resume_app's script: the same arithmetic in every process
    trainer = build(Path(args.run_dir), every="1ep")
    logger = MLflowLogger(every="1it", on_error="raise")
    trainer.add_callback(logger)
    if args.resume:
        trainer.restore("auto")

    @trainer.on("pre_training", priority=-10_000)  # after the logger opened its run
    def opened(t: BaseTrainer, **_: Any) -> None:
        print(f"run {logger.run_id}", flush=True)

    @trainer.on("post_step", priority=-10_000)  # after the logger's row of this step
    def announce(t: BaseTrainer, **_: Any) -> None:
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
