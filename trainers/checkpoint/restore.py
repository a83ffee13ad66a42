"""Loading a checkpoint into a trainer before it starts: choose the file, check that it fits, apply it all or
nothing.

``restore(path)`` takes a checkpoint file, a directory (its newest loadable checkpoint), or ``"auto"``: the newest
loadable checkpoint in the directory of each callback that has a ``checkpoint_dir`` (a Checkpointer), else in
``run_dir/checkpoints``. In a directory, a checkpoint that is damaged, incompatible or not a stepbus file is reported
with a warning and the next newest is tried; ``"auto"`` with no checkpoint at all starts from scratch. Every other
failure is a :class:`~trainers.checkpoint.format.CheckpointError` naming the file and the reason, raised before
anything is changed. In a job, rank 0 chooses the file and every rank loads that same one.

What must fit: the model (keys and shapes), the counters (seed, iterations per epoch, accumulation), the RNG state,
and the optimizers and GradScaler (class, parameter groups and shapes, GradScaler present or not: see
:mod:`trainers.checkpoint.optimizer_fit`). Callback and tracked-object states are offered to their objects, which
may refuse them; one registered now but absent from the file, or the other way round, is a warning (adding a logger
to a resumed run is ordinary). ``fresh_optimizer=True`` restores everything but the optimizers' and the
GradScaler's state: they stay as built, with the configured hyper-parameters, and the run continues from the saved
counters -- the way to resume after changing the optimizer or the precision.

A sharded checkpoint directory (``strategy="fsdp"``) is chosen and checked the same way -- its model against DCP's
index of keys and shapes, its optimizers against their recorded groups -- and its tensors are read last, together,
by every rank (:class:`~trainers.checkpoint.sharded.ModelAndOptimizers`); so is a checkpoint file loaded into a
sharded model.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import State
from trainers.checkpoint.format import LONE_OPTIMIZER, CheckpointError, check_model_fits, load_checkpoint, load_newest
from trainers.checkpoint.optimizer_fit import (
    FRESH_HINT,
    GRAD_SCALER,
    check_optimizer_fits,
    check_scaler_fits,
    hyper_parameter_changes,
)
from trainers.checkpoint.rng import check_rng
from trainers.checkpoint.shard_files import is_sharded
from trainers.checkpoint.sharded import ModelAndOptimizers
from trainers.distributed.ranks import Ranks

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["PlanIterations", "Restored", "checked_counters", "checkpoint_dirs", "restore"]

#: the iterations per epoch of a trainer's batch plan over a dataset of the given length
PlanIterations = Callable[[int], int]

_log = logging.getLogger("stepbus")


@dataclass(frozen=True)
class Restored:
    """A checkpoint applied to the model, optimizer, callbacks and tracked objects; what the trainer itself takes
    from it (counters, whether the run had ended, the RNG state to put back at the resume point)."""

    path: Path
    counters: dict[str, int]
    ended: bool
    rng: Any
    data_size: int | None = None  #: the dataset length the saved epoch ran over (``None``: not recorded)
    #: the numbers and strings published in ``state.metrics`` when it was saved (``lr``, ``grad_norm``, ``val/*``)
    metrics: dict[str, float | int | str] = field(default_factory=dict)


def checkpoint_dirs(trainer: BaseTrainer) -> list[Path]:
    """Where ``restore("auto")`` looks: every registered callback's ``checkpoint_dir``, else ``run_dir/checkpoints``."""
    found: list[Path] = []
    for callback in trainer.callbacks:
        directory = getattr(callback, "checkpoint_dir", None)
        if isinstance(directory, Path) and directory not in found:
            found.append(directory)
    if not found and trainer.run_dir is not None:
        found.append(trainer.run_dir / "checkpoints")
    return found


