"""Exact resume end to end, with real processes: train k iterations, save, exit; a NEW process resumes and trains to
the end; the result is bit-identical to the uninterrupted run -- and the same after ``kill -9`` at any moment.

The training is ``tests/trainers/checkpoint/resume_app.py``: the grid model with dropout and a pruned occupancy grid,
Python ``random`` noise in the dataset and numpy/``random`` draws in the loss, Adam, LRDecay (a torch scheduler with
warmup), GridPruning, a Validator every 3 iterations, EarlyStopping, GradientGuard and a Checkpointer; 4 epochs x 8
iterations. Its uninterrupted runs (fresh interpreters) are computed once per module, as are the interrupted
scenarios (two processes at a time).
"""

from __future__ import annotations

import copy
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.trainers.checkpoint import resume_app as app
from trainers.checkpoint.format import list_checkpoints, load_checkpoint, read_metadata

N = app.ITERATIONS  # 32
IPE = app.ITERATIONS_PER_EPOCH  # 8


def _step_name(iteration: int) -> str:
    return f"step-{iteration:08d}.pt"


# ---------------------------------------------------------------------------------------------- the processes
@dataclass
class Leg:
    """One process of a scenario: its arguments, what it printed, its dump and its fetch log."""

    args: list[str]
    result: subprocess.CompletedProcess[str]
    fetches: list[tuple[str, list[int]]]
    dump: dict[str, Any] | None

    def check(self) -> None:
        assert self.result.returncode == 0, f"{self.args}\n{self.result.stdout}\n{self.result.stderr}"

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.result.stdout.splitlines() if line.startswith(prefix)]


@dataclass(frozen=True)
class Scenario:
    """Exit at each iteration of ``stops`` (``--steps-before-exit``, saving by ``request_checkpoint()``), resume
    in a new process each time, finish in the last one."""

    name: str
    num_workers: int
    every: str
    stops: tuple[int, ...]


SCENARIOS = [
    Scenario("epoch-boundary-0-workers", 0, "1ep", (8,)),
    Scenario("mid-epoch-0-workers", 0, "1ep", (13,)),
    Scenario("epoch-boundary-2-workers", 2, "1ep", (16,)),
    Scenario("mid-epoch-2-workers", 2, "1ep", (21,)),
    Scenario("chain-mid-mid-0-workers", 0, "1ep", (5, 19)),
    Scenario("chain-boundary-mid-2-workers", 2, "1ep", (8, 27)),
]
#: uninterrupted runs: (num_workers, every)
REFERENCES = [(0, "1ep"), (2, "1ep"), (0, "1it"), (2, "2it")]


def _leg(directory: Path, label: str, args: list[str], *, dump: bool) -> Leg:
    log = directory / f"{label}.fetches"
    extra = ["--fetch-log", str(log)]
    if dump:
        extra += ["--dump", str(directory / f"{label}.pt")]
    result = app.run_script([*args, *extra])
    loaded = None
    if dump and result.returncode == 0:
        loaded = torch.load(directory / f"{label}.pt", weights_only=False)
    return Leg([*args, *extra], result, app.read_fetch_log(log), loaded)


def _reference(base: Path, num_workers: int, every: str) -> Leg:
    directory = base / f"reference-{num_workers}-{every}"
    directory.mkdir()
    args = ["--run-dir", str(directory / "run"), "--num-workers", str(num_workers), "--every", every]
    return _leg(directory, "run", args, dump=True)


def _scenario(base: Path, scenario: Scenario) -> list[Leg]:
    directory = base / scenario.name
    directory.mkdir()
    common = ["--run-dir", str(directory / "run"), "--num-workers", str(scenario.num_workers)]
    common += ["--every", scenario.every]
    legs: list[Leg] = []
    for i, stop in enumerate((*scenario.stops, None)):
        args = list(common)
        if i:
            args += ["--resume", "auto"]
        if stop is not None:
            args += ["--steps-before-exit", str(stop)]
        legs.append(_leg(directory, f"leg{i}", args, dump=stop is None))
        if legs[-1].result.returncode != 0:
            break
    return legs


