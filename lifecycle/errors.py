"""Errors raised by the lifecycle engine."""

from __future__ import annotations

__all__ = ["CallbackError"]


class CallbackError(RuntimeError):
    """A handler raised while an event was being dispatched.

    The message names the handler, the event and the iteration; the original exception is ``__cause__``.
    ``handler``, ``event`` and ``iteration`` are also attributes, for programs that react to failures.
    """

    def __init__(self, message: str, *, handler: str, event: str, iteration: int | None) -> None:
        super().__init__(message)
        self.handler = handler
        self.event = event
        self.iteration = iteration

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only __init__ arguments need help to survive pickling (multiprocessing, torch.distributed)
        return (_rebuild, (str(self), self.handler, self.event, self.iteration))


def _rebuild(message: str, handler: str, event: str, iteration: int | None) -> CallbackError:
    return CallbackError(message, handler=handler, event=event, iteration=iteration)
