"""``GridPruning``: call the pipeline's ``prune()`` every N iterations (Wisp's ``prune_every``), from an optional
start.

Events used: its schedule's event -- ``post_step`` for ``"100it"`` (after the optimizer step, so the next step
already runs on the pruned grid), ``post_epoch`` for ``"1ep"``. Publishes what ``prune()`` returns in
``trainer.state.metrics``: a number as ``prune/<metric>`` (``prune/occupancy`` by default), a dict as
``prune/<key>`` for each entry, ``None`` as nothing; plus ``prune/count``.

What pruning changes (an occupancy grid) lives in the pipeline, as buffers, so the model's own ``state_dict``
carries it across a resume; this callback remembers only how many prunes ran and what the last one returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from callbacks.helpers import parse_schedule, periodic_event
from callbacks.metrics import as_scalar
from lifecycle import Callback, Event, HandlerSpec, Priority, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from trainers.engine.trainer import BaseTrainer

__all__ = ["GridPruning", "PruneFn"]

#: ``fn(pipeline) -> None | number | dict``: a pruning function given instead of a method name.
PruneFn = Callable[["nn.Module"], Any]


class GridPruning(Callback):
    """Prune the pipeline's grid on a schedule.

    Args:
        every: the schedule (``"100it"`` like Wisp's default, ``"1ep"``, ``at=[...]`` through a mapping ...).
        start: first iteration (or ``"5ep"``: epoch, for epoch schedules) at which pruning may run; Wisp's
            ``start_prune`` that it never read.
        prune: the name of a method of the pipeline (``"prune"``) or a function ``fn(pipeline)``. A pipeline
            without that method is refused when the callback is added, not at step N.
        metric: the name under which a number returned by ``prune()`` is published (``prune/<metric>``).
    """

    priority = Priority.STATE

    def __init__(
        self,
        every: ScheduleSpec = "100it",
        *,
        start: int | str | None = None,
        prune: str | PruneFn = "prune",
        metric: str = "occupancy",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        owner = f"GridPruning {self.state_key!r}"
        if every is None:
            raise ValueError(f"callback {owner}: every must be a schedule such as '100it' or '1ep', got None")
        self._schedule = parse_schedule(every, owner, start=start)
        if self._schedule.always:
            raise ValueError(f"callback {owner}: every={every!r} would prune at every event; give a period")
        if not (isinstance(prune, str) and prune.isidentifier()) and not callable(prune):
            raise TypeError(
                f"{owner}: prune must be a method name such as 'prune' or a function fn(pipeline), got {prune!r}"
            )
        if not isinstance(metric, str) or not metric or "/" in metric:
            raise ValueError(f"{owner}: metric must be a plain name such as 'occupancy', got {metric!r}")
        self.every = every
        self.start = start
        self.prune = prune
        self.metric = metric
        #: prunes run so far
        self.count = 0
        #: what the last prune published (``prune/...`` -> value)
        self.last: dict[str, float] = {}
        self._fn: Callable[[], Any] | None = None

    def handlers(self) -> Iterator[HandlerSpec]:
        yield Event.PRE_TRAINING, self._republish, None
        yield periodic_event(self._schedule), self._on_schedule, self._schedule

    def _republish(self, trainer: BaseTrainer, **_: Any) -> None:
        if self.count:  # after a resume: what the last prune published is current again
            trainer.state.metrics.update(self.last)
            trainer.state.metrics["prune/count"] = self.count

    def setup(self, trainer: BaseTrainer) -> None:
        target = trainer.pipeline
        if callable(self.prune):
            fn = self.prune
            self._fn = lambda: fn(target)
            return
        inner = getattr(target, "module", None)  # a DistributedDataParallel wrapper: the method is on the module
        if not hasattr(target, self.prune) and inner is not None and hasattr(inner, self.prune):
            target = inner
        method = getattr(target, self.prune, None)
        if not callable(method):
            found = sorted(n for n in dir(type(target)) if "prune" in n.lower() and callable(getattr(target, n, None)))
            raise TypeError(
                f"GridPruning {self.state_key!r}: the pipeline {type(target).__name__} has no method "
                f"{self.prune!r}() to call every {self._schedule}; define it, name another method with prune=..."
                + (f" (it has {found})" if found else "")
                + ", or pass prune=lambda pipeline: ..."
            )
        self._fn = method

    def teardown(self, trainer: BaseTrainer) -> None:
        self._fn = None

    def _on_schedule(self, trainer: BaseTrainer, **_: Any) -> None:
        if self._fn is None:  # pragma: no cover - handlers only run once setup succeeded
            raise RuntimeError(f"GridPruning {self.state_key!r} is not set up on this trainer")
        published = self._publishable(self._fn())
        self.count += 1
        metrics = trainer.state.metrics
        metrics.update(published)
        metrics["prune/count"] = self.count
        self.last = published

    def _publishable(self, result: Any) -> dict[str, float]:
        if result is None:
            return {}
        if isinstance(result, Mapping):
            return {f"prune/{k}": self._number(str(k), v) for k, v in result.items()}
        return {f"prune/{self.metric}": self._number(self.metric, result)}

    def _number(self, name: str, value: Any) -> float:
        number = as_scalar(value)  # one host sync per prune, not per step
        if number is not None:
            return number
        raise TypeError(
            f"GridPruning {self.state_key!r}: prune() returned {name!r} = {type(value).__name__}; return None, a "
            "number, a one-element tensor, or a dict of those"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            count = int(state["count"])
            last = {str(k): float(v) for k, v in state["last"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"GridPruning {self.state_key!r}: not a GridPruning state dict (expected keys count, last): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self.count, self.last = count, last

    def __repr__(self) -> str:
        return f"<GridPruning state_key={self.state_key!r} every={self._schedule} count={self.count}>"
