"""How long each bus handler takes: an opt-in timing mode of :class:`lifecycle.Bus` (``bus.time_handlers()``).

Timing is done where the bus builds its dispatch plans, never where it runs them: while a :class:`HandlerTimes`
is active, every channel's plan holds, in place of each handler, a small wrapper that reads
``time.perf_counter_ns`` around the call, plus one entry before and one after the handlers that time the whole
dispatch. ``Channel.emit`` itself is untouched, so with timing off the hot path costs exactly what it did, and a
handler connected, toggled or removed while timing is on is timed from its next emission (the plan is rebuilt as
usual, with wrappers). :meth:`HandlerTimes.stop` rebuilds the plain plans: the same ``(fn, due, handle)`` objects as
before timing began.

What is counted:

* a handler's row counts the calls that ran it: one skipped because its schedule is not due is not called (the
  ``due`` check stays outside the wrapper) and not counted; a call that raised is counted with its time. The time
  includes whatever the handler emits itself (a validator's ``pre_validation``/``post_validation`` inside its
  ``post_step``).
* an event's dispatch row is the time from before its first handler to after its last -- schedule checks and the
  bus's own loop included -- for the dispatches that ran to the end (one a step handler's error cut short is not
  counted). Plain blinker receivers connected directly to a signal are not timed.
* :attr:`HandlerTimes.steps` is the time from the start of each ``pre_step`` dispatch to the end of its
  ``post_step`` dispatch: the engine's forward, backward and optimizer step plus the step events' handlers. It is
  measured whatever handlers the two events have: while timing is on, their dispatches always run (with no
  handlers, just the markers).

A bus has at most one active :class:`HandlerTimes`; ``time_handlers()`` while one is active is a ``RuntimeError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.events import Event
from lifecycle.handle import Handle, Handler
from lifecycle.receivers import handler_name
from lifecycle.schedule import Schedule

if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

    from lifecycle.bus import Bus, Channel, PlanEntry

__all__ = ["DispatchTime", "HandlerTime", "HandlerTimes", "StepTime"]

_now = time.perf_counter_ns
_STEP_ENDS = (Event.PRE_STEP, Event.POST_STEP)


@dataclass(frozen=True)
class HandlerTime:
    """One handler's totals: ``name`` as errors call it (a callback's handlers: ``<state_key>.<event>``), its
    ``event`` and ``priority``, ``calls``, nanoseconds in all (``total_ns``) and at most for one call (``max_ns``),
    and ``function``, what :func:`lifecycle.receivers.handler_name` calls the function itself (``Class.method``:
    it tells apart two handlers of one callback on one event)."""

    name: str
    event: str
    priority: int
    calls: int
    total_ns: int
    max_ns: int
    function: str

    @property
    def total_ms(self) -> float:
        return self.total_ns / 1e6

    @property
    def mean_us(self) -> float:
        """Microseconds per call (0 when never called)."""
        return self.total_ns / self.calls / 1e3 if self.calls else 0.0


@dataclass(frozen=True)
class DispatchTime:
    """One event's dispatches: how many ran to the end, and their nanoseconds in all and at most."""

    event: str
    calls: int
    total_ns: int
    max_ns: int


@dataclass(frozen=True)
class StepTime:
    """The steps timed from the start of ``pre_step``'s dispatch to the end of ``post_step``'s: how many, and
    their nanoseconds in all."""

    count: int
    total_ns: int


class _Record:
    """The running totals behind one row (mutated by the wrappers; read through the frozen rows above)."""

    __slots__ = ("calls", "max_ns", "started", "total_ns")

    def __init__(self) -> None:
        self.calls = 0
        self.total_ns = 0
        self.max_ns = 0
        self.started = 0  # a dispatch's start (event records) or a step's (the steps record)

    def clear(self) -> None:
        self.calls = self.total_ns = self.max_ns = self.started = 0

    def add(self, elapsed: int) -> None:
        self.calls += 1
        self.total_ns += elapsed
        if elapsed > self.max_ns:
            self.max_ns = elapsed


def _timed(fn: Handler, record: _Record) -> Handler:
    """``fn`` with its calls counted and timed (a raised call too). The plan keeps the original handle, so an error
    still names the original handler."""

    def timed(sender: object, /, **payload: Any) -> Any:
        start = _now()
        try:
            return fn(sender, **payload)
        finally:
            elapsed = _now() - start
            record.calls += 1
            record.total_ns += elapsed
            if elapsed > record.max_ns:
                record.max_ns = elapsed

    timed.__wrapped__ = fn  # type: ignore[attr-defined]  # what inspect.unwrap and a debugger's reader look for
    return timed


