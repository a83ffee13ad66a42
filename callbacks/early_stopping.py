"""``EarlyStopping``: stop training when a validated metric stops improving, diverges, or reaches a target.

Events used: ``post_validation`` (checks the monitored metric after each validation that produced it) and
``pre_training`` (a resumed run that had been stopped early stops again at once; a fresh run starts with a clean
state). Publishes ``early_stopping/wait`` (validations since the last improvement) in ``trainer.state.metrics``.

The wait counter, the best value and the reason are in :meth:`EarlyStopping.state_dict`, so patience does not
restart after a resume -- the classic bug in peers (HF #28544, Lightning #1463).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from callbacks.metrics import Mode, improves, monitor_mode
from lifecycle import Callback, Priority

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

    from trainers.engine.trainer import BaseTrainer

__all__ = ["EarlyStopping"]

_log = logging.getLogger("stepbus.early_stopping")


class EarlyStopping(Callback):
    """Stop at the ``patience``-th consecutive validation without improvement (the Lightning/Keras rule).

    At each validation that produced ``monitor``, in this order: a non-finite value stops (``check_finite``); a
    value at or beyond ``stopping_threshold`` (in the good direction) stops; a value beyond
    ``divergence_threshold`` (in the bad direction) stops; a value that beats the best by more than ``min_delta``
    resets the wait; anything else increments it, and reaching ``patience`` stops. Stopping calls
    ``trainer.stop()`` -- the current epoch still gets its ``post_epoch``, then ``post_training(status="stopped")``
    -- and records why in :attr:`reason` and the iteration in :attr:`stopped_iteration`.

    Resumed and fresh runs: a run resumed from a checkpoint (``pre_training(resumed=True)``, or any run restored
    with ``trainer.restore``) continues the loaded wait and best, and one that had stopped early stops again at once.
    A *fresh* run that starts with state from elsewhere -- ``load_state_dict`` without a restore, or this instance
    reused from an earlier run -- starts over: that state counts another run's validations at another run's
    iterations, and its stop would leave this run without early stopping. The wait, the best and any stop are
    reset, with a warning naming what was dropped (logger ``stepbus.early_stopping``). To continue a run, restore
    its checkpoint; to keep a target from an earlier run, use ``stopping_threshold``.

    Args:
        monitor: the ``state.metrics`` key to watch, as a validator publishes it (``"val/loss"``, ``"val/psnr"``).
        mode: ``"min"`` or ``"max"``; inferred for known metric names (psnr, ssim: max; loss, mse, lpips: min).
        patience: validations without improvement before stopping (>= 1).
        min_delta: how much better than the best a value must be to count as an improvement (>= 0).
        stopping_threshold: stop as soon as the metric is at least this good.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_finite: stop when the metric is NaN or infinite.
    """

    priority = Priority.METRICS

    def __init__(
        self,
        monitor: str = "val/loss",
        *,
        mode: Mode | None = None,
        patience: int = 3,
        min_delta: float = 0.0,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = f"EarlyStopping {self.state_key!r}"
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{name}: monitor must be a metric name such as 'val/loss', got {monitor!r}")
        if monitor.startswith("best/"):
            raise ValueError(
                f"{name}: monitor={monitor!r} is a best-so-far value, which never gets worse; monitor the validated "
                f"metric itself, e.g. {'val/' + monitor.split('/')[-1]!r}"
            )
        mode = monitor_mode(monitor, mode, name)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"{name}: patience must be an int >= 1 (validations without improvement), got {patience!r}"
            )
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool) or not 0 <= min_delta < math.inf:
            raise ValueError(f"{name}: min_delta must be a finite number >= 0, got {min_delta!r}")
        for label, threshold in (
            ("stopping_threshold", stopping_threshold),
            ("divergence_threshold", divergence_threshold),
        ):
            if threshold is not None and (
                isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
            ):
                raise ValueError(f"{name}: {label} must be a finite number or None, got {threshold!r}")
        self.monitor = monitor
        self.mode: Mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.divergence_threshold = None if divergence_threshold is None else float(divergence_threshold)
        self.check_finite = bool(check_finite)
        #: validations since the last improvement
        self.wait = 0
        #: best value seen and the iteration it was seen at
        self.best: float | None = None
        self.best_iteration: int | None = None
        #: why training was stopped, and at which iteration (``None`` while it runs)
        self.reason: str | None = None
        self.stopped_iteration: int | None = None
        self._carried = False  # the state came from elsewhere: load_state_dict, or an earlier run of this instance

    def setup(self, trainer: BaseTrainer) -> None:
        self._carried = self._carried or self._has_state()

    def pre_training(self, trainer: BaseTrainer, *, resumed: bool = False, **_: Any) -> None:
        self._adopt(trainer, resumed=resumed or trainer.resumed_from is not None)
        trainer.state.metrics["early_stopping/wait"] = self.wait
        if resumed and self.stopped_iteration is not None:
            _log.info("%s: the resumed run had stopped early (%s); stopping again", self.state_key, self.reason)
            trainer.stop(f"{self.state_key}: {self.reason}")

    def post_validation(self, trainer: BaseTrainer, *, metrics: Mapping[str, float], **_: Any) -> None:
        if self._carried:  # a validation before pre_training (a GUI button, a request before train())
            state = trainer.state
            self._adopt(trainer, resumed=trainer.resumed_from is not None or state.iteration > 0)
        if self.stopped_iteration is not None:
            return
        if self.monitor not in metrics:
            self._check_missing(metrics)
            return
        value = float(metrics[self.monitor])
        iteration = trainer.state.iteration
        reason = self._verdict(value, iteration)
        trainer.state.metrics["early_stopping/wait"] = self.wait
        if reason is not None:
            self.reason, self.stopped_iteration = reason, iteration
            _log.info("%s: stopping at iteration %d: %s", self.state_key, iteration, reason)
            trainer.stop(f"{self.state_key}: {reason}")

    def _verdict(self, value: float, iteration: int) -> str | None:
        good = self.mode == "max"
        if self.check_finite and not math.isfinite(value):
            return f"{self.monitor} = {value} is not finite"
        if self.stopping_threshold is not None and (
            value >= self.stopping_threshold if good else value <= self.stopping_threshold
        ):
            return f"{self.monitor} = {value:g} reached stopping_threshold {self.stopping_threshold:g}"
        if self.divergence_threshold is not None and (
            value < self.divergence_threshold if good else value > self.divergence_threshold
        ):
            return f"{self.monitor} = {value:g} is beyond divergence_threshold {self.divergence_threshold:g}"
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_iteration, self.wait = value, iteration, 0
            return None
        self.wait += 1
        if self.wait >= self.patience:
            return (
                f"{self.monitor} did not improve by more than {self.min_delta:g} ({self.mode}) in {self.wait} "
                f"validations; best {self.best:g} at iteration {self.best_iteration}"
            )
        return None

    def _check_missing(self, metrics: Mapping[str, float]) -> None:
        # another validator's metrics (test/*) are not ours to judge; the same namespace without our metric is a typo
        namespace = self.monitor.rsplit("/", 1)[0] if "/" in self.monitor else ""
        if namespace and any(key.rsplit("/", 1)[0] == namespace for key in metrics):
            raise KeyError(
                f"EarlyStopping {self.state_key!r} monitors {self.monitor!r}, but the validation published "
                f"{sorted(metrics)}; set monitor= to one of them"
            )

    def _has_state(self) -> bool:
        return self.wait != 0 or self.best is not None or self.stopped_iteration is not None

    def _adopt(self, trainer: BaseTrainer, *, resumed: bool) -> None:
        """Decide, once per run, what state from elsewhere means: a resumed run continues it, a fresh run drops it."""
        if not self._carried:
            return
        self._carried = False
        if resumed or not self._has_state():
            return
        stop = "" if self.stopped_iteration is None else f" and its stop at iteration {self.stopped_iteration}"
        _log.warning(
            "EarlyStopping %r: a fresh run (not resumed from a checkpoint) starts with state from another run "
            "(wait %d/%d, best %s=%s at iteration %s%s); patience starts over. To continue that run, restore its "
            "checkpoint (trainer.restore, stepbus train --resume) instead",
            self.state_key,
            self.wait,
            self.patience,
            self.monitor,
            "none" if self.best is None else f"{self.best:g}",
            self.best_iteration,
            stop,
        )
        self.reset()

    def reset(self) -> None:
        """Forget the wait, the best value and any earlier stop (to continue a run that had stopped early)."""
        self.wait, self.best, self.best_iteration, self.reason, self.stopped_iteration = 0, None, None, None, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "best": self.best,
            "best_iteration": self.best_iteration,
            "reason": self.reason,
            "stopped_iteration": self.stopped_iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            wait = int(state["wait"])
            best = None if state["best"] is None else float(state["best"])
            best_iteration = None if state["best_iteration"] is None else int(state["best_iteration"])
            reason = None if state["reason"] is None else str(state["reason"])
            stopped = None if state["stopped_iteration"] is None else int(state["stopped_iteration"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"EarlyStopping {self.state_key!r}: not an EarlyStopping state dict (expected keys wait, best, "
                f"best_iteration, reason, stopped_iteration): {type(exc).__name__}: {exc}"
            ) from None
        self.wait, self.best, self.best_iteration = wait, best, best_iteration
        self.reason, self.stopped_iteration = reason, stopped
        self._carried = True

    def __repr__(self) -> str:
        return (
            f"<EarlyStopping state_key={self.state_key!r} monitor={self.monitor!r} mode={self.mode} "
            f"wait={self.wait}/{self.patience} best={self.best}>"
        )
