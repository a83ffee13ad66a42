"""A handler registered on a :class:`lifecycle.Bus`, as ``bus.connect`` returns it: toggled or removed at runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle.bus import Channel
    from lifecycle.events import Event
    from lifecycle.schedule import Predicate, Schedule

__all__ = ["Handle", "Handler"]

Handler = Callable[..., Any]


class Handle:
    """A registered handler. ``enabled`` toggles it at runtime; ``remove()`` unregisters it."""

    __slots__ = ("_channel", "_enabled", "due", "event", "fn", "name", "priority", "removed", "schedule", "seq")

    def __init__(
        self,
        channel: Channel,
        fn: Handler,
        *,
        priority: int,
        schedule: Schedule,
        due: Predicate | None,
        name: str,
        seq: int,
    ) -> None:
        self._channel = channel
        self.event: Event = channel.event
        self.fn = fn
        self.priority = priority
        self.schedule = schedule
        self.due = due
        self.name = name
        self.seq = seq
        self._enabled = True
        self.removed = False

    @property
    def enabled(self) -> bool:
        """Whether the handler runs. A disabled handler is left out of the dispatch list: it costs nothing."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if self.removed:
            raise RuntimeError(f"handler {self.name!r} on {self.event.value!r} was removed; connect it again")
        if value != self._enabled:
            self._enabled = bool(value)
            self._channel._rebuild()

    def remove(self) -> None:
        """Unregister the handler (idempotent)."""
        if not self.removed:
            self._channel._remove(self)

    def __repr__(self) -> str:
        flags = "" if self._enabled else ", disabled"
        flags += ", removed" if self.removed else ""
        return f"<Handle {self.name!r} on {self.event.value!r} priority={self.priority} every={self.schedule}{flags}>"
