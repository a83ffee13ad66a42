"""Naming and ordering the receivers of a bus signal: what error messages and listings call a handler, and the
ordered id set that makes blinker call direct receivers in connection order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["OrderedIds", "handler_name", "raw_receiver_name", "receiver_name"]


def handler_name(fn: object) -> str:
    """A readable name for a handler: ``Class.method``, ``module.function``, or ``<lambda> at file:line``."""
    self_obj = getattr(fn, "__self__", None)
    func = getattr(fn, "__func__", fn)
    name = getattr(func, "__qualname__", None) or type(fn).__name__
    if self_obj is not None and not isinstance(self_obj, type):
        name = f"{type(self_obj).__name__}.{getattr(func, '__name__', name)}"
    code = getattr(func, "__code__", None)
    if ("<lambda>" in name or "<locals>" in name) and code is not None:
        name = f"{name} at {code.co_filename}:{code.co_firstlineno}"  # local names are ambiguous: say where
    elif self_obj is None and isinstance(getattr(func, "__module__", None), str) and hasattr(func, "__qualname__"):
        name = f"{func.__module__}.{name}"
    return name


class OrderedIds:
    """An insertion-ordered set for blinker's bookkeeping, so direct receivers run in connection order."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items: dict[Any, None] = dict.fromkeys(items)

    def add(self, item: Any) -> None:
        self._items[item] = None

    def discard(self, item: Any) -> None:
        self._items.pop(item, None)

    def copy(self) -> OrderedIds:
        return OrderedIds(self._items)

    def __or__(self, other: Iterable[Any]) -> OrderedIds:
        merged = OrderedIds(self._items)
        for item in other:
            merged.add(item)
        return merged

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items


def receiver_name(receiver: object) -> str:
    """What errors call a receiver connected directly to a bus signal: ``qualname at file:line`` (as
    :func:`raw_receiver_name` says it), or :func:`handler_name` for a callable without code of its own."""
    code = getattr(getattr(receiver, "__func__", receiver), "__code__", None)
    if code is None:
        return handler_name(receiver)
    return f"{getattr(code, 'co_qualname', code.co_name)} at {code.co_filename}:{code.co_firstlineno}"


def raw_receiver_name(exc: BaseException) -> str:
    """The function blinker's ``send`` called when ``exc`` was raised: the frame right after ``send`` in the
    traceback (blinker itself does not say which receiver failed)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "send" and "blinker" in code.co_filename and tb.tb_next is not None:
            receiver = tb.tb_next.tb_frame.f_code
            return f"{getattr(receiver, 'co_qualname', receiver.co_name)} at {receiver.co_filename}:" + str(
                receiver.co_firstlineno
            )
        tb = tb.tb_next
    return "<unknown receiver>"