def restore(
    trainer: BaseTrainer,
    checkpoint: str | os.PathLike[str],
    ranks: Ranks,
    tracked: Mapping[str, Any],
    plan_iterations: PlanIterations | None = None,
    *,
    fresh_optimizer: bool = False,
) -> Restored | None:
    """Choose, check and apply a checkpoint (see the module docstring); ``None`` when ``"auto"`` found none.
    ``plan_iterations(size)``: the iterations per epoch of this trainer's plan over ``size`` items (a checkpoint
    taken after the data was reloaded to another length restores at that length). ``fresh_optimizer``: everything
    but the optimizers' and the GradScaler's state, which stay as built (neither is checked against the file)."""
    if isinstance(checkpoint, str) and checkpoint == "auto":
        directories = checkpoint_dirs(trainer)
        if not directories:
            raise ValueError(
                "restore('auto') needs a place to look: give the trainer run_dir=... or add a Checkpointer, "
                "or pass a checkpoint file or directory"
            )
        found = _agreed(ranks, directories[0], lambda: load_newest(directories, required=False))
        if found is None:
            if trainer.is_global_zero:  # the ranks agreed on it: one of them says so
                _log.warning("restore('auto'): no checkpoint in %s; starting from scratch", _names(directories))
            return None
    else:
        target = Path(checkpoint)
        if target.is_dir() and not is_sharded(target):  # a directory of checkpoints, not a sharded one
            found = _agreed(ranks, target, lambda: load_newest([target], required=True))
        else:
            found = _agreed(ranks, target, lambda: (target, load_checkpoint(target)))
        assert found is not None
    return _apply(trainer, ranks, *found, tracked, plan_iterations, fresh_optimizer=fresh_optimizer)


def checked_counters(
    state: State, seed: int, saved: Any, plan_iterations: PlanIterations | None = None
) -> dict[str, int]:
    """The counters of a trainer state dict, checked against a trainer at ``state`` with ``seed``; raises
    ``ValueError``. The trainer's own ``max_epochs`` is kept, so a finished run can be extended. With
    ``plan_iterations``, a state saved by a run whose data was reloaded to another length (``varied_epochs``) fits
    when this trainer's plan over the saved ``data_size`` has the saved iterations per epoch."""
    if not isinstance(saved, dict) or "counters" not in saved or "seed" not in saved:
        raise ValueError(f"not a trainer state dict (expected keys 'counters' and 'seed'): {_short(saved)}")
    counters = dict(saved["counters"])
    expected = state.iterations_per_epoch
    size = saved.get("data_size")
    # only a run that reloaded its data to another length may resume at another length (else: the data changed)
    varied = bool(counters.get("varied_epochs")) and counters.get("iterations_per_epoch") != expected
    if plan_iterations is not None and varied and isinstance(size, int) and size > 0:
        expected = plan_iterations(size)
    if counters.get("iterations_per_epoch") != expected:
        raise ValueError(
            f"the saved run had {counters.get('iterations_per_epoch')} iterations per epoch, this trainer has "
            f"{expected}: dataset size, batch_size or drop_last changed, so the data "
            "position cannot be restored"
        )
    if saved["seed"] != seed:
        raise ValueError(
            f"the saved run used seed={saved['seed']}, this trainer seed={seed}: the data "
            f"order would differ; construct the trainer with seed={saved['seed']}"
        )
    counters["max_epochs"] = state.max_epochs
    if counters.get("epoch", 0) > state.max_epochs:
        raise ValueError(
            f"the saved run reached epoch {counters.get('epoch')}, beyond this trainer's max_epochs={state.max_epochs}"
        )
    probe = State(max_epochs=state.max_epochs, iterations_per_epoch=expected, accumulate=state.accumulate)
    probe.load_state_dict(counters)  # validates without touching the trainer's state
    if probe.mid_window:
        raise ValueError(
            f"it was saved after step {probe.epoch_iteration} of epoch {probe.epoch}, inside an accumulation window of "
            f"this trainer (accumulate={state.accumulate}); restore it with an accumulate that divides "
            f"{probe.epoch_iteration}"
        )
    return counters


