"""Emitters with a fixed payload: the step events' dispatch without unpacking a payload dict at every handler.

``Channel.emit(sender, **payload)`` calls each handler as ``fn(sender, **payload)``. Unpacking a dict into a call
is CPython's slow call path: a handler ``def post_step(self, trainer, **payload)`` called that way took 356 ns on
the development machine, and 123 ns called as ``fn(sender, outputs=outputs)`` -- the same handler, the same dict it
receives. An event emitted at every step always carries the same keys (``pre_step``: ``batch``; ``step``: ``loss``,
``outputs``, ``optimizer``; ``post_step``: ``outputs``), so :meth:`Channel.emitter` compiles, once per channel and
key set, a dispatch loop that names them in its calls. It is ``Channel.emit`` line for line -- the channel's
current plan (so handlers connected later are seen), its timetable, its error naming, blinker receivers through
the general path -- only with the keywords spelled out.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lifecycle.errors import CallbackError

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle.bus import Channel

__all__ = ["compile_emitter"]

_TEMPLATE = """\
def emit(sender, /, {params}):
    if channel.raw:
        channel.emit(sender, {keywords})
        return
    table = channel._table
    if table is None:
        plan = channel.plan
    else:
        state = table.state
        value = state.iteration if table.steps else state.epoch
        plan = table.idle if table.since <= value < table.wake else table.plan_at(value)
    for fn, due, handle in plan:
        if due is not None and not due():
            continue
        try:
            fn(sender, {keywords})
        except CallbackError:
            raise
        except Exception as exc:
            raise channel._bus._error(handle, exc) from exc
"""


def compile_emitter(channel: Channel, names: tuple[str, ...]) -> Callable[..., None]:
    """``emit(sender, *values)`` for ``channel``: each handler called as ``fn(sender, name=value, ...)`` with
    ``names`` in order. Raises ``ValueError`` for a name that cannot be a keyword argument."""
    bad = [name for name in names if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name)]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"emitter for {channel.event.value!r}: payload names must be distinct Python identifiers, got {names!r}"
        )
    # the values travel as _0, _1 ...: a payload key never collides with the loop's own names
    params = ", ".join(f"_{i}" for i in range(len(names)))
    keywords = ", ".join(f"{name}=_{i}" for i, name in enumerate(names))
    source = _TEMPLATE.format(params=params, keywords=keywords)
    namespace: dict[str, Any] = {"channel": channel, "CallbackError": CallbackError}
    # the source is the template above, with names checked to be identifiers
    exec(compile(source, f"<stepbus emitter {channel.event.value}({', '.join(names)})>", "exec"), namespace)
    emit: Callable[..., None] = namespace["emit"]
    return emit