@dataclass
class Runs:
    base: Path
    references: dict[tuple[int, str], Leg]
    scenarios: dict[str, list[Leg]]

    def reference(self, num_workers: int, every: str) -> dict[str, Any]:
        leg = self.references[(num_workers, every)]
        leg.check()
        assert leg.dump is not None
        return leg.dump


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every uninterrupted run and every scenario, in fresh interpreters, two processes at a time."""
    base = tmp_path_factory.mktemp("resume-exact")
    with ThreadPoolExecutor(max_workers=2) as pool:
        references = {key: pool.submit(_reference, base, *key) for key in REFERENCES}
        scenarios = {s.name: pool.submit(_scenario, base, s) for s in SCENARIOS}
        return Runs(
            base,
            {key: future.result() for key, future in references.items()},
            {name: future.result() for name, future in scenarios.items()},
        )


def _batches(fetches: list[tuple[str, list[int]]]) -> list[list[int]]:
    assert all(kind == "items" for kind, _ in fetches), f"__getitem__ called: {fetches}"  # one __getitems__ a batch
    return [indices for _, indices in fetches]


def _multiset(batches: list[list[int]]) -> Counter[tuple[int, ...]]:
    return Counter(tuple(b) for b in batches)


# ---------------------------------------------------------------------------------------------- the references
def test_the_uninterrupted_runs_exercise_every_resumable_part(runs: Runs) -> None:
    for num_workers, every in REFERENCES:
        ref = runs.reference(num_workers, every)
        assert ref["status"] == "completed"
        counters = {"epoch": 4, "iteration": N, "epoch_iteration": IPE, "max_epochs": 4, "iterations_per_epoch": IPE}
        counters["optimizer_step"] = N
        items = app.IMAGE * app.IMAGE
        assert ref["trainer"] == {"counters": counters, "seed": app.SEED, "ended": True, "data_size": items}
        callbacks = ref["callbacks"]
        occupancy = ref["model"]["occupancy"]
        assert occupancy.dtype == torch.bool
        assert 0 < int(occupancy.sum()) < occupancy.numel()  # pruning carved cells
        assert callbacks["GridPruning"]["count"] == 7  # at 8, 12, ..., 32
        assert callbacks["Validator"]["count"] == 11  # every 3 iterations (10) and at the end
        assert callbacks["Validator"]["last_iteration"] == N
        assert callbacks["LRDecay"]["scheduler"]["last_epoch"] == N
        assert callbacks["EarlyStopping"]["stopped_iteration"] is None
        assert ref["optimizer"]["state"][0]["step"] == torch.tensor(float(N))
        names = [entry[0] for entry in callbacks["Checkpointer"]["files"]]
        period = {"1ep": IPE, "1it": 1, "2it": 2}[every]
        assert names == [_step_name(i) for i in range(period, N + 1, period)]
        assert sorted(ref["metrics"]) == [
            "best/mse",
            "early_stopping/wait",
            "grad_norm",
            "lr",
            "prune/count",
            "prune/occupancy",
            "val/mse",
        ]


def test_the_checkpoint_schedule_does_not_change_the_training(runs: Runs) -> None:
    for num_workers, every in ((0, "1it"), (2, "2it")):
        often, rarely = runs.reference(num_workers, every), runs.reference(num_workers, "1ep")
        a = {k: v for k, v in often.items() if k != "callbacks"}
        b = {k: v for k, v in rarely.items() if k != "callbacks"}
        assert app.differences(a, b) == []
        a_callbacks = {k: v for k, v in often["callbacks"].items() if k != "Checkpointer"}
        b_callbacks = {k: v for k, v in rarely["callbacks"].items() if k != "Checkpointer"}
        assert app.differences(a_callbacks, b_callbacks) == []
    # the worker count changes where the dataset's noise comes from (per-batch seeds in the workers)
    assert not torch.equal(runs.reference(0, "1ep")["model"]["features"], runs.reference(2, "1ep")["model"]["features"])


def test_every_random_generator_reaches_the_result(tmp_path: Path) -> None:
    """One extra draw from torch's, ``random``'s or numpy's global generator changes the trained model: a resume
    that failed to restore any of them could not pass the comparisons below."""
    draws: dict[str, Callable[[], object]] = {
        "torch": lambda: torch.rand(1),
        "random": random.random,
        "numpy": np.random.random,
    }
    plain = app.run_in_process(tmp_path / "plain", num_workers=0, every="1ep", resume=False).snapshot
    for name, draw in draws.items():
        at_step = {10: lambda _trainer, draw=draw: draw()}
        perturbed = app.run_in_process(tmp_path / name, num_workers=0, every="1ep", resume=False, at_step=at_step)
        perturbed = perturbed.snapshot
        assert not torch.equal(perturbed["model"]["features"], plain["model"]["features"]), name


def test_the_same_training_in_this_process_as_in_a_fresh_one(runs: Runs, tmp_path: Path) -> None:
    here = app.run_in_process(tmp_path / "here", num_workers=0, every="1ep", resume=False).snapshot
    assert here["steps_run"] == N
    assert app.same_training(here, runs.reference(0, "1ep")) == []


# ---------------------------------------------------------------------------------------------- 1. bit-exact
def _expected(runs: Runs, scenario: Scenario, directory: Path) -> dict[str, Any]:
    """The uninterrupted run's snapshot, its Checkpointer also owning the files the requests wrote at the stops
    (with the score each file's metadata holds)."""
    expected = copy.deepcopy(runs.reference(scenario.num_workers, scenario.every))
    files = expected["callbacks"]["Checkpointer"]["files"]
    for stop in scenario.stops:
        name = _step_name(stop)
        score = read_metadata(directory / name)["score"]
        if name not in [entry[0] for entry in files]:
            files.append([name, stop, score])
    files.sort(key=lambda entry: entry[1])
    return expected


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_resumed_in_a_new_process_is_bit_identical(runs: Runs, scenario: Scenario) -> None:
    legs = runs.scenarios[scenario.name]
    for leg in legs:
        leg.check()
    assert len(legs) == len(scenario.stops) + 1
    checkpoints = runs.base / scenario.name / "run" / "checkpoints"
    previous = None
    for leg, stop in zip(legs, (*scenario.stops, None), strict=True):
        expected_resume = "None" if previous is None else str(checkpoints / _step_name(previous))
        assert leg.lines("resumed ") == [f"resumed {expected_resume}"]
        steps = [int(line.split()[1]) for line in leg.lines("step ")]
        start = 0 if previous is None else previous
        end = N if stop is None else stop
        assert steps == list(range(start + 1, end + 1))  # no step repeated, none skipped
        if stop is not None:
            assert leg.lines("exited ") == [f"exited {stop}"]
            meta = read_metadata(checkpoints / _step_name(stop))
            assert (meta["iteration"], meta["reason"], meta["resumable"]) == (stop, "request", True)
        else:
            assert leg.lines("finished ") == [f"finished completed {N}"]
        previous = stop
    final = legs[-1].dump
    assert final is not None
    assert final["steps_run"] == N - scenario.stops[-1]
    assert final["resumed_from"] == str(checkpoints / _step_name(scenario.stops[-1]))
    assert app.same_training(final, _expected(runs, scenario, checkpoints)) == []
    # the directory holds what the uninterrupted run wrote, plus the requested files
    names = sorted(f.path.name for f in list_checkpoints(checkpoints))
    assert names == sorted(entry[0] for entry in final["callbacks"]["Checkpointer"]["files"])
    assert os.readlink(checkpoints / "last.pt") == _step_name(N)


# ---------------------------------------------------------------------------------------------- 2. no replay
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_a_resumed_process_fetches_only_the_remaining_batches(runs: Runs, scenario: Scenario) -> None:
    # the batches in stepping order: the in-process fetches of the uninterrupted run (with workers the log is in
    # completion order; the batches are the same: the data order depends on (seed, epoch) only)
    in_order = runs.references[(0, scenario.every)]
    in_order.check()
    everything = _batches(in_order.fetches)
    assert len(everything) == N
    assert all(len(batch) == app.BATCH for batch in everything)
    for epoch in range(4):  # every epoch visits every item once
        assert sorted(i for batch in everything[epoch * IPE : (epoch + 1) * IPE] for i in batch) == list(range(64))
    reference = runs.references[(scenario.num_workers, scenario.every)]
    reference.check()
    assert _multiset(_batches(reference.fetches)) == _multiset(everything)
    legs = runs.scenarios[scenario.name]
    for leg in legs:
        leg.check()
    bounds = [0, *scenario.stops, N]
    for leg, start, end in zip(legs, bounds[:-1], bounds[1:], strict=True):
        fetched = _batches(leg.fetches)
        if scenario.num_workers == 0:
            assert fetched == everything[start:end]  # exactly the batches this process stepped, in order
            continue
        # workers fetch ahead, but only batches the process would step next
        remaining, stepped = _multiset(everything[start:]), _multiset(everything[start:end])
        assert _multiset(fetched) & remaining == _multiset(fetched), "a batch before the resume point was fetched"
        assert _multiset(fetched) & stepped == stepped
        if end == N:
            assert _multiset(fetched) == remaining  # the last process: exactly the remaining batches


# ---------------------------------------------------------------------------------------------- 3. kill -9
def _kill_and_resume(base: Path, plans: list[app.KillPlan]) -> list[tuple[app.KillOutcome, app.ResumeOutcome]]:
    with ThreadPoolExecutor(max_workers=2) as pool:  # the killed processes, two at a time
        killed = list(pool.map(lambda p: app.kill_run(p, base / f"trial-{p.index:03d}"), plans))
    results = []
    for outcome in killed:  # then each resumed in this process (no thread running: DataLoader workers fork)
        resumed = app.resume_in_process(outcome.run_dir, num_workers=outcome.plan.num_workers, every=outcome.plan.every)
        results.append((outcome, resumed))
    return results


#: trials at random moments, alternating (0 workers, a checkpoint every iteration) and (2 workers, every 2): killed
#: after "step 1" .. "step 24" plus up to 12 ms (never near the end: see the final-validation test), fsync slowed
#: down in about half of them (more kills land inside a save); every 8th trial in a fresh interpreter, the others
#: forked from a preloaded forkserver
KILL_PLANS = app.plan_kills(24, seed=20240611, fresh_every=8)


def test_kill_9_at_random_moments_then_resume_auto_is_bit_identical(runs: Runs, tmp_path: Path) -> None:
    results = _kill_and_resume(tmp_path, KILL_PLANS)
    report, failures = [], []
    for killed, resumed in results:
        plan = killed.plan
        problems = app.check_resumed(runs.reference(plan.num_workers, plan.every), killed, resumed)
        report.append(
            f"trial {plan.index:2d} workers={plan.num_workers} every={plan.every} after step {plan.after_step:2d} "
            f"+{plan.delay * 1000:4.1f} ms fsync+{plan.slow_fsync * 1000:.0f} ms fresh={plan.fresh!s:5}: "
            f"exit {killed.exitcode}, left {killed.temporaries}, resumed from "
            f"{None if resumed.loaded is None else resumed.loaded.name}: {problems or 'OK'}"
        )
        if problems:
            failures.append(plan.index)
    print("\n".join(report))
    assert failures == [], "\n".join(report)


@pytest.mark.parametrize(
    ("die_at", "iteration"),
    [("write", 11), ("write", 16), ("rename", 11), ("link", 11)],
    ids=["in-the-write", "in-the-write-at-an-epoch-end", "after-the-rename", "before-the-link-moves"],
)
def test_kill_9_inside_a_save_then_resume_auto_is_bit_identical(
    runs: Runs, tmp_path: Path, die_at: str, iteration: int
) -> None:
    plan = app.KillPlan(0, 0, "1it", None, extra=("--die-in-save", str(iteration), "--die-at", die_at))
    killed = app.kill_run(plan, tmp_path / "run")
    assert killed.exitcode == -9
    checkpoints = tmp_path / "run" / "checkpoints"
    if die_at == "write":
        # the temporary file is complete but was never renamed: the newest checkpoint is the one before
        (temporary,) = killed.temporaries
        assert re.fullmatch(rf"\.{_step_name(iteration)}\.\d+\.[0-9a-f]{{8}}\.tmp", temporary)
        assert killed.step_files == list(range(1, iteration))
    elif die_at == "rename":
        assert killed.temporaries == []
        assert killed.step_files == list(range(1, iteration + 1))
    else:
        (temporary,) = killed.temporaries
        assert re.fullmatch(r"\.last\.pt\.\d+\.[0-9a-f]{8}\.tmp", temporary)
        assert killed.step_files == list(range(1, iteration + 1))
    assert os.readlink(checkpoints / "last.pt") == _step_name(iteration - 1)  # moved only after the file is in place
    resumed = app.resume_in_process(tmp_path / "run", num_workers=0, every="1it")
    assert resumed.loaded == checkpoints / _step_name(killed.step_files[-1])
    assert app.check_resumed(runs.reference(0, "1it"), killed, resumed) == []
    assert os.readlink(checkpoints / "last.pt") == _step_name(N)


def test_killed_during_the_final_validation_resumes_to_the_same_end(runs: Runs, tmp_path: Path) -> None:
    """Killed after the last epoch's checkpoint, while the Validator's ``at_end`` validation runs: the newest
    checkpoint is at iteration 32, taken before ``post_training``. Resuming from it must still finish the run like
    the uninterrupted one -- the final validation included."""
    plan = app.KillPlan(0, 0, "1ep", None, extra=("--die-in-final-validation",))
    killed = app.kill_run(plan, tmp_path / "run")
    assert killed.exitcode == -9
    assert killed.last_line == "dying"
    assert killed.step_files == [8, 16, 24, 32]
    resumed = app.resume_in_process(tmp_path / "run", num_workers=0, every="1ep")
    assert resumed.loaded == tmp_path / "run" / "checkpoints" / _step_name(N)
    assert app.same_training(resumed.snapshot, runs.reference(0, "1ep")) == []


@pytest.mark.parametrize("every", ["1ep", "1it"])
def test_the_last_checkpoint_of_a_completed_run_holds_its_final_state(runs: Runs, every: str) -> None:
    """``last.pt`` of a completed run is what resuming (or extending) the run starts from: it must hold the state
    the run ended with, including what the ``at_end`` validation published after the last scheduled save."""
    reference = runs.reference(0, every)
    last = load_checkpoint(runs.base / f"reference-0-{every}" / "run" / "checkpoints" / "last.pt")
    assert last["stepbus"]["iteration"] == N
    assert app.differences(last["model"], reference["model"]) == []
    assert app.differences(last["optimizer"], reference["optimizer"]) == []
    saved = {k: v for k, v in last["callbacks"].items() if k != "Checkpointer"}
    final = {k: v for k, v in reference["callbacks"].items() if k != "Checkpointer"}
    assert app.differences(saved, final) == []
