"""``python -m tests.trainers.engine.interrupt_app [--hold-at N] [--hold-finishing] train ...``: the ``stepbus`` command
(``trainers.cli.main``, the demo trainer) with one more callback, :class:`Hold`, that makes the moment a test's
signal lands known instead of a matter of timing:

* ``--hold-at N``: at ``post_step`` of iteration ``N`` it prints ``HOLD N`` and waits until a signal interrupted the
  run (at most 60 s), so the interrupt lands mid-epoch at exactly that step;
* ``--hold-finishing``: in ``post_training`` of an interrupted run it prints ``HOLD finishing`` and waits (at most
  60 s) for a second signal, which then aborts the run from inside the finishing events.

Nothing of the library is replaced: the demo trainer is built by ``trainers.apps.demo.demo_trainer`` (the factory the
config names) and gets the callback added, and the CLI's ``main`` runs unchanged. Only the demo gets it: give
``train --config trainers/apps/configs/demo.yaml`` (the built-in default is the image-field app).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import trainers.apps.demo
from callbacks import Callback
from lifecycle import Status
from trainers import BaseTrainer
from trainers.cli import main

LIMIT_S = 60.0


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)  # a signal interrupts the sleep; its handler runs before the sleep goes on


class Hold(Callback):
    def __init__(self, at: int | None, finishing: bool) -> None:
        super().__init__()
        self.at, self.finishing = at, finishing

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.iteration == self.at:
            print(f"HOLD {self.at}", flush=True)
            _wait(lambda: trainer.interrupted_by is not None)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        if self.finishing and status is Status.INTERRUPTED:
            print("HOLD finishing", flush=True)
            _wait(lambda: False)


def run(argv: list[str]) -> int:
    at: int | None = None
    finishing = False
    while argv and argv[0].startswith("--hold"):
        option = argv.pop(0)
        if option == "--hold-at":
            at = int(argv.pop(0))
        elif option == "--hold-finishing":
            finishing = True
        else:
            raise SystemExit(f"unknown option {option}")
    make = trainers.apps.demo.demo_trainer

    @functools.wraps(make)  # the same signature: the config's trainer keys stay valid
    def make_held(**kwargs: Any) -> BaseTrainer:
        trainer = make(**kwargs)
        trainer.add_callback(Hold(at, finishing))
        return trainer

    trainers.apps.demo.demo_trainer = make_held  # the registry looks it up in trainers.apps.demo when main() builds
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
