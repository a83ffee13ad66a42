"""``preflight(config, run_dir)``: every check ``stepbus train`` makes before its first step, with nothing written.

``stepbus config validate`` and ``stepbus train --dry-run`` answer "would this train?" with it. It does what
``train`` does up to its first step, short of the steps that write:

* checks the run directory: a directory, or creatable (its nearest existing ancestor a writable directory);
* builds the trainer exactly as ``train`` does (:func:`trainers.config.builder.build`): the output paths checked
  against the run directory, the trainer factory run (model, data, optimizer: ``lr: -1``, a missing
  ``trainer.image``, ``max_epochs: 0`` are refused there), every callback constructed and set up on that trainer
  (a pipeline without ``prune()`` for grid pruning, W&B ``mode: online`` without credentials);
* checks what a checkpointer checks at ``pre_training``: a fresh run (no ``resume``) is refused a checkpoint folder
  that already holds checkpoints, which belong to an earlier run;

then tears it all down (every callback removed, so each ``teardown`` runs, and the trainer closed). Nothing is
created: no run directory, no ``config.yaml``, no checkpoint folder, no TensorBoard or W&B run -- those are opened
by ``pre_training`` handlers, which a preflight never emits. Every refusal is a :class:`ConfigError` naming the key
at fault, the same error ``train`` reports for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.config.builder import build
from trainers.config.errors import ConfigError, Problem
from trainers.config.output_paths import check_output_paths, check_run_directory

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig
    from trainers.engine.trainer import BaseTrainer

__all__ = ["preflight", "preflight_trainer"]


def preflight(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    registry: Registry | None = None,
    *,
    resume: str | None = None,
    objects: Mapping[str, Any] | None = None,
) -> None:
    """Run every check ``train`` runs before its first step (see the module docstring); raise
    :class:`ConfigError` for the first stage that finds problems. ``resume``: what ``train --resume`` would load
    (a checkpoint folder that holds checkpoints is then expected). ``objects``: as for ``build``."""
    with preflight_trainer(config, run_dir, registry, resume=resume, objects=objects):
        pass


@contextmanager
def preflight_trainer(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    registry: Registry | None = None,
    *,
    resume: str | None = None,
    objects: Mapping[str, Any] | None = None,
) -> Iterator[BaseTrainer]:
    """:func:`preflight` that lends the checked trainer to the ``with`` block (``train --dry-run`` prints its
    handlers), then tears it down."""
    problems = check_run_directory(run_dir) + check_output_paths(config, run_dir)
    if problems:
        raise ConfigError(problems, config.source)
    trainer = build(config, run_dir=run_dir, registry=registry, objects=objects)
    try:
        if resume is None:
            _check_checkpoint_folders(config, trainer)
        yield trainer
    finally:
        _dismantle(trainer)


def _check_checkpoint_folders(config: RunConfig, trainer: BaseTrainer) -> None:
    """A fresh run is refused a checkpoint folder that holds checkpoints (the Checkpointer's own check at
    ``pre_training``, made here without its side effects)."""
    from callbacks.checkpointer import Checkpointer
    from trainers.checkpoint.format import list_checkpoints

    keys = {id(callback): key for callback, key in _config_keys(config, trainer)}
    problems: list[Problem] = []
    for callback in trainer.callbacks:
        if not isinstance(callback, Checkpointer) or callback.checkpoint_dir is None:
            continue
        try:
            existing = list_checkpoints(Path(callback.checkpoint_dir))
        except OSError:  # unreadable: the checkpointer reports it at pre_training in its own words
            continue
        if existing:
            newest = existing[0]
            problems.append(
                Problem(
                    keys.get(id(callback), "callbacks"),
                    f"{callback.checkpoint_dir} holds {len(existing)} checkpoint(s) of an earlier run (newest "
                    f"{newest.path.name}, iteration {newest.iteration}); continue that run with --resume auto, or "
                    "choose another run directory",
                )
            )
    if problems:
        raise ConfigError(problems, config.source)


def _config_keys(config: RunConfig, trainer: BaseTrainer) -> list[tuple[Any, str]]:
    """The trainer's callbacks that came from config blocks, with their keys: ``build`` adds them last, in order."""
    keys = [f"callbacks.{spec.key}" for spec in config.callbacks if spec.enabled]
    added = trainer.callbacks[len(trainer.callbacks) - len(keys) :] if keys else ()
    return list(zip(added, keys, strict=True))


def _dismantle(trainer: BaseTrainer) -> None:
    """Remove every callback, newest first (each ``teardown`` runs), then close the trainer."""
    try:
        for callback in reversed(trainer.callbacks):
            trainer.remove_callback(callback)
    finally:
        trainer.close()
