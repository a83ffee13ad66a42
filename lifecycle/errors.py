"""Errors raised by the lifecycle engine, and how an error carries the ones that followed it.

Two places let more code run after something raised: the bus runs every ``exception`` and ``post_training`` handler
even when one raises (:class:`Failures`), and the loop emits ``exception`` and ``post_training(status="failed")``
after an error (``lifecycle.loop``). In both the *first* error is the one raised; each later one is attached to it
-- in :attr:`CallbackError.also_failed` where the first is a :class:`CallbackError`, as a PEP 678 note (Python >=
3.11: tracebacks print it) -- and logged, so that on Python 3.10, which has no notes, the log still tells.
"""

from __future__ import annotations

import logging

__all__ = ["CallbackError", "Failures", "add_note"]

_log = logging.getLogger("lifecycle.bus")


class CallbackError(RuntimeError):
    """A handler raised while an event was being dispatched.

    The message names the handler, the event and the iteration; the original exception is ``__cause__``.
    ``handler``, ``event`` and ``iteration`` are also attributes, for programs that react to failures.
    ``also_failed``: for ``exception`` and ``post_training``, whose handlers all run even when one raises, the errors
    of the handlers that raised after this one, in the order they ran (empty otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        handler: str,
        event: str,
        iteration: int | None,
        also_failed: tuple[CallbackError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.handler = handler
        self.event = event
        self.iteration = iteration
        self.also_failed = also_failed

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only __init__ arguments need help to survive pickling (multiprocessing, torch.distributed)
        return (_rebuild, (str(self), self.handler, self.event, self.iteration, self.also_failed))


def _rebuild(
    message: str, handler: str, event: str, iteration: int | None, also_failed: tuple[CallbackError, ...] = ()
) -> CallbackError:
    return CallbackError(message, handler=handler, event=event, iteration=iteration, also_failed=also_failed)


def add_note(error: BaseException, message: str) -> None:
    """``error.add_note(message)`` where Python has it (>= 3.11); nothing on 3.10 (log the message there)."""
    note = getattr(error, "add_note", None)
    if note is not None:
        note(message)


class Failures:
    """The errors of one emission that runs every handler: :meth:`add` each as it happens, :meth:`raise_first` once
    all ran. The first is raised; every later one (with the ones already attached to it: an error from a nested
    emission of the same kind) goes into its ``also_failed``, becomes a note on it and is logged."""

    __slots__ = ("first",)

    def __init__(self) -> None:
        self.first: CallbackError | None = None

    def add(self, error: CallbackError) -> None:
        first = self.first
        if first is None:
            self.first = error
            return
        _log.error(
            "%s (after %r failed in the same dispatch; every handler runs, then the first failure is raised)",
            error,
            first.handler,
        )
        for later in (error, *error.also_failed):
            first.also_failed += (later,)
            add_note(first, f"a later handler also failed: {later}")

    def note_on(self, error: BaseException) -> None:
        """``error`` (a ``KeyboardInterrupt``, never wrapped) cut the emission short: the failures so far go with it."""
        if self.first is not None:
            _log.error("%s (then %s cut the event's dispatch short)", self.first, type(error).__name__)
            for failure in (self.first, *self.first.also_failed):
                add_note(error, f"before this, a handler had failed: {failure}")

    def raise_first(self) -> None:
        """Raise the first failure, if there was one."""
        if self.first is not None:
            raise self.first