class HandlerTimes:
    """Per-handler and per-event times of one bus, from :meth:`lifecycle.Bus.time_handlers` until :meth:`stop`.

    Use it as a context manager (``with bus.time_handlers() as times: ...``) or call :meth:`stop`. The rows can be
    read at any time, also while timing goes on and after it stopped.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._handlers: dict[Handle, tuple[_Record, Handler]] = {}
        self._events: dict[Event, _Record] = {}
        self._steps = _Record()
        self._markers: dict[Event, Handle] = {}
        self.active = False  #: whether the bus's plans are timed now

    # ------------------------------------------------------------------ switching on and off
    def _start(self) -> None:
        self.active = True
        self._bus._rebuild_all()

    def stop(self) -> None:
        """Stop timing: every channel gets its plain plan back (idempotent). The totals stay readable."""
        if self.active:
            self.active = False
            self._bus._stop_timing(self)

    close = stop

    def __enter__(self) -> HandlerTimes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Zero every total (e.g. to time a window of the run only); the wrappers stay in place."""
        for record, _ in self._handlers.values():
            record.clear()
        for record in (*self._events.values(), self._steps):
            record.clear()

    # ------------------------------------------------------------------ the plans (called by Channel._rebuild)
    def wrap(self, channel: Channel, plan: tuple[PlanEntry, ...]) -> tuple[PlanEntry, ...]:
        """``plan`` with each handler timed and the dispatch timed around them. An empty plan stays empty (the
        channel stays idle), except ``pre_step``'s and ``post_step``'s: their markers time the steps."""
        event = channel.event
        if not plan and event not in _STEP_ENDS:
            return plan
        entries = [(self._wrapper(handle, fn), due, handle) for fn, due, handle in plan]
        record = self._events.setdefault(event, _Record())
        begin, end = self._dispatch_markers(event, record)
        marker = self._markers.get(event)
        if marker is None:  # the markers' own handle: never registered, so no listing shows it
            marker = self._markers[event] = Handle(
                channel, begin, priority=0, schedule=Schedule.parse(None), due=None, name="<handler timing>", seq=-1
            )
        return ((begin, None, marker), *entries, (end, None, marker))

    def _wrapper(self, handle: Handle, fn: Handler) -> Handler:
        known = self._handlers.get(handle)
        if known is None:
            record = _Record()
            known = self._handlers[handle] = (record, _timed(fn, record))
        return known[1]

    def _dispatch_markers(self, event: Event, record: _Record) -> tuple[Handler, Handler]:
        steps = self._steps

        def begin(sender: object, /, **payload: Any) -> None:
            record.started = _now()

        def end(sender: object, /, **payload: Any) -> None:
            record.add(_now() - record.started)

        if event is Event.PRE_STEP:

            def begin_step(sender: object, /, **payload: Any) -> None:
                record.started = steps.started = _now()

            return begin_step, end
        if event is Event.POST_STEP:

            def end_step(sender: object, /, **payload: Any) -> None:
                now = _now()
                record.add(now - record.started)
                if steps.started:
                    steps.add(now - steps.started)
                    steps.started = 0

            return begin, end_step
        return begin, end

    # ------------------------------------------------------------------ reading
    def handlers(self) -> list[HandlerTime]:
        """Every handler timed so far (removed ones included), in lifecycle order of their events, then run order."""
        order = {event: i for i, event in enumerate(Event)}
        ranked = sorted(self._handlers.items(), key=lambda item: (order[item[0].event], -item[0].priority, item[0].seq))
        return [
            HandlerTime(h.name, h.event.value, h.priority, r.calls, r.total_ns, r.max_ns, handler_name(h.fn))
            for h, (r, _) in ranked
        ]

    def events(self) -> list[DispatchTime]:
        """The events dispatched (to the end) at least once so far, in lifecycle order."""
        found = ((event, self._events.get(event)) for event in Event)
        return [DispatchTime(event.value, r.calls, r.total_ns, r.max_ns) for event, r in found if r and r.calls]

    @property
    def steps(self) -> StepTime:
        """The steps timed so far (see the module docstring)."""
        return StepTime(self._steps.calls, self._steps.total_ns)

    def __iter__(self) -> Iterator[HandlerTime]:
        return iter(self.handlers())

    def __repr__(self) -> str:
        return f"<HandlerTimes {'active' if self.active else 'stopped'}, {len(self._handlers)} handlers>"
