"""``LRDecay``: learning-rate schedules as a callback -- Wisp's milestone decay, or any torch scheduler.

Events used (a subset, by configuration): ``pre_training`` (recomputes milestones for this run's length, also
after a resume), ``pre_step`` / ``pre_epoch`` (sets the LR of the coming step or epoch: milestones and warmup),
``post_step`` / ``post_epoch`` (steps a wrapped torch scheduler after the optimizer step, as torch expects), and
``post_validation`` (``ReduceLROnPlateau``, with the monitored metric).

Publishes in ``trainer.state.metrics`` the LR the latest step used: ``lr`` for one parameter group, ``lr/<name>``
per group otherwise (``name`` is the group's ``"name"`` entry, else its index).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lifecycle import Callback, Event, HandlerSpec, Priority

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["LRDecay", "SchedulerSpec"]

Scheduler = LRScheduler | ReduceLROnPlateau
#: A scheduler built on the trainer's optimizer, or a factory ``optimizer -> scheduler``.
SchedulerSpec = Scheduler | Callable[[Optimizer], Scheduler]
Interval = Literal["iteration", "epoch"]

WISP_MILESTONES = (0.5, 0.75, 0.9)
WISP_GAMMA = 0.333


class LRDecay(Callback):
    """Decay the learning rate on a schedule, with an optional linear warmup.

    Two modes:

    * **Milestones** (the default, Wisp's): the LR is multiplied by ``gamma`` at each milestone, given as a
      **fraction of the run** -- ``milestones=[0.5, 0.75, 0.9]`` of the run's optimizer steps (of ``max_epochs``
      with ``interval="epoch"``), so it is right for any batch size (Wisp used the dataset length). Milestone ``m``
      falls at ``M = round(m * total)`` (halves round up): with 1000 steps and ``[0.5]``, steps 1-500 use ``lr``
      and 501-1000 ``lr * gamma``. The LR is a pure function of the position, so a resume is exact by construction.
      Each group's base LR is its ``initial_lr`` (set from ``lr`` when absent).
    * **A torch scheduler**: any ``torch.optim.lr_scheduler`` instance built on the trainer's optimizer, or a factory
      ``optimizer -> scheduler``; stepped after every optimizer step (``interval="iteration"``) or every epoch.
      ``ReduceLROnPlateau`` steps after each validation with ``state.metrics[monitor]``. Its state is in
      :meth:`state_dict`.

    With ``interval="iteration"`` every count is of **optimizer steps** (``state.optimizer_step``): one per
    iteration, or one per window under the trainer's ``accumulate``. ``warmup`` (steps of ``interval``: an int, or
    ``"500it"`` / ``"2ep"``) ramps the LR linearly from ``warmup_start * lr`` to the scheduled LR, reaching it at step
    ``warmup``; it multiplies either mode.

    With named optimizers (a GAN's ``generator`` and ``discriminator``) each ``LRDecay`` decays the one it names with
    ``optimizer=`` (its default ``state_key`` is then ``LRDecay.<name>``) and publishes ``lr/<name>``.

    Per-group LR multipliers (Wisp's ``grid_lr_weight``) belong to the optimizer's construction: see
    ``trainers.engine.optim_groups``, which selects groups by module. Every group is decayed by the same factor.
    """

    priority = Priority.STATE

    def __init__(
        self,
        scheduler: SchedulerSpec | None = None,
        *,
        interval: Interval = "iteration",
        milestones: Sequence[float] | None = None,
        gamma: float = WISP_GAMMA,
        warmup: int | str = 0,
        warmup_start: float = 0.0,
        monitor: str | None = None,
        optimizer: str | None = None,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        if optimizer is not None and (not isinstance(optimizer, str) or not optimizer):
            raise ValueError(
                f"LRDecay: optimizer must be the name of one of the trainer's optimizers, got {optimizer!r}"
            )
        if state_key is None and optimizer is not None:
            state_key = f"LRDecay.{optimizer}"  # one LRDecay per optimizer, each its own checkpoint entry
        super().__init__(priority=priority, state_key=state_key)
        owner = f"LRDecay {self.state_key!r}"
        #: the name of the optimizer this decays (``None``: the trainer's only one)
        self.optimizer = optimizer
        if interval not in ("iteration", "epoch"):
            raise ValueError(f"{owner}: interval must be 'iteration' or 'epoch', got {interval!r}")
        if scheduler is not None and milestones is not None:
            raise ValueError(f"{owner}: give either a torch scheduler or milestones=, not both")
        if scheduler is not None and not (
            isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)) or callable(scheduler)
        ):
            raise TypeError(
                f"{owner}: scheduler must be a torch.optim.lr_scheduler instance or a factory optimizer -> scheduler, "
                f"got {scheduler!r}"
            )
        if scheduler is None:
            milestones = WISP_MILESTONES if milestones is None else milestones
            values = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else None
            if values is None or not all(
                isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m <= 1 for m in values
            ):
                raise ValueError(
                    f"{owner}: milestones must be a list of fractions of the run in (0, 1], e.g. [0.5, 0.75, 0.9]; "
                    f"got {milestones!r}"
                )
            if values != sorted(values):
                raise ValueError(f"{owner}: milestones must be in increasing order, got {values}")
            if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
                raise ValueError(f"{owner}: gamma must be a finite number > 0 (the decay factor), got {gamma!r}")
            self.milestones: tuple[float, ...] = tuple(float(m) for m in values)
        else:
            self.milestones = ()
        self.warmup = _parse_warmup(warmup, interval, owner)
        if isinstance(warmup_start, bool) or not isinstance(warmup_start, (int, float)) or not 0 <= warmup_start <= 1:
            raise ValueError(f"{owner}: warmup_start must be a fraction in [0, 1], got {warmup_start!r}")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"{owner}: monitor must be a metric name such as 'val/loss', got {monitor!r}")
        self.scheduler_spec = scheduler
        self.interval: Interval = interval
        self.gamma = float(gamma)
        self.warmup_start = float(warmup_start)
        self.monitor = monitor
        #: the torch scheduler once built (``None`` in milestone mode)
        self.scheduler: Scheduler | None = None
        self._optimizer: Optimizer | None = None
        self._keys: tuple[str, ...] = ()
        self._points: list[int] = []  # milestone positions for this run
        self._factor: float | None = None  # milestone mode: the factor now applied
        self._next = 0  # milestone mode: the first position at which the factor may change
        self._base: list[float] = []  # torch mode: each group's LR as the scheduler set it (before warmup)
        self._pending: dict[str, Any] | None = None  # state loaded before setup
        self._changed = False  # ReduceLROnPlateau stepped: publish the new LR before the next step

    # ------------------------------------------------------------------ wiring
    def handlers(self) -> Iterator[HandlerSpec]:
        per_step = self.interval == "iteration"
        yield Event.PRE_TRAINING, self._on_pre_training, None
        if self.scheduler_spec is None or self.warmup or not per_step or self.monitor is not None:
            yield (Event.PRE_STEP if per_step else Event.PRE_EPOCH), self._on_before, None
        if self.scheduler_spec is not None and self.monitor is None:
            yield (Event.POST_STEP if per_step else Event.POST_EPOCH), self._on_after, None
        if self.scheduler_spec is not None and self.monitor is not None:  # ReduceLROnPlateau
            yield Event.POST_VALIDATION, self._on_validation, None

    def setup(self, trainer: BaseTrainer) -> None:
        owner = f"LRDecay {self.state_key!r}"
        names = list(trainer.optimizers)
        name = self.optimizer if self.optimizer is not None else names[0]
        if name not in names or (self.optimizer is None and len(names) > 1):
            shown = ", ".join(repr(n) for n in names)
            raise ValueError(
                f"{owner}: optimizer= must name one of the trainer's optimizers ({shown}); got {self.optimizer!r}"
            )
        optimizer = trainer.optimizers[name]
        spec = self.scheduler_spec
        if spec is None:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            scheduler = spec if isinstance(spec, (LRScheduler, ReduceLROnPlateau)) else spec(optimizer)
            if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
                raise TypeError(f"{owner}: the scheduler factory {spec!r} returned {type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"{owner}: the scheduler was built on another optimizer than the trainer's {name!r}; build it on "
                    "that optimizer, or pass a factory: LRDecay(lambda optimizer: ...)"
                )
            if isinstance(scheduler, ReduceLROnPlateau) and self.monitor is None:
                raise ValueError(f"{owner}: ReduceLROnPlateau needs monitor= (e.g. monitor='val/loss')")
            if self.monitor is not None and not isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(
                    f"{owner}: monitor= is for ReduceLROnPlateau; {type(scheduler).__name__} steps by count"
                )
            self.scheduler = scheduler
            self._base = [float(group["lr"]) for group in optimizer.param_groups]
        self._optimizer = optimizer
        groups = optimizer.param_groups
        prefix = "lr" if len(names) == 1 else f"lr/{name}"
        self._keys = (
            (prefix,) if len(groups) == 1 else tuple(f"{prefix}/{g.get('name', i)}" for i, g in enumerate(groups))
        )
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def teardown(self, trainer: BaseTrainer) -> None:
        self._optimizer = None

    # ------------------------------------------------------------------ handlers
    def _on_pre_training(self, trainer: BaseTrainer, **_: Any) -> None:
        state = trainer.state
        total = state.max_optimizer_steps if self.interval == "iteration" else state.max_epochs
        self._points = [max(1, math.floor(m * total + 0.5)) for m in self.milestones]  # half up, not to even
        self._factor, self._next = None, 0
        self._publish(trainer)

    def _on_before(self, trainer: BaseTrainer, **_: Any) -> None:
        state = trainer.state
        # 1-based: the coming optimizer step (the iteration, unless gradients are accumulated) or epoch
        position = state.optimizer_step + 1 if self.interval == "iteration" else state.epoch
        if self.scheduler is None:
            if position < self._next:
                return
            warm = self._warm(position)
            factor = warm * self.gamma ** bisect.bisect_right(self._points, position - 1)
            later = [p + 1 for p in self._points if p + 1 > position]
            self._next = position + 1 if position < self.warmup else (later[0] if later else 1 << 62)
            if factor != self._factor:
                self._factor = factor
                for group in self._groups():
                    group["lr"] = group["initial_lr"] * factor
                self._publish(trainer)
            return
        warming = position <= self.warmup
        if warming:
            warm = self._warm(position)
            for group, base in zip(self._groups(), self._base, strict=True):
                group["lr"] = base * warm
        if warming or self.interval == "epoch" or self._changed:  # else post_step publishes before stepping
            self._changed = False
            self._publish(trainer)

    def _on_after(self, trainer: BaseTrainer, **_: Any) -> None:
        if self.interval == "iteration" and trainer.state.mid_window:
            return  # no optimizer step in this iteration: an accumulation window is open
        self._publish(trainer)  # the LR this step (or epoch) used
        self._step_scheduler(trainer)

    def _on_validation(self, trainer: BaseTrainer, *, metrics: Mapping[str, float], **_: Any) -> None:
        monitor = self.monitor
        if monitor is None or monitor not in metrics:
            return
        self._publish(trainer)  # the LR the latest step used; the new one is published before the next step
        self._step_scheduler(trainer, float(metrics[monitor]))
        self._changed = True

    def _step_scheduler(self, trainer: BaseTrainer, *metric: float) -> None:
        scheduler, groups = self.scheduler, self._groups()
        assert scheduler is not None
        for group, base in zip(groups, self._base, strict=True):
            group["lr"] = base  # chainable schedulers read group["lr"]: hand them their own value, not the warm one
        scheduler.step(*metric)  # type: ignore[arg-type]
        self._base = [float(group["lr"]) for group in groups]
        state = trainer.state
        coming = (state.optimizer_step if self.interval == "iteration" else state.epoch) + 1
        if self.warmup and coming <= self.warmup:
            warm = self._warm(coming)
            for group, base in zip(groups, self._base, strict=True):
                group["lr"] = base * warm

    # ------------------------------------------------------------------ helpers
    def _warm(self, position: int) -> float:
        if not self.warmup or position >= self.warmup:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * position / self.warmup

    def _groups(self) -> list[dict[str, Any]]:
        if self._optimizer is None:
            raise RuntimeError(f"LRDecay {self.state_key!r} is not added to a trainer")
        return self._optimizer.param_groups

    def _publish(self, trainer: BaseTrainer) -> None:
        metrics = trainer.state.metrics
        for key, group in zip(self._keys, self._groups(), strict=True):
            metrics[key] = group["lr"]

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The wrapped scheduler's state and its pre-warmup LRs (milestone mode needs nothing: the LR is a function
        of the position, and each group's ``initial_lr`` travels in the optimizer's state dict)."""
        if self.scheduler is None:
            return {}
        return {"scheduler": self.scheduler.state_dict(), "base": list(self._base)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.scheduler_spec is None:
            raise ValueError(f"LRDecay {self.state_key!r}: milestone mode has no state, got keys {sorted(state)}")
        if self.scheduler is None:  # not set up yet: apply once the scheduler exists
            self._pending = dict(state)
            return
        try:
            scheduler_state, base = state["scheduler"], [float(v) for v in state["base"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"LRDecay {self.state_key!r}: not an LRDecay state dict (expected keys scheduler, base): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if len(base) != len(self._groups()):
            raise ValueError(
                f"LRDecay {self.state_key!r}: the saved state has {len(base)} parameter groups, the optimizer "
                f"{len(self._groups())}"
            )
        self.scheduler.load_state_dict(scheduler_state)
        self._base = base
        self._next = 0

    def __repr__(self) -> str:
        what = type(self.scheduler).__name__ if self.scheduler is not None else f"milestones={list(self.milestones)}"
        return f"<LRDecay state_key={self.state_key!r} {what} interval={self.interval} warmup={self.warmup}>"


def _parse_warmup(value: int | str, interval: Interval, owner: str) -> int:
    unit = "it" if interval == "iteration" else "ep"
    if isinstance(value, str):
        text = value.strip().lower()
        if not text.endswith(unit) or not text[: -len(unit)].strip().isdigit():
            raise ValueError(f"{owner}: warmup={value!r}: with interval={interval!r} write an int or '<N>{unit}'")
        return int(text[: -len(unit)])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: warmup must be an int >= 0 or '<N>{unit}', got {value!r}")
    return value
