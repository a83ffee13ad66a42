"""Teardown of a distributed run (2 real ranks on gloo): ``trainer.close()`` joins the threads of the trainer's
side groups and refuses further steps and collectives; ``init_from_env``'s exit hook destroys every group and
collects the trainers nobody closed (joining their groups' threads) before the interpreter is finalized.

Without that, a gloo worker thread that drops the last reference to a finished collective once finalization has
begun is killed mid-destructor and the process aborts (``terminate called without an active exception``, SIGABRT)
after all of its work is done -- about one run in six on this machine before the hook existed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.trainers.distributed.ranks import start_ranks, wait_ranks

WORKER = r"""
import atexit, gc, json, os, sys

import torch
import torch.distributed as dist

from tests.support import make_trainer
from trainers.distributed import environment as distributed


def threads():
    return len(os.listdir("/proc/self/task"))


report = {"before": threads()}
report["started"] = distributed.init_from_env(torch.device("cpu"), backend="gloo", timeout=60.0)
report["default_only"] = threads()
trainer = make_trainer(items=8, batch_size=4, max_epochs=2)  # the group is up: the trainer adds its side groups
report["built"] = threads()
report["status"] = str(trainer.train())
report["iteration"] = trainer.state.iteration
trainer.close()
gc.collect()  # the DDP wrapper sits in a reference cycle with the trainer
report["closed"] = threads()
trainer.close()  # twice: nothing more happens
report["closed_twice"] = threads()
errors = []
for call in (trainer.train, trainer.iterate, trainer.run_for):
    try:
        call(0.1) if call == trainer.run_for else call()
    except RuntimeError as exc:
        errors.append(str(exc))
for call in (lambda: trainer.broadcast_object(1), lambda: trainer.all_gather_object(1), trainer.barrier):
    try:
        call()
    except RuntimeError as exc:
        errors.append(str(exc))
report["errors"] = errors
report["initialized_after_close"] = dist.is_initialized()
gc.disable()  # from here on, only the exit hook collects garbage
forgotten = make_trainer(items=8, batch_size=4, max_epochs=1)
forgotten.train()
del forgotten  # never closed: its side groups live on in the garbage (a trainer is a reference cycle)
report["forgotten"] = threads()
atexit._run_exitfuncs()  # what the interpreter runs at exit, before finalization
report["after_exit_hooks"] = [dist.is_initialized(), threads()]
with open(f"{sys.argv[1]}/rank-{distributed.rank() if dist.is_initialized() else os.environ['RANK']}.json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[str]]:
    out = tmp_path_factory.mktemp("teardown")
    processes = start_ranks(["-c", WORKER, str(out)], out, env={"OMP_NUM_THREADS": "1"})
    outputs, _ = wait_ranks(processes, 120)
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)
    return [json.loads((out / f"rank-{r}.json").read_text(encoding="utf-8")) for r in (0, 1)], outputs


def test_close_joins_the_threads_of_the_side_groups(ranks: tuple[list[dict[str, Any]], list[str]]) -> None:
    for report in ranks[0]:
        assert report["started"] is True
        assert report["status"] == "completed"
        assert report["before"] < report["default_only"] < report["built"]  # every group has its own threads
        assert report["closed"] == report["closed_twice"] == report["default_only"]
        assert report["initialized_after_close"] is True  # the default group is not the trainer's to destroy


def test_a_closed_distributed_trainer_refuses_to_step_and_to_communicate(
    ranks: tuple[list[dict[str, Any]], list[str]],
) -> None:
    closed = (
        "this trainer was closed at iteration 4: in a distributed run close() releases its side groups, so it "
        "cannot step on (build a new trainer, and restore() from a checkpoint to continue)"
    )
    side = "the trainer's side group was closed (trainer.close()): no collective can run on it"
    for report in ranks[0]:
        assert report["iteration"] == 4
        assert report["errors"] == [closed] * 3 + [side] * 3


def test_the_exit_hook_destroys_every_group_and_joins_every_gloo_thread(
    ranks: tuple[list[dict[str, Any]], list[str]],
) -> None:
    reports, outputs = ranks
    for report, output in zip(reports, outputs, strict=True):
        assert report["forgotten"] == report["built"]
        # every group is destroyed and the forgotten trainer's side groups are joined; the default group's own
        # threads may outlive it, as torch's DDP keeps a reference to it that is never released (torch 2.13)
        initialized, threads = report["after_exit_hooks"]
        assert initialized is False
        assert threads <= report["default_only"]
        assert "terminate called" not in output
        assert "Traceback" not in output