def _agreed(
    ranks: Ranks, asked: Path, choose: Callable[[], tuple[Path, dict[str, Any]] | None]
) -> tuple[Path, dict[str, Any]] | None:
    """Rank 0 chooses the file with ``choose()`` and every other rank loads that same file; any rank's failure is
    raised on every rank (naming the rank), before anything is applied. (In a single process: ``choose()``.)"""
    found: tuple[Path, dict[str, Any]] | None = None

    def chosen_on_zero() -> str | None:
        nonlocal found
        found = choose()
        return None if found is None else str(found[0])

    path_text = ranks.on_rank_zero(
        chosen_on_zero,
        lambda failure: CheckpointError(asked, f"rank 0 could not resume from it: {failure.reason or failure}"),
    )
    if path_text is None:
        return None
    error: Exception | None = None
    if ranks.rank != 0:
        try:
            found = (Path(path_text), load_checkpoint(path_text, shard_crc=False))  # rank 0 checked every byte
        except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised
            error = exc
    problems = ranks.all_gather(None if error is None else str(error))
    if error is not None:
        raise error
    for rank, text in enumerate(problems):
        if text is not None:
            raise CheckpointError(Path(path_text), f"rank {rank} could not load it: {text}")
    return found


def _apply(
    trainer: BaseTrainer,
    ranks: Ranks,
    path: Path,
    loaded: dict[str, Any],
    tracked: Mapping[str, Any],
    plan_iterations: PlanIterations | None = None,
    *,
    fresh_optimizer: bool = False,
) -> Restored:
    """Check that ``loaded`` fits ``trainer``, then apply it. Everything that can be checked without changing the
    trainer is checked first -- model, optimizers, GradScaler, counters, RNG -- so a checkpoint that does not fit
    changes nothing; a callback or tracked object that refuses its state undoes what was applied before it."""
    meta = loaded["stepbus"]
    if not meta.get("resumable", True):
        raise CheckpointError(
            path,
            f"not resumable: it was written at iteration {meta.get('iteration')} because of {meta.get('reason')!r} "
            "(the state at a failure, mid-step); load it with trainers.checkpoint.format.load_checkpoint to "
            "inspect it",
        )
    try:
        counters = checked_counters(trainer.state, trainer.seed, loaded["trainer"], plan_iterations)
    except ValueError as exc:
        raise CheckpointError(path, f"does not fit this trainer: {exc}") from None
    rng = _rng_of_this_rank(trainer, path, loaded)
    try:
        check_rng(rng)
    except ValueError as exc:
        raise CheckpointError(path, f"malformed: {exc}") from None
    check_model_fits(path, trainer.pipeline, loaded["model"])
    saved_tracked = loaded.get("tracked", {})
    if not isinstance(saved_tracked, dict):
        raise CheckpointError(path, f"malformed: 'tracked' is a {type(saved_tracked).__name__}, expected a dict")
    optimizers: list[tuple[str, Any]] = []
    if fresh_optimizer:  # the optimizers and the GradScaler stay as built: nothing of theirs is read
        tracked = {name: obj for name, obj in tracked.items() if name != GRAD_SCALER}
        saved_tracked = {name: state for name, state in saved_tracked.items() if name != GRAD_SCALER}
    else:
        optimizers = _saved_optimizers(path, trainer, meta, loaded["optimizer"])
        for name, saved in optimizers:
            check_optimizer_fits(path, name, trainer.optimizers[name], saved, meta)
        check_scaler_fits(
            path, saved=GRAD_SCALER in saved_tracked, own=GRAD_SCALER in tracked, own_scaler=trainer.scaler is not None
        )
    saved_callbacks = loaded["callbacks"]
    # all or nothing: the parts are applied in order of how likely they are to refuse (callbacks and tracked
    # objects run user code), each undone from a snapshot if a later one fails; the model, checked key by key
    # and shape by shape above, goes last
    parts: list[tuple[str, Any, Any]] = []
    changed: list[tuple[str, str]] = []  # (optimizer, its saved hyper-parameters that differ from the configured)
    for name, obj in tracked.items():
        if name in saved_tracked:
            parts.append((f"tracked object {name!r}", obj, saved_tracked[name]))
        else:
            _log.warning("resume: %s has no state for tracked object %r; it starts fresh", path, name)
    for name in sorted(set(saved_tracked) - set(tracked)):
        _log.warning("resume: %s holds state for tracked object %r, which this trainer does not track", path, name)
    for callback in trainer.callbacks:
        key = callback.state_key
        if key in saved_callbacks:
            parts.append((f"callback {key!r} ({type(callback).__name__})", callback, saved_callbacks[key]))
        else:
            _log.warning("resume: %s has no state for callback %r; it starts fresh", path, key)
    extra = sorted(set(saved_callbacks) - {cb.state_key for cb in trainer.callbacks})
    if extra:
        _log.warning("resume: %s holds state for callbacks %s, which are not registered now", path, extra)
    together = is_sharded(path) or ranks.sharded  # the tensors load through DCP: model and optimizers at once
    for name, saved in optimizers:
        what = "the optimizer" if name == LONE_OPTIMIZER else f"optimizer {name!r}"
        if not together:
            parts.append((what, trainer.optimizers[name], saved))
        changes = hyper_parameter_changes(trainer.optimizers[name], saved)
        if changes:
            changed.append((name, "; ".join(changes)))
    model = f"the model ({type(trainer.pipeline).__name__})"
    if together:
        both = {name: (trainer.optimizers[name], saved) for name, saved in optimizers}
        last: Any = ModelAndOptimizers(path, trainer.pipeline, both)
        parts.append((f"{model} and optimizers" if both else model, last, loaded["model"]))
    else:
        last = trainer.pipeline
        parts.append((model, last, loaded["model"]))
    undo: list[tuple[Any, Any]] = []
    try:
        for what, obj, saved in parts:
            before = copy.deepcopy(obj.state_dict()) if obj is not last else None  # the last part needs no undo
            try:
                obj.load_state_dict(saved)
            except Exception as exc:
                raise CheckpointError(path, f"{what} refused its saved state: {type(exc).__name__}: {exc}") from exc
            if before is not None:
                undo.append((obj, before))
    except CheckpointError:
        for obj, before in reversed(undo):
            try:
                obj.load_state_dict(before)
            except Exception as exc:  # noqa: BLE001 - reported; the original error is the one raised
                _log.error("resume: could not undo loading %r after a failure: %s", obj, exc)
        raise
    for name, differences in changed:
        _log.warning(
            "resume: %s: optimizer %r continues with its saved hyper-parameters, not the configured ones: %s "
            "(restore with fresh_optimizer=True to start it with the configured ones)",
            path,
            name,
            differences,
        )
    size = loaded["trainer"].get("data_size")
    ended = bool(loaded["trainer"].get("ended", True))
    saved_metrics = meta.get("metrics")
    metrics = {
        str(k): v
        for k, v in (saved_metrics if isinstance(saved_metrics, dict) else {}).items()
        if type(v) in (int, float, str)
    }
    return Restored(path, counters, ended, rng, size if isinstance(size, int) and size > 0 else None, metrics)


