"""``EMA``: an exponential moving average of the weights, used for validation.

Events used: ``pre_training`` (starts the average from the current weights, unless a checkpoint restored one),
``post_step`` (after each optimizer step: ``avg = decay * avg + (1 - decay) * weight``, one fused ``lerp`` on the
device, no host sync; an iteration inside an accumulation window has no optimizer step and changes nothing),
``pre_validation`` / ``post_validation`` (the averaged weights are swapped into the pipeline for the validator and
swapped back after it; an ``exception`` in between swaps them back too). The average of every floating-point
parameter is in :meth:`EMA.state_dict`, so a resumed run continues the same average.

With ``warmup`` the decay of the n-th update is ``min(decay, (1 + n) / (10 + n))`` (the ramp of TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so an early average is not dominated by the initial weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lifecycle import Callback, Priority, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["EMA"]


class EMA(Callback):
    """Keep an exponential moving average of the pipeline's floating-point parameters; validate with it.

    Args:
        decay: the weight of the old average at each update (0 <= decay < 1).
        warmup: ramp the decay up over the first updates (see the module docstring).
        every: update after every ``every`` iterations' optimizer step (a schedule; ``None``: after each one).
        validate_with_average: swap the average in for validation (``False``: keep it for export only).
    """

    priority = Priority.STATE  # before validators and loggers read the weights at the same post_step
    scheduled = ("post_step",)

    def __init__(
        self,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        every: ScheduleSpec = None,
        validate_with_average: bool = True,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA {self.state_key!r}: decay must be a number in [0, 1), got {decay!r}")
        self.decay, self.warmup, self.validate_with_average = float(decay), bool(warmup), bool(validate_with_average)
        #: optimizer steps averaged so far
        self.updates = 0
        self._params: list[torch.Tensor] = []
        self._average: list[torch.Tensor] = []
        self._restored: list[torch.Tensor] | None = None  # an average loaded from a checkpoint, applied at start
        self._swapped = False

    def setup(self, trainer: BaseTrainer) -> None:
        self._params = [p for p in trainer.pipeline.parameters() if p.is_floating_point()]
        if not self._params:
            raise ValueError(f"EMA {self.state_key!r}: {type(trainer.pipeline).__name__} has no floating-point weights")

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        with torch.no_grad():
            if self._restored is not None:
                pairs = zip(self._restored, self._params, strict=True)
                self._average = [saved.to(p.device, p.dtype).clone() for saved, p in pairs]
                self._restored = None
            elif not self._average:
                self._average = [p.detach().clone() for p in self._params]

    @property
    def average(self) -> list[torch.Tensor]:
        """The averaged tensors, in the order of the pipeline's floating-point parameters."""
        return self._average

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.state.mid_window:
            return  # no optimizer step in this iteration
        decay = self.decay
        if self.warmup:
            decay = min(decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._average, [p.detach() for p in self._params], 1.0 - decay)
        self.updates += 1

    def pre_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self.validate_with_average and not self._swapped:
            self._swap()

    def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._swapped:
            self._swap()

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._swapped:
            self._swap()  # the training weights go back, whatever failed inside a validation

    def _swap(self) -> None:
        with torch.no_grad():
            for param, average in zip(self._params, self._average, strict=True):
                held = param.detach().clone()
                param.copy_(average)
                average.copy_(held)
        self._swapped = not self._swapped

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "average": [a.detach().clone() for a in self._average]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average, updates = state.get("average"), state.get("updates")
        if not isinstance(average, list) or not all(isinstance(a, torch.Tensor) for a in average):
            raise ValueError(f"EMA {self.state_key!r}: expected 'average' as a list of tensors, got {type(average)}")
        if average and self._params and [a.shape for a in average] != [p.shape for p in self._params]:
            raise ValueError(
                f"EMA {self.state_key!r}: the saved average has shapes {[tuple(a.shape) for a in average]}, the "
                f"pipeline's weights {[tuple(p.shape) for p in self._params]}"
            )
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"EMA {self.state_key!r}: 'updates' must be an int >= 0, got {updates!r}")
        self.updates, self._restored, self._average = updates, (list(average) or None), []
