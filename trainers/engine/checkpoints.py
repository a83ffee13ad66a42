"""A trainer's checkpoints: what it tracks beyond the model and optimizer, its payload, saving it and restoring one.

The format, the atomic writes and the choice of file live in ``trainers.checkpoint``; this part connects them to
the trainer's own state: the resumable point (never inside a step), the loop's counters and the RNG state that the
driver puts back at the exact point of the save.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import Loop
from trainers.checkpoint.format import CheckpointError
from trainers.checkpoint.restore import checked_counters, checkpoint_dirs, restore
from trainers.checkpoint.save import checkpoint_payload, save
from trainers.checkpoint.sharded import full_model_state, save_sharded
from trainers.distributed.ranks import Ranks
from trainers.engine.driver import LoopDriver

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["CheckpointMethods", "Checkpoints"]

Meta = Mapping[str, Any] | None

_log = logging.getLogger("stepbus")


class Checkpoints:
    """The checkpoint side of one trainer (see the module docstring)."""

    __slots__ = ("_driver", "_loop", "_ranks", "_trainer", "tracked")

    def __init__(self, trainer: BaseTrainer, loop: Loop, driver: LoopDriver, ranks: Ranks) -> None:
        self._trainer, self._loop, self._driver, self._ranks = trainer, loop, driver, ranks
        #: name -> object carried in every checkpoint (``trainer.track``)
        self.tracked: dict[str, Any] = {}

    def full_state(self) -> dict[str, Any]:
        return full_model_state(self._trainer.pipeline, self._ranks)

    def dirs(self) -> list[Path]:
        return checkpoint_dirs(self._trainer)

    def track(self, name: str, obj: Any) -> Any:
        if not isinstance(name, str) or not name:
            raise ValueError(f"track() needs a non-empty name, got {name!r}")
        if not callable(getattr(obj, "state_dict", None)) or not callable(getattr(obj, "load_state_dict", None)):
            raise TypeError(f"track({name!r}, ...): {type(obj).__name__} has no state_dict()/load_state_dict()")
        if name in self.tracked:
            raise ValueError(f"track({name!r}, ...): the name is already used by {self.tracked[name]!r}")
        self.tracked[name] = obj
        return obj

    def payload(self, *, reason: str, resumable: bool) -> dict[str, Any]:
        if resumable:
            self._driver.check_resumable_point()
        status = self._loop.status
        return checkpoint_payload(
            self._trainer,
            reason=reason,
            resumable=resumable,
            status=status,
            tracked=self.tracked,
            sharded=self._ranks.sharded,
        )

    def save(
        self, path: str | os.PathLike[str], *, reason: str, resumable: bool, metadata: Mapping[str, Any] | None
    ) -> Path:
        if resumable:
            self._driver.check_resumable_point()  # before any collective: every rank is at the same point

        def payload() -> dict[str, Any]:
            written = self._trainer.checkpoint_state(reason=reason, resumable=resumable)
            if metadata:
                written["stepbus"].update(metadata)
            return written

        trainer, target = self._trainer, Path(path)
        if not self._ranks.sharded:
            return save(target, payload, self._ranks, resumable=resumable)
        if not resumable:
            raise CheckpointError(
                target,
                "not written: with strategy='fsdp' the model's state is sharded over the ranks, and gathering it "
                "is a collective that a failing run cannot hold (resume from the last resumable checkpoint)",
            )
        return save_sharded(target, payload, self._ranks, trainer.pipeline, trainer.optimizers)

    def load_counters(self, state: dict[str, Any]) -> None:
        if self._loop.started:
            raise RuntimeError("load_state_dict() must be called before the first iterate()")
        trainer = self._trainer
        reload = self._driver.reload
        counters = checked_counters(trainer.state, trainer.seed, state, reload.iterations_for)
        reload.resume_at(counters, state.get("data_size"))
        trainer.state.load_state_dict(counters)
        self._loop.restore(ended=bool(state.get("ended", True)))

    def restore(self, checkpoint: str | os.PathLike[str], *, fresh_optimizer: bool = False) -> Path | None:
        trainer = self._trainer
        if not isinstance(fresh_optimizer, bool):
            raise TypeError(f"restore(): fresh_optimizer must be True or False, got {fresh_optimizer!r}")
        if self._loop.started:
            raise RuntimeError(
                f"restore({str(checkpoint)!r}) must be called before training starts; this trainer is at "
                f"{trainer.state} (build a new trainer to load a checkpoint)"
            )
        restored = restore(
            trainer,
            checkpoint,
            self._ranks,
            self.tracked,
            self._driver.reload.iterations_for,
            fresh_optimizer=fresh_optimizer,
        )
        if restored is None:
            return None
        self._driver.reload.resume_at(restored.counters, restored.data_size)
        trainer.state.load_state_dict(restored.counters)
        # what callbacks had published (lr, grad_norm, val/*): a resumed run's rows equal an uninterrupted run's
        trainer.state.metrics.update(restored.metrics)
        self._loop.restore(ended=restored.ended)
        self._driver.restore_rng_at(restored.rng, restored.counters)
        trainer.resumed_from = restored.path
        fresh = f" with fresh optimizers ({self._optimizer_names()})" if fresh_optimizer else ""
        _log.info("resumed from %s at %s%s", restored.path, trainer.state, fresh)
        return restored.path

    def _optimizer_names(self) -> str:
        return ", ".join(f"{name}: {type(opt).__name__}" for name, opt in self._trainer.optimizers.items())


class CheckpointMethods:
    """The trainer's checkpoint methods (a mixin of ``BaseTrainer`` over its :class:`Checkpoints`)."""

    _checkpoints: Checkpoints

    def restore(self, checkpoint: str | os.PathLike[str], *, fresh_optimizer: bool = False) -> Path | None:
        """Before training: load a checkpoint -- a file, a directory (its newest loadable one) or ``"auto"`` (see
        :mod:`trainers.checkpoint.restore`) -- so that the next :meth:`iterate` continues with the exact next batch;
        returns the file loaded (``None``: ``"auto"`` found none and the run starts fresh). The restored run emits
        ``pre_training(resumed=True)``, ``pre_epoch`` again when the checkpoint was taken mid-epoch, then the next
        step; no consumed batch is replayed and no event of a finished step repeats.

        A checkpoint that does not fit (model, optimizer class or parameter groups, GradScaler, seed, data length)
        is a ``CheckpointError`` raised before anything changes. ``fresh_optimizer=True`` continues the saved run
        -- model, counters, data position, callbacks, tracked objects, RNG -- with the optimizers and the GradScaler
        as built (empty state, the configured hyper-parameters): for a run resumed with another optimizer or
        precision. Its counters go on, so a schedule by position (``LRDecay`` milestones) applies the decay due at
        that position to the configured learning rates."""
        return self._checkpoints.restore(checkpoint, fresh_optimizer=fresh_optimizer)

    def checkpoint_dirs(self) -> list[Path]:
        """Where ``restore("auto")`` looks: every callback's ``checkpoint_dir``, else ``run_dir/checkpoints``."""
        return self._checkpoints.dirs()

    def track(self, name: str, obj: Any) -> Any:
        """Carry ``obj`` (anything with ``state_dict()`` / ``load_state_dict()``: an LR scheduler driven by hand,
        an AMP ``GradScaler``, an EMA of the weights) in every checkpoint under ``name``; returns ``obj``."""
        return self._checkpoints.track(name, obj)

    def full_state_dict(self) -> dict[str, Any]:
        """The pipeline's whole ``state_dict`` with its tensors on the CPU: for an export, or to compare runs. With
        ``strategy="fsdp"`` in a job it is gathered from the shards -- a collective, so every rank calls it -- and
        rank 0 gets it, the other ranks an empty dict."""
        return self._checkpoints.full_state()

    def checkpoint_state(self, *, reason: str = "manual", resumable: bool = True) -> dict[str, Any]:
        """Everything an exact resume needs, as tensors and plain containers. A ``RuntimeError`` for a resumable
        one inside a step or before an epoch's ``post_epoch`` (:meth:`request_checkpoint` waits for such a point).
        With sharded parameters (``strategy="fsdp"``) the model's and optimizers' tensors are not in it: they are
        written by every rank into a sharded checkpoint (:meth:`save_checkpoint`)."""
        return self._checkpoints.payload(reason=reason, resumable=resumable)

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, reason: str = "manual", resumable: bool = True, metadata: Meta = None
    ) -> Path:
        """Write :meth:`checkpoint_state` to ``path`` atomically (in a job rank 0 writes, with every rank's RNG);
        ``metadata`` adds plain keys. A ``CheckpointError`` when it cannot be written; the previous file is intact.
        With sharded parameters ``path`` becomes a directory of every rank's shards (``trainers.checkpoint.sharded``),
        and only a resumable checkpoint can be written."""
        return self._checkpoints.save(path, reason=reason, resumable=resumable, metadata=metadata)
