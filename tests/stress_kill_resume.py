"""Stress: ``kill -9`` a checkpointing training at many random moments; each time ``restore("auto")`` must load the
newest checkpoint on disk and the resumed run must end bit-identical to the uninterrupted one.

    python -m tests.stress_kill_resume --trials 200 [--seed S] [--jobs 2] [--fresh-every 10] [--keep DIR]

Not collected by pytest (the suite runs a fixed sample of this in ``tests/trainers/checkpoint/test_resume_exact.py``).
The training is ``tests/trainers/checkpoint/resume_app.py``. Configurations (workers, checkpoint period) rotate; a
trial waits for the run's ``step k`` line (k anywhere in the run, the end included), sleeps a random delay and kills
it, with fsync slowed down in some trials so that more kills land inside a save; every 5th trial is instead killed at a
chosen point of a save (``--die-in-save``: in the write, after the rename, before the ``last.pt`` link moves).
Killed runs execute two at a time (forked from a preloaded forkserver; every ``--fresh-every``-th in a fresh
interpreter); each is then resumed in this process. The uninterrupted references run in fresh interpreters.

Prints a table per configuration -- trials, kills by SIGKILL (a run that ended before its kill is resumed and
checked all the same), kills inside a save (a temporary file was left),
injected kills, resumes with no checkpoint yet (a fresh start), fallbacks to an older file, resumes from the run's
final checkpoint, mismatches -- then every mismatch. Exits 1 on any mismatch, 0 otherwise.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.trainers.checkpoint import resume_app as app

CONFIGS: list[tuple[int, str]] = [(0, "1it"), (2, "1it"), (0, "2it"), (2, "2it"), (0, "3it")]
DIE_AT = ("write", "rename", "link")


@dataclass
class Row:
    trials: int = 0
    killed: int = 0
    during_save: int = 0
    injected: int = 0
    fresh_start: int = 0
    fallbacks: int = 0
    from_final: int = 0
    mismatches: int = 0


@dataclass
class Failure:
    plan: app.KillPlan
    problems: list[str] = field(default_factory=list)


def plans(count: int, seed: int, fresh_every: int) -> list[app.KillPlan]:
    rng = random.Random(seed)
    made = []
    for index in range(count):
        num_workers, every = CONFIGS[index % len(CONFIGS)]
        fresh = bool(fresh_every) and index % fresh_every == fresh_every - 1
        if index % 5 == 4:  # a kill injected at a chosen point of the save of a random iteration
            period = int(every.removesuffix("it"))
            iteration = rng.choice(range(period, app.ITERATIONS + 1, period))
            extra = ("--die-in-save", str(iteration), "--die-at", rng.choice(DIE_AT))
            made.append(app.KillPlan(index, num_workers, every, None, fresh=fresh, extra=extra))
            continue
        made.append(
            app.KillPlan(
                index,
                num_workers,
                every,
                after_step=rng.randint(1, app.ITERATIONS),
                delay=round(rng.uniform(0.0, 0.025), 4),
                slow_fsync=rng.choice((0.0, 0.002, 0.01)),
                fresh=fresh,
            )
        )
    return made


def references(base: Path, jobs: int) -> dict[tuple[int, str], dict[str, Any]]:
    def one(config: tuple[int, str]) -> dict[str, Any]:
        num_workers, every = config
        directory = base / f"reference-{num_workers}-{every}"
        dump = base / f"reference-{num_workers}-{every}.pt"
        args = ["--run-dir", str(directory), "--num-workers", str(num_workers), "--every", every]
        result = app.run_script([*args, "--dump", str(dump)])
        if result.returncode != 0:
            raise SystemExit(f"the uninterrupted run {config} failed:\n{result.stdout}\n{result.stderr}")
        loaded: dict[str, Any] = torch.load(dump, weights_only=False)
        return loaded

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(CONFIGS, pool.map(one, CONFIGS), strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress_kill_resume", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="killed runs executing at once")
    parser.add_argument("--fresh-every", type=int, default=10, help="every N-th trial in a fresh interpreter (0: none)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.jobs < 1:
        parser.error("--trials and --jobs must be >= 1")

    started = time.perf_counter()
    base = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="stress-kill-resume-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[int, str], Row] = defaultdict(Row)
    failures: list[Failure] = []
    try:
        refs = references(base, args.jobs)
        all_plans = plans(args.trials, args.seed, args.fresh_every)
        chunk = 10 * args.jobs
        for first in range(0, len(all_plans), chunk):
            batch = all_plans[first : first + chunk]
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # killed runs, --jobs at a time
                killed = list(pool.map(lambda p: app.kill_run(p, base / f"trial-{p.index:04d}"), batch))
            for outcome in killed:  # resumed here, with no thread running (DataLoader workers fork)
                plan = outcome.plan
                row = rows[(plan.num_workers, plan.every)]
                row.trials += 1
                row.killed += outcome.killed
                row.during_save += outcome.during_save
                row.injected += bool(plan.extra)
                try:
                    resumed = app.resume_in_process(outcome.run_dir, num_workers=plan.num_workers, every=plan.every)
                except Exception as exc:  # noqa: BLE001 - a resume that fails is a finding, reported below
                    problems = [f"resume failed: {type(exc).__name__}: {exc}"]
                else:
                    row.fresh_start += resumed.loaded is None
                    row.fallbacks += resumed.fallback
                    row.from_final += (
                        resumed.loaded is not None and resumed.loaded.name == f"step-{app.ITERATIONS:08d}.pt"
                    )
                    problems = app.check_resumed(
                        refs[(plan.num_workers, plan.every)], outcome, resumed, require_kill=False
                    )
                if problems:
                    row.mismatches += 1
                    failures.append(Failure(plan, problems))
                if args.keep is None:
                    shutil.rmtree(outcome.run_dir, ignore_errors=True)
            done = min(first + chunk, len(all_plans))
            print(f"{done}/{len(all_plans)} trials, {len(failures)} mismatches", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    columns = ("trials", "killed", "during_save", "injected", "fresh_start", "fallbacks", "from_final", "mismatches")
    header = f"{'workers':>7} {'every':>5} " + " ".join(f"{c:>11}" for c in columns)
    print(header)
    print("-" * len(header))
    total = Row()
    for config in CONFIGS:
        row = rows.get(config)
        if row is None:
            continue
        print(f"{config[0]:>7} {config[1]:>5} " + " ".join(f"{getattr(row, c):>11}" for c in columns))
        for c in columns:
            setattr(total, c, getattr(total, c) + getattr(row, c))
    print("-" * len(header))
    print(f"{'all':>7} {'':>5} " + " ".join(f"{getattr(total, c):>11}" for c in columns))
    print(f"{time.perf_counter() - started:.1f} s")
    for failure in failures:
        plan = failure.plan
        how = " ".join(plan.extra) if plan.extra else f"after step {plan.after_step} +{plan.delay * 1000:.1f} ms"
        print(
            f"MISMATCH trial {plan.index}: workers={plan.num_workers} every={plan.every} {how} "
            f"fsync+{plan.slow_fsync * 1000:.0f} ms fresh={plan.fresh}: {'; '.join(failure.problems[:3])}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
