"""``trainer.log(name, value)``: values that are not step outputs -- a render, a table, a note -- sent to every logger.

Loggers register a *sink* (``trainer.log_sink(fn, name=...)``, usually in ``setup``) and receive each logged value
as ``fn(name, value, iteration)`` at the moment it is logged; a logger added later receives what is logged after it
was added. The engine keeps no copy and converts nothing: a tensor reaches the sinks as it was given (on its
device), so a sink decides when to read it. Only rank 0 logs, as only rank 0's loggers write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LogSink", "LogSinks"]

#: a logger's receiver: ``fn(name, value, iteration)``
LogSink = Callable[[str, Any, int], None]


class LogSinks:
    """The sinks of one trainer, in registration order."""

    __slots__ = ("_sinks",)

    def __init__(self) -> None:
        self._sinks: dict[int, tuple[str, LogSink]] = {}

    def add(self, fn: LogSink, name: str) -> Callable[[], None]:
        """Register ``fn`` (``name`` is how errors call it); returns the function that removes it."""
        if not callable(fn):
            raise TypeError(f"log sink {name!r} is not callable: {fn!r}")
        token = id(fn)
        while token in self._sinks:  # the same bound method twice gets its own slot
            token += 1
        self._sinks[token] = (name, fn)
        return lambda: self._sinks.pop(token, None) and None

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._sinks.values())

    def emit(self, name: str, value: Any, iteration: int) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"trainer.log: the name must be a non-empty string such as 'render/front', got {name!r}")
        for _, fn in list(self._sinks.values()):
            fn(name, value, iteration)
