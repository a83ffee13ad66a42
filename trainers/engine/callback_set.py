"""The callbacks registered on one trainer: each one's bus handles, set up and torn down with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifecycle import Bus, Callback, Handle

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["CallbackSet"]


class CallbackSet:
    """Registration order, unique ``state_key`` s, and the handles that connect each callback to the bus."""

    __slots__ = ("_bus", "_entries", "_idle", "_rank", "_trainer")

    def __init__(self, trainer: BaseTrainer, bus: Bus, rank: int) -> None:
        self._trainer, self._bus, self._rank = trainer, bus, rank
        self._entries: dict[int, tuple[Callback, tuple[Handle, ...]]] = {}
        self._idle: set[int] = set()  # rank_zero_only callbacks on another rank: registered, never set up

    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """Registered callbacks in registration order."""
        return tuple(cb for cb, _ in self._entries.values())

    def add(self, callback: Callback) -> Callback:
        """Register ``callback``: its ``setup`` runs, then its event methods are connected with their priorities and
        schedule. Errors are raised now and leave nothing registered."""
        if isinstance(callback, type):
            raise TypeError(
                f"add_callback needs an instance, got the class {callback.__name__}; write {callback.__name__}(...)"
            )
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callbacks must be Callback instances, got {callback!r} ({type(callback).__name__}); "
                "for a plain function use trainer.on(event) or trainer.bus.connect(event, fn)"
            )
        if id(callback) in self._entries:
            raise ValueError(f"callback {callback.state_key!r} is already registered on this trainer")
        key = callback.state_key
        for other, _ in self._entries.values():
            if other.state_key == key:
                raise ValueError(
                    f"two callbacks share state_key {key!r} ({type(other).__name__} and {type(callback).__name__});"
                    f" give the new one a distinct key, e.g. {type(callback).__name__}(..., state_key='{key}_2')"
                )
        if callback.rank_zero_only and self._rank != 0:  # registered (its state has a place) but never set up or run
            self._entries[id(callback)] = (callback, ())
            self._idle.add(id(callback))
            return callback
        specs = list(callback.handlers())
        callback.setup(self._trainer)
        handles: list[Handle] = []
        try:
            for event, method, schedule in specs:
                handles.append(
                    self._bus.connect(
                        event,
                        method,
                        priority=callback.priority_of(event),
                        every=schedule,
                        name=f"{key}.{event.value}",
                    )
                )
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self._entries[id(callback)] = (callback, tuple(handles))
        return callback

    def remove(self, callback: Callback) -> None:
        """Unregister ``callback`` (its handlers stop from the next emission), then call its ``teardown``."""
        entry = self._entries.pop(id(callback), None)
        if entry is None:
            raise ValueError(f"callback {callback!r} is not registered on this trainer")
        for handle in entry[1]:
            handle.remove()
        if id(callback) in self._idle:
            self._idle.discard(id(callback))
            return
        callback.teardown(self._trainer)

    def handles_of(self, callback: Callback) -> tuple[Handle, ...]:
        """The bus handles of a registered callback."""
        entry = self._entries.get(id(callback))
        if entry is None:
            raise ValueError(f"callback {callback!r} is not registered on this trainer")
        return entry[1]
