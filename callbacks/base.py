"""The ``Callback`` base class: behaviour that subscribes to lifecycle events instead of living in a subclass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import Event, Priority, Schedule, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover - typing only; callbacks never need torch to be imported here
    from trainers.engine.trainer import BaseTrainer

__all__ = ["Callback", "HandlerSpec", "output_dir", "parse_schedule", "periodic_event"]

#: (event, bound method, schedule or None) -- one handler a callback asks the trainer to connect.
HandlerSpec = tuple[Event, Callable[..., Any], Schedule | None]

_EVENT_NAMES = tuple(event.value for event in Event)


def periodic_event(schedule: Schedule) -> Event:
    """The event a periodic action (validate, prune, ...) runs on: ``post_epoch`` for an epoch schedule (``"1ep"``),
    ``post_step`` for anything else (``"100it"``, ``"10min"``, ``at=[...]`` iterations)."""
    return Event.POST_EPOCH if schedule.unit == "ep" else Event.POST_STEP


def parse_schedule(spec: ScheduleSpec, owner: str, **bounds: Any) -> Schedule:
    """``Schedule.parse`` with the error naming the callback (``owner``) that was given the bad schedule."""
    try:
        return Schedule.parse(spec, **bounds)
    except ValueError as exc:
        raise ValueError(f"callback {owner}: {exc}") from None


def output_dir(callback: Callback, given: Path | None, trainer: BaseTrainer, sub: str) -> Path:
    """Where a file-writing callback writes: the ``dir`` it was given, else ``<trainer.run_dir>/<sub>``; a
    ``ValueError`` naming the callback when there is neither (raised from ``setup``, so at construction)."""
    if given is not None:
        return given
    if trainer.run_dir is None:
        kind = type(callback).__name__
        raise ValueError(
            f"{kind} {callback.state_key!r} needs a directory: pass {kind}(dir=...) or give the trainer run_dir=... "
            f"(it then writes to <run_dir>/{sub})"
        )
    return trainer.run_dir / sub


class Callback:
    """Base class of every callback.

    A callback handles an event by defining a method named after it; only the methods a subclass defines are
    connected, and each takes the trainer and the event's payload as keyword arguments (accept ``**payload`` so
    that new keys break nothing)::

        class PrintLoss(Callback):
            every = "100it"                                    # a schedule (see lifecycle.schedule)
            def post_step(self, trainer, *, outputs, **payload):
                print(trainer.state.iteration, float(outputs["loss"]))

    Methods and their payloads: ``pre_training(trainer, resumed)``, ``pre_epoch(trainer)``,
    ``pre_step(trainer, batch)``, ``step(trainer, loss, outputs)``, ``post_step(trainer, outputs)``,
    ``post_epoch(trainer)``, ``post_training(trainer, status)``, ``pre_validation(trainer)``,
    ``post_validation(trainer, metrics)``, ``exception(trainer, error)``.

    Class attributes, each overridable per instance through ``__init__``:

    * ``priority``: higher runs first, ties in registration order (see :class:`lifecycle.Priority` for the bands).
    * ``every``: a schedule. It filters the handlers whose events it can count -- an iteration schedule
      (``"100it"``) the step events, an epoch schedule (``"2ep"``) the epoch events, a time or ``"once"`` schedule
      both -- and leaves the others (``pre_training``, ``post_training``, ``exception``, validation, and e.g.
      ``post_epoch`` under ``"100it"``) unfiltered.
    * ``scheduled``: the event names ``every`` applies to, when not all of them: a logger that accumulates the loss
      at every ``step`` and writes it every 50 iterations sets ``every = "50it"`` and ``scheduled = ("post_step",)``.
      Override :meth:`handlers` for anything more unusual.
    * ``state_key``: the unique key of this instance's :meth:`state_dict` in a checkpoint; the class name by default.
      Two callbacks with the same key on one trainer are an error: give one ``state_key="..."``.

    :meth:`setup` runs when the callback is added to a trainer (raise there to refuse a trainer it cannot serve,
    so the error appears at construction, not at step N) and :meth:`teardown` when it is removed.
    """

    priority: int = Priority.DEFAULT
    every: ScheduleSpec = None
    scheduled: tuple[str, ...] | None = None
    #: under torch.distributed, only rank 0 sets this callback up and connects its handlers (loggers, progress)
    rank_zero_only: bool = False

    def __init__(
        self, *, priority: int | None = None, every: ScheduleSpec = None, state_key: str | None = None
    ) -> None:
        if priority is not None:
            self.priority = priority
        if every is not None:
            self.every = every
        if state_key is not None:
            self.state_key = state_key

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint (unique per trainer)."""
        key = self.__dict__.get("_state_key")
        return key if isinstance(key, str) else type(self).__name__

    @state_key.setter
    def state_key(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"state_key of {type(self).__name__} must be a non-empty string, got {value!r}")
        self.__dict__["_state_key"] = value

    def handlers(self) -> Iterator[HandlerSpec]:
        """The handlers to connect: one per event method the subclass defines, with ``every`` applied where it
        can filter. Raises ``ValueError`` (naming the callback) for a bad schedule."""
        try:
            schedule = Schedule.parse(self.every)
        except ValueError as exc:
            raise ValueError(f"callback {self.state_key!r} ({type(self).__name__}): {exc}") from None
        filtered = schedule.events()
        if self.scheduled is not None:
            chosen = {str(name) for name in self.scheduled}
            wrong = sorted(n for n in chosen if n not in _EVENT_NAMES or getattr(type(self), n, None) is None)
            if wrong:
                raise ValueError(
                    f"callback {self.state_key!r}: scheduled names {wrong}, which are not event methods "
                    f"of {type(self).__name__}; valid: {[n for n in _EVENT_NAMES if hasattr(self, n)]}"
                )
            unfit = sorted(n for n in chosen if Event(n) not in filtered)
            if unfit and not schedule.always:
                raise ValueError(f"callback {self.state_key!r}: schedule {schedule} cannot filter {unfit}")
            filtered = frozenset(Event(n) for n in chosen)
        for name in _EVENT_NAMES:
            if getattr(type(self), name, None) is None:
                continue
            method = getattr(self, name)
            if not callable(method):
                raise TypeError(f"callback {self.state_key!r}: attribute {name!r} names an event but is not a method")
            event = Event(name)
            yield event, method, (schedule if event in filtered and not schedule.always else None)

    def priority_of(self, event: Event) -> int:
        """The priority of this callback's handler for ``event``: :attr:`priority` for every event by default.

        Override it for one handler that belongs in another band, e.g. a logger whose ``post_training`` uploads the
        final checkpoint returns ``Priority.FINAL`` there, so it runs after the checkpointer's end save."""
        return self.priority

    def setup(self, trainer: BaseTrainer) -> None:
        """Called by ``trainer.add_callback(self)`` before any handler is connected."""

    def teardown(self, trainer: BaseTrainer) -> None:
        """Called by ``trainer.remove_callback(self)`` after its handlers are removed."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state_key={self.state_key!r} priority={self.priority} every={self.every!r}>"
