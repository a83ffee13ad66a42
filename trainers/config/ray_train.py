"""``run_with_ray(config)``: a stepbus config trained on the workers of a Ray Train ``TorchTrainer``, for a cluster
that Ray manages. Ray starts the workers, sets up ``torch.distributed`` on them and restarts them after a failure;
stepbus trains on that process group as it does under ``torchrun``.

On the driver the config is loaded and checked (:func:`trainers.config.builder.load_config`, so a bad value is
refused before any worker starts) and the run directory is chosen (``<run.dir>/<run.name>-<timestamp>`` as
``stepbus train`` names it, made absolute). Each worker then builds the trainer with
:func:`trainers.config.builder.build` -- the same call ``stepbus train`` makes, so the trainer, its callbacks and
``config.yaml`` are those of a ``stepbus train`` run of the same config -- on the process group Ray started, adds a
:class:`callbacks.ray_report.RayReport` unless the config has one (a ``ray_report`` block sets its schedule),
restores the checkpoint Ray hands the run (``ray.train.get_checkpoint()``: a retry after a failure, or a run
continuing an earlier one of the same ``name`` and ``storage_path``) and trains.

This module sits in the config layer because it builds from a config and adds a callback; the parts a training
function of your own needs are :class:`~callbacks.ray_report.RayReport` and
:func:`trainers.distributed.ray_checkpoint.restore_from_ray`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.config.builder import load_config, new_run_dir

if TYPE_CHECKING:  # pragma: no cover
    import ray.train

    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig

__all__ = ["run_with_ray"]


def run_with_ray(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    overrides: Sequence[str] = (),
    run_dir: str | os.PathLike[str] | None = None,
    storage_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
    resume: bool = True,
    resume_from: str | os.PathLike[str] | ray.train.Checkpoint | None = None,
    max_failures: int = 0,
    registry: Registry | None = None,
) -> ray.train.Result:
    """Train ``config`` on ``num_workers`` Ray Train workers and return Ray's ``Result``.

    Args:
        config: a :class:`RunConfig`, a config mapping, a YAML file path, or ``None`` for the built-in default.
        num_workers: Ray workers, one stepbus rank each (>= 1).
        use_gpu: one GPU per worker (each rank trains on its own; ``nccl``).
        overrides: ``KEY=VALUE`` strings applied to the config first, as ``stepbus train --set``.
        run_dir: where the run writes (checkpoints, ``config.yaml``, loggers); every worker must see it (one
            machine, or shared storage). Default: ``<run.dir>/<run.name>-<timestamp>`` under the current directory.
        storage_path: Ray's storage for the reported checkpoints and results (Ray's default: ``~/ray_results``).
        name: the Ray run's name; a new run with the ``name`` and ``storage_path`` of an earlier one continues from
            its newest checkpoint.
        resume: restore the checkpoint Ray hands the run, when there is one (after a failure, a continued run).
        resume_from: when Ray hands none, start from this: a stepbus checkpoint file or directory (its newest), or
            a ``ray.train.Checkpoint`` of an earlier run.
        max_failures: how often Ray restarts the workers after a failure (``-1``: without limit); each restart
            continues from the newest reported checkpoint.
        registry: names to resolve (``Registry.default()`` when ``None``); sent to the workers, so callbacks and
            trainer factories registered in code are found there too.

    Raises ``ValueError``/``TypeError`` for a bad argument and ``ConfigError`` for a bad config before Ray starts
    anything; a failed run raises Ray's ``TrainingFailedError``.
    """
    _check(num_workers, use_gpu, resume, max_failures)
    if isinstance(overrides, str):
        raise TypeError(f"run_with_ray: overrides must be a list of 'KEY=VALUE' strings, got the string {overrides!r}")
    import ray.train
    from ray.train.torch import TorchTrainer

    resolved = load_config(config, overrides=tuple(overrides), registry=registry)
    directory = Path(run_dir) if run_dir is not None else new_run_dir(resolved)
    start: str | ray.train.Checkpoint | None
    if resume_from is None or isinstance(resume_from, ray.train.Checkpoint):
        start = resume_from
    elif Path(resume_from).exists():
        start = str(Path(resume_from).absolute())
    else:
        raise ValueError(f"run_with_ray: resume_from {str(resume_from)!r}: no such file or directory")
    job = {
        "config": resolved.data,
        "registry": registry,
        "run_dir": str(directory.absolute()),
        "cwd": os.getcwd(),
        "resume": resume,
        "resume_from": start,
    }
    trainer = TorchTrainer(
        _train_worker,  # type: ignore[arg-type]  # annotated as returning None; Ray keeps rank 0's value all the same
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=None if storage_path is None else str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


def _check(num_workers: object, use_gpu: object, resume: object, max_failures: object) -> None:
    """The arguments Ray would take badly or late, refused with what would be valid."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"run_with_ray: num_workers must be an int >= 1 (one stepbus rank each), got {num_workers!r}")
    for flag, value in (("use_gpu", use_gpu), ("resume", resume)):
        if not isinstance(value, bool):
            raise TypeError(f"run_with_ray: {flag} must be True or False, got {value!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise ValueError(f"run_with_ray: max_failures must be an int >= 0, or -1 for no limit, got {max_failures!r}")


def _train_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: build the trainer as ``stepbus train`` does, resume, train; rank 0's outcome (Ray's
    ``Result.return_value``)."""
    from rich.console import Console

    from callbacks.console_width import console_for
    from callbacks.ray_report import RayReport
    from trainers.config.builder import build
    from trainers.distributed.environment import rank
    from trainers.distributed.ray_checkpoint import restore_from_directory, restore_from_ray

    if Path(job["cwd"]).is_dir():
        os.chdir(job["cwd"])  # Ray starts workers elsewhere: relative paths in the config mean what they mean here
    console = console_for() if rank() == 0 else Console(quiet=True)  # rank 0 speaks for the job
    trainer = build(job["config"], registry=job["registry"], run_dir=job["run_dir"], objects={"console": console})
    try:
        if not any(isinstance(callback, RayReport) for callback in trainer.callbacks):
            trainer.add_callback(RayReport())
        resumed = restore_from_ray(trainer) if job["resume"] else None
        start = job["resume_from"]
        if resumed is None and start is not None:
            if isinstance(start, str):
                resumed = trainer.restore(start)
            else:
                with start.as_directory() as folder:
                    resumed = restore_from_directory(trainer, folder)
        status = trainer.train()
        return {
            "status": str(status),
            "iteration": trainer.state.iteration,
            "run_dir": str(trainer.run_dir),
            "resumed_from": None if resumed is None else str(resumed),
        }
    finally:
        trainer.close()
