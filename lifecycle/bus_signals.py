"""The blinker signals behind a bus's channels: receivers kept in connection order and held strongly, and for the
events whose every handler runs (``exception``, ``post_training``) a ``send`` that does not stop at the first
receiver that raises. See :mod:`lifecycle.bus`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any

from blinker import ANY, NamedSignal

from lifecycle.errors import CallbackError, Failures
from lifecycle.receivers import OrderedIds

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle.bus import Channel

__all__ = ["BusSignal", "EveryReceiverSignal", "caused"]


class BusSignal(NamedSignal):
    """A ``NamedSignal`` that keeps receivers in connection order and never holds them weakly."""

    set_class = OrderedIds  # type: ignore[assignment]  # duck-typed: blinker only uses the methods above

    def __init__(self, name: str, channel: Channel) -> None:
        super().__init__(name, f"stepbus lifecycle event {name!r}")
        self._channel = channel

    def connect(self, receiver: Any, sender: Any = ANY, weak: bool = True) -> Any:
        """Connect ``receiver`` strongly (``weak`` is accepted for blinker compatibility and ignored)."""
        if not callable(receiver):
            raise TypeError(f"cannot connect {receiver!r} to signal {self.name!r}: it is not callable")
        result = super().connect(receiver, sender, weak=False)
        self._channel._refresh()
        return result

    def disconnect(self, receiver: Any, sender: Any = ANY) -> None:
        super().disconnect(receiver, sender)
        self._channel._refresh()


class EveryReceiverSignal(BusSignal):
    """The signal of an :data:`EVERY_HANDLER` event: ``send`` calls every receiver even when one raises."""

    def send(
        self,
        sender: Any | None = None,
        /,
        *,
        _async_wrapper: Callable[[Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Any]] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver (blinker's ``send``, without stopping at the first one that raises); then raise the
        first failure, the later ones attached."""
        if self.is_muted:
            return []
        results: list[tuple[Callable[..., Any], Any]] = []
        failures = Failures()
        channel = self._channel
        for receiver in self.receivers_for(sender):
            try:
                if iscoroutinefunction(receiver):
                    if _async_wrapper is None:
                        raise RuntimeError("Cannot send to a coroutine function.")
                    results.append((receiver, _async_wrapper(receiver)(sender, **kwargs)))
                else:
                    results.append((receiver, receiver(sender, **kwargs)))
            except CallbackError as exc:
                failures.add(exc)
            except Exception as exc:  # noqa: BLE001 - kept, and raised once every receiver ran
                failures.add(caused(channel._bus._raw_error(channel.event, exc, receiver), exc))
            except BaseException as exc:
                failures.note_on(exc)
                raise
        failures.raise_first()
        return results


def caused(error: CallbackError, cause: Exception) -> CallbackError:
    """``error`` as ``raise error from cause`` leaves it (it is raised later, once every handler ran)."""
    error.__cause__ = cause
    error.__suppress_context__ = True
    return error
