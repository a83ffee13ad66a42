"""``EMA``: an exponential moving average of the weights, used for validation, the live preview and export.

Events used: ``pre_training`` (starts the average from the current weights, unless a checkpoint restored one),
``post_step`` (after each optimizer step: ``avg = decay * avg + (1 - decay) * weight``, one fused ``lerp`` on the
device, no host sync; an iteration inside an accumulation window has no optimizer step and changes nothing),
``pre_validation`` / ``post_validation`` (the averaged weights are copied into the pipeline for the validator and
the training weights copied back after it; an ``exception`` in between copies them back too). The average of every
floating-point parameter is in :meth:`EMA.state_dict`, so a resumed run continues the same average.

Other uses go through :class:`~callbacks.weights.EvaluationWeights`, where the EMA registers :meth:`EMA.applied`
when it is added to a trainer: ``Preview`` renders inside ``applied("preview")`` and user code exports inside
``applied("export")``, without importing this module. ``use_for`` says which uses get the average; at most one
provider serves each use, so a second EMA needs ``use_for`` without the uses the first one serves.
:meth:`EMA.average_state_dict` returns the whole ``pipeline.state_dict()`` with the average in place, whatever
``use_for`` says.

Swapping in copies the average into the parameters and keeps a copy of the training weights, which are copied back
at the end: the training weights come back bit for bit, and the average itself is never written by a swap. Nothing
of this runs per step.

With ``warmup`` the decay of the n-th update is ``min(decay, (1 + n) / (10 + n))`` (the ramp of TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so an early average is not dominated by the initial weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from callbacks.weights import USES, EvaluationWeights, Use
from lifecycle import Callback, Priority, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from trainers.engine.trainer import BaseTrainer

__all__ = ["EMA"]


class EMA(Callback):
    """Keep an exponential moving average of the pipeline's floating-point parameters; evaluate with it.

    Args:
        decay: the weight of the old average at each update (0 <= decay < 1).
        warmup: ramp the decay up over the first updates (see the module docstring).
        every: update after every ``every`` iterations' optimizer step (a schedule; ``None``: after each one).
        use_for: where the average replaces the training weights: ``"validation"`` (the validator's runs),
            ``"preview"`` (the live preview's renders), ``"export"`` (``EvaluationWeights.applied("export")``);
            ``()`` keeps it for :meth:`average_state_dict` only.
        validate_with_average: ``False`` drops ``"validation"`` from ``use_for`` (the older spelling, still
            accepted in code and configs).
    """

    priority = Priority.STATE  # before validators and loggers read the weights at the same post_step
    scheduled = ("post_step",)

    def __init__(
        self,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        every: ScheduleSpec = None,
        use_for: Sequence[Use] = USES,
        validate_with_average: bool = True,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA {self.state_key!r}: decay must be a number in [0, 1), got {decay!r}")
        if isinstance(use_for, str) or not isinstance(use_for, Iterable) or any(use not in USES for use in use_for):
            raise ValueError(
                f"EMA {self.state_key!r}: use_for must be a list of uses among {list(USES)}, got {use_for!r}"
            )
        chosen = set(use_for) - (set() if validate_with_average else {"validation"})
        self.decay, self.warmup = float(decay), bool(warmup)
        #: the uses that get the average, in the order of :data:`~callbacks.weights.USES`
        self.use_for: tuple[Use, ...] = tuple(use for use in USES if use in chosen)
        #: optimizer steps averaged so far
        self.updates = 0
        self._pipeline: nn.Module | None = None
        self._params: list[torch.Tensor] = []
        self._average: list[torch.Tensor] = []
        self._restored: list[torch.Tensor] | None = None  # an average loaded from a checkpoint, applied at start
        self._held: list[torch.Tensor] | None = None  # the training weights while the average is in the pipeline
        self._validating = False  # the average was put in place by pre_validation (and goes at post_validation)
        self._unregister: Callable[[], None] | None = None

    @property
    def validate_with_average(self) -> bool:
        """Whether validation runs on the average (``"validation"`` in :attr:`use_for`)."""
        return "validation" in self.use_for

    def setup(self, trainer: BaseTrainer) -> None:
        if trainer.sharded:
            raise ValueError(
                f"EMA {self.state_key!r}: with strategy='fsdp' each rank holds only a shard of the weights, and the "
                "average is checkpointed whole by rank 0; train with strategy='ddp' to keep an EMA"
            )
        pipeline = trainer.pipeline
        params: list[torch.Tensor] = [p for p in pipeline.parameters() if p.is_floating_point()]
        if not params:
            raise ValueError(f"EMA {self.state_key!r}: {type(pipeline).__name__} has no floating-point weights")
        # last: a refusal (another provider already serves a use) must leave nothing registered
        name = f"EMA {self.state_key!r}"
        try:
            self._unregister = EvaluationWeights.of(trainer).provide(name, self.applied, self.use_for)
        except ValueError as exc:
            raise ValueError(f"{exc} (EMA(..., use_for=[...]))") from None
        self._pipeline, self._params = pipeline, params

    def teardown(self, trainer: BaseTrainer) -> None:
        self._restore()
        self._validating = False
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

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
        """The averaged tensors, in the order of the pipeline's floating-point parameters (empty before training
        starts)."""
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
        if self.validate_with_average and self._apply():
            self._validating = True

    def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._end_validation()

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._end_validation()  # the training weights go back, whatever failed inside a validation

    def _end_validation(self) -> None:
        # only a swap pre_validation made: inside an applied() block the block's own end restores the weights
        if self._validating:
            self._validating = False
            self._restore()

    # ------------------------------------------------------------------ evaluating and exporting with the average
    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the pipeline inside the block; the training weights copied back after it, bit for bit,
        also when the block raises. Inside a validation (the average already in place) it changes nothing. Before
        training starts the average is the restored one, or else the weights themselves (nothing to swap)."""
        if not self._apply():
            yield
            return
        try:
            yield
        finally:
            self._restore()

    def average_state_dict(self, *, device: torch.device | str | None = None) -> dict[str, Any]:
        """A copy of the pipeline's whole ``state_dict()`` with each averaged parameter replaced by its average: the
        same keys in the same order (buffers and non-floating-point entries as the pipeline holds them), so it
        loads into a fresh pipeline with ``load_state_dict(strict=True)``. Every tensor is a new copy, on ``device``
        (``None``: where the pipeline keeps it; ``"cpu"`` for a file that loads anywhere) in the pipeline's dtype:
        training on does not change it, and ``torch.save`` can write it as it is."""
        if self._pipeline is None:
            raise RuntimeError(f"EMA {self.state_key!r}: not added to a trainer, so there is no pipeline to export")
        current = self._current()
        averages = {} if current is None else {id(p): a for p, a in zip(self._params, current, strict=True)}
        state = self._pipeline.state_dict(keep_vars=True)  # the parameters themselves, to find their averages
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                source = averages.get(id(value), value).detach()
                state[key] = source.to(device=value.device if device is None else device, dtype=value.dtype, copy=True)
        return state

    def _current(self) -> list[torch.Tensor] | None:
        """The average as it stands: the running one, else one a checkpoint restored before training, else
        ``None`` (before training starts the average is the weights themselves)."""
        return self._average or self._restored or None

    def _apply(self) -> bool:
        """Copy the average into the parameters, keeping the training weights; ``False`` when it is already in
        place or there is none yet."""
        current = self._current()
        if self._held is not None or current is None:
            return False
        with torch.no_grad():
            self._held = [p.detach().clone() for p in self._params]
            for param, average in zip(self._params, current, strict=True):
                param.copy_(average)
        return True

    def _restore(self) -> None:
        """Copy the training weights back, when the average is in place."""
        held = self._held
        if held is None:
            return
        with torch.no_grad():
            for param, weight in zip(self._params, held, strict=True):
                param.copy_(weight)
        self._held = None

    # ------------------------------------------------------------------ resume
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
