"""``python -m tests.trainers.checkpoint.lock_app --hold-at N --until FILE train ...``: the ``stepbus`` command
(``trainers.cli.main``, the demo trainer) with one more callback, :class:`HoldUntil`: at ``post_step`` of iteration
``N`` it prints ``HOLD N <pid>`` and waits until ``FILE`` exists (at most 60 s), so a test knows the run is alive,
holds its run directory and stands at a known iteration while it starts a second run beside it.

Nothing of the library is replaced: the demo trainer is built by ``trainers.apps.demo.demo_trainer`` and gets the
callback added; the CLI's ``main`` runs unchanged. Give ``train --config trainers/apps/configs/demo.yaml``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import trainers.apps.demo
from callbacks import Callback
from trainers import BaseTrainer
from trainers.cli import main

LIMIT_S = 60.0


class HoldUntil(Callback):
    def __init__(self, at: int, until: Path) -> None:
        super().__init__()
        self.at, self.until = at, until

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.iteration != self.at:
            return
        print(f"HOLD {self.at} {os.getpid()}", flush=True)
        deadline = time.monotonic() + LIMIT_S
        while not self.until.exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def run(argv: list[str]) -> int:
    if argv[:1] != ["--hold-at"] or argv[2:3] != ["--until"]:
        raise SystemExit("usage: lock_app --hold-at N --until FILE train ...")
    at, until, rest = int(argv[1]), Path(argv[3]), argv[4:]
    make = trainers.apps.demo.demo_trainer

    @functools.wraps(make)  # the same signature: the config's trainer keys stay valid
    def make_held(**kwargs: Any) -> BaseTrainer:
        trainer = make(**kwargs)
        trainer.add_callback(HoldUntil(at, until))
        return trainer

    trainers.apps.demo.demo_trainer = make_held  # the registry looks it up in trainers.apps.demo when main() builds
    return main(rest)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
