"""The lifecycle events (listed, in loop order, in :class:`Event`), the final :class:`Status`, and the event
groups that schedules filter."""

from __future__ import annotations

from enum import Enum

__all__ = ["EPOCH_EVENTS", "STEP_EVENTS", "Event", "Status", "as_event"]


class Event(str, Enum):
    """A lifecycle event. The value is the lowercase name, which is also the blinker signal name and the name
    of the :class:`~lifecycle.Callback` method that handles it: ``def post_step(self, trainer, **payload)``.

    The events in loop order, with their payloads (keyword arguments; receivers take ``**payload`` so that new
    keys break nothing). One ``iterate()`` emits a slice of this sequence (see ``lifecycle.loop``)::

        pre_training(resumed)             once, on the first iterate() (resumed=True after a restore)
          pre_epoch                       once per epoch
            pre_step(batch)               before the forward pass
            step(loss, outputs, optimizer)   gradients ready, that optimizer NOT stepped yet (once per optimizer step)
            post_step(outputs)            optimizer stepped; counters final for this step
          post_epoch                      once per epoch, also for an epoch cut short by stop()
          pre_validation(validator, reason, prefix)   whenever a validator runs, before it computes
          post_validation(metrics, ...)   after it published its own metrics (best values, images, prefix)
        post_training(status)             exactly once: completed | stopped | interrupted | failed
        exception(error)                  when anything raises; then post_training(status="failed")

    ``post_training`` and ``exception`` run every handler even when one raises (the first error is raised once all
    ran, the later ones attached to it); every other event stops at the first handler that raises (``lifecycle.bus``).
    """

    PRE_TRAINING = "pre_training"
    PRE_EPOCH = "pre_epoch"
    PRE_STEP = "pre_step"
    STEP = "step"
    POST_STEP = "post_step"
    POST_EPOCH = "post_epoch"
    POST_TRAINING = "post_training"
    PRE_VALIDATION = "pre_validation"
    POST_VALIDATION = "post_validation"
    EXCEPTION = "exception"

    def __str__(self) -> str:
        return self.value


class Status(str, Enum):
    """The ``status`` payload of ``post_training`` and the trainer's final state."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


#: Events that happen once per step; iteration schedules (``"100it"``) filter these.
STEP_EVENTS = frozenset({Event.PRE_STEP, Event.STEP, Event.POST_STEP})
#: Events that happen once per epoch; epoch schedules (``"2ep"``) filter these.
EPOCH_EVENTS = frozenset({Event.PRE_EPOCH, Event.POST_EPOCH})


def as_event(event: Event | str) -> Event:
    """Normalise ``"post_step"`` or ``Event.POST_STEP`` to ``Event.POST_STEP``; anything else is a ``ValueError``
    that lists the valid names."""
    if isinstance(event, Event):
        return event
    try:
        return Event(event)
    except ValueError:
        valid = ", ".join(e.value for e in Event)
        raise ValueError(f"unknown event {event!r}; valid events are: {valid}") from None