def _saved_optimizers(path: Path, trainer: BaseTrainer, meta: dict[str, Any], saved: Any) -> list[tuple[str, Any]]:
    """(name, saved state) for each of the trainer's optimizers, or a ``CheckpointError`` when the names differ."""
    names = meta.get("optimizers", [LONE_OPTIMIZER])  # written by every stepbus that had named optimizers
    own = list(trainer.optimizers)
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(own):
        raise CheckpointError(
            path, f"does not fit this trainer: it holds the optimizers {names}, this trainer has {own}; {FRESH_HINT}"
        )
    if names == [LONE_OPTIMIZER]:
        return [(LONE_OPTIMIZER, saved)]
    if not isinstance(saved, dict) or sorted(saved) != sorted(own):
        raise CheckpointError(path, f"malformed: 'optimizer' should hold the states of {own} by name")
    return [(name, saved[name]) for name in own]


def _rng_of_this_rank(trainer: BaseTrainer, path: Path, loaded: dict[str, Any]) -> Any:
    """The RNG state this rank restores: its own from a distributed checkpoint's ``rank_rng`` (every rank's, in
    rank order), else the ``rng`` of the process that saved."""
    rank, world = trainer.rank, trainer.world_size
    states = loaded.get("rank_rng")
    if not isinstance(states, list) or not states:
        if world > 1 and rank > 0:
            _log.warning(
                "resume: %s holds the RNG state of one process; rank %d restores it too (random draws, such "
                "as dropout, repeat across ranks from here)",
                path,
                rank,
            )
        return loaded["rng"]
    if len(states) != world:
        _log.warning(
            "resume: %s was saved by %d ranks, this run has %d; rank %d restores the RNG state of rank %d",
            path,
            len(states),
            world,
            rank,
            rank % len(states),
        )
    return states[rank % len(states)]


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
