"""The ``Callback`` base class: behaviour that subscribes to lifecycle events instead of living in a subclass.

It lives in the torch-free core so that the engine can register callbacks without importing any of them; the
built-in callbacks (``callbacks``) build on it. A callback's methods receive the trainer, typed ``Any`` here
because this layer knows nothing of torch: subclasses annotate it as ``BaseTrainer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from lifecycle.events import Event
from lifecycle.priority import Priority
from lifecycle.schedule import Schedule, ScheduleSpec

__all__ = ["Callback", "HandlerSpec"]

#: (event, bound method, schedule or None) -- one handler a callback asks the trainer to connect.
HandlerSpec = tuple[Event, Callable[..., Any], Schedule | None]

_EVENT_NAMES = tuple(event.value for event in Event)


class Callback:
    """Base class of every callback.

    A callback handles an event by defining a method named after it; only the methods a subclass defines are
    connected, and each takes the trainer and the event's payload as keyword arguments (accept ``**payload`` so
    that new keys break nothing)::

        class PrintLoss(Callback):
            every = "100it"                                    # a schedule (see lifecycle.schedule)
            def post_step(self, trainer, *, outputs, **payload):
                print(trainer.state.iteration, float(outputs["loss"]))

    The events, their order and their payloads are listed once, in :class:`lifecycle.Event`.

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

    def setup(self, trainer: Any) -> None:
        """Called by ``trainer.add_callback(self)`` before any handler is connected."""

    def teardown(self, trainer: Any) -> None:
        """Called by ``trainer.remove_callback(self)`` after its handlers are removed."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state_key={self.state_key!r} priority={self.priority} every={self.every!r}>"
