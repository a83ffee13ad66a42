"""The event bus: one blinker signal per event, and an ordered, strongly held handler list behind each.

blinker calls receivers in an undefined order (it keeps ids in a ``set``), holds them weakly by default (a lambda
vanishes silently) and stops at the first exception without naming the signal. The bus keeps its own handler list
per event -- sorted by priority (higher first), ties by registration order, rebuilt only when something is
connected, removed or toggled -- and runs it as the signal's first receiver. So:

* ``bus.emit(event, sender, **payload)`` goes through the blinker signal when plain blinker receivers are connected
  (``bus.signal(event).connect(fn, weak=False)``) and they get every emission, after the ordered handlers, in the
  order they connected. With none, ``emit`` runs the ordered list directly (same result, without blinker's ~1 us).
* ``bus.signal(event).send(sender, **payload)`` also runs the ordered handlers: the two are interchangeable.
* Receivers connected directly to a bus signal are always held strongly: ``weak=True`` (blinker's default, and what
  ``@signal.connect`` uses) is upgraded, so nothing is ever dropped silently. Remove them with ``disconnect``.
* A handler that raises becomes :class:`CallbackError` naming the handler, the event and ``state.iteration``.
* Most events stop at the first handler that raises: the rest of a step must not run on state a handler left
  half-done. ``exception`` and ``post_training`` (:data:`EVERY_HANDLER`) are the run's end -- a crash dump, the final
  checkpoint, ``metrics.json``, closing a logger -- so there *every* handler and receiver runs even when one raises;
  the first error is raised once all ran, each later one attached to it (``CallbackError.also_failed``, a note on
  Python >= 3.11) and logged (``lifecycle.errors.Failures``). The step events' dispatch is not touched by this.
* Handlers connected or toggled while an event is being dispatched take effect from the next emission.
* A step or epoch channel skips its counting schedules (``"100it"``, ``at=[...]``) below the next value at which
  one of them can be due (:mod:`lifecycle.timetable`): an idle scheduled handler costs nothing per step.
* ``channel.emitter("outputs")`` is ``channel.emit`` with the payload's keys fixed in advance: the trainer emits the
  per-step events through such emitters, which call each handler with the keywords spelled out instead of unpacking
  a payload dict per handler (:mod:`lifecycle.emitters`; same handlers, order, schedules and errors).
* ``bus.time_handlers()`` times every handler and dispatch until it is stopped (:mod:`lifecycle.handler_times`):
  the timers are built into the plans, so with timing off ``emit`` runs exactly as without the feature.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from blinker import NamedSignal, Namespace

from lifecycle.bus_signals import BusSignal, EveryReceiverSignal, caused
from lifecycle.emitters import compile_emitter
from lifecycle.errors import CallbackError, Failures
from lifecycle.events import EPOCH_EVENTS, STEP_EVENTS, Event, as_event
from lifecycle.handle import Handle, Handler
from lifecycle.handler_times import HandlerTimes
from lifecycle.receivers import handler_name, raw_receiver_name, receiver_name
from lifecycle.schedule import Predicate, Schedule, ScheduleSpec
from lifecycle.state import State
from lifecycle.timetable import Timetable, sparse

__all__ = ["EVERY_HANDLER", "Bus", "Channel", "Handle", "HandlerTimes", "PlanEntry", "handler_name"]

#: the events whose handlers all run even when one raises (see the module docstring)
EVERY_HANDLER: frozenset[Event] = frozenset({Event.EXCEPTION, Event.POST_TRAINING})

F = TypeVar("F", bound=Callable[..., Any])

#: one entry of a channel's dispatch plan: the function called, its schedule's ``due`` (``None``: always), its handle
PlanEntry = tuple[Handler, Predicate | None, Handle]


class Channel:
    """Everything the bus knows about one event. The trainer caches channels for its hot path:
    ``if channel.active: channel.emit(sender, **payload)`` costs one attribute test when nobody listens."""

    __slots__ = ("_bus", "_emitters", "_handles", "_table", "active", "event", "plan", "raw", "signal")

    def __init__(self, bus: Bus, event: Event) -> None:
        self._bus = bus
        self.event = event
        self._handles: list[Handle] = []
        self.plan: tuple[PlanEntry, ...] = ()
        self._table: Timetable | None = None  # the counting schedules' wake (lifecycle.timetable)
        self._emitters: dict[tuple[str, ...], Callable[..., None]] = {}
        self.raw = False
        self.active = False
        every = event in EVERY_HANDLER
        self.signal = (EveryReceiverSignal if every else BusSignal)(event.value, self)
        self.signal.connect(self._receive)

    def emit(self, sender: object, /, **payload: Any) -> None:
        """Run the handlers (and any plain blinker receivers) for this event."""
        if self.raw:
            try:
                self.signal.send(sender, **payload)
            except CallbackError:
                raise
            except Exception as exc:
                raise self._bus._raw_error(self.event, exc) from exc
            return
        table = self._table
        if table is None:
            plan = self.plan
        else:  # below the wake no counting schedule is due: only the others are asked
            state = table.state
            value = state.iteration if table.steps else state.epoch
            plan = table.idle if table.since <= value < table.wake else table.plan_at(value)
        for fn, due, handle in plan:
            if due is not None and not due():
                continue
            try:
                fn(sender, **payload)
            except CallbackError:
                raise
            except Exception as exc:
                raise self._bus._error(handle, exc) from exc

    def emitter(self, *names: str) -> Callable[..., None]:
        """``emit(sender, *values)``: :meth:`emit` with the payload ``names=values`` fixed in advance, for an event
        emitted at every step -- ``channel.emitter("outputs")(trainer, outputs)`` is
        ``channel.emit(trainer, outputs=outputs)``, without unpacking a payload dict at every handler
        (:mod:`lifecycle.emitters`). Built once per key set and kept; it always runs the channel's current plan."""
        found = self._emitters.get(names)
        if found is None:
            found = self._emitters[names] = compile_emitter(self, names)
        return found

    def _receive(self, sender: object, /, **payload: Any) -> None:
        # the signal's first receiver: runs the ordered list when the signal is sent through blinker. The loop is
        # the same as in emit() on purpose: delegating to it from emit() would re-pack **payload, measured at
        # +0.26 us per emission (3 per step) on the development machine.
        for fn, due, handle in self.plan:
            if due is not None and not due():
                continue
            try:
                fn(sender, **payload)
            except CallbackError:
                raise
            except Exception as exc:
                raise self._bus._error(handle, exc) from exc

    def _refresh(self) -> None:
        self.raw = len(self.signal.receivers) > 1
        self.active = self.raw or bool(self.plan)

    def _rebuild(self) -> None:
        with self._bus._lock:
            ordered = sorted((h for h in self._handles if h._enabled), key=lambda h: (-h.priority, h.seq))
            plan = tuple((h.fn, h.due, h) for h in ordered)
            times = self._bus._times  # timing is built into the plan, so emit() has nothing to check per handler
            self.plan = plan if times is None else times.wrap(self, plan)
            self._table = self._timetable(plan) if times is None else None
            self._refresh()

    def _timetable(self, plan: tuple[PlanEntry, ...]) -> Timetable | None:
        """The timetable of a step or epoch channel with counting schedules (else ``None``: the plan is run)."""
        state, event = self._bus.state, self.event
        counting = any(sparse(h.schedule) for _, _, h in plan)
        if state is None or not counting or event not in (STEP_EVENTS | EPOCH_EVENTS) or event in EVERY_HANDLER:
            return None
        return Timetable(state, event in STEP_EVENTS, plan)

    def _add(self, handle: Handle) -> None:
        with self._bus._lock:
            self._handles.append(handle)
            self._rebuild()

    def _remove(self, handle: Handle) -> None:
        with self._bus._lock:
            if handle in self._handles:
                self._handles.remove(handle)
            handle.removed = True
            self._rebuild()

    def handles(self) -> tuple[Handle, ...]:
        """All handles of this event in run order, disabled ones included."""
        return tuple(sorted(self._handles, key=lambda h: (-h.priority, h.seq)))


class _EveryHandlerChannel(Channel):
    """The channel of an :data:`EVERY_HANDLER` event: every handler runs even when one raises."""

    __slots__ = ()

    def emit(self, sender: object, /, **payload: Any) -> None:
        """Run every handler (and plain blinker receiver) of this event; then raise the first failure, if any."""
        if self.raw:
            self.signal.send(sender, **payload)  # an EveryReceiverSignal: it runs _receive, then the receivers
        else:
            self._receive(sender, **payload)

    def emitter(self, *names: str) -> Callable[..., None]:
        """As :meth:`Channel.emitter`, through this channel's every-handler :meth:`emit` (never a hot path)."""

        def emit(sender: object, /, *values: Any) -> None:
            self.emit(sender, **dict(zip(names, values, strict=True)))

        return emit

    def _receive(self, sender: object, /, **payload: Any) -> None:
        failures = Failures()
        for fn, due, handle in self.plan:
            if due is not None and not due():
                continue
            try:
                fn(sender, **payload)
            except CallbackError as exc:
                failures.add(exc)
            except Exception as exc:  # noqa: BLE001 - kept, and raised once every receiver ran
                failures.add(caused(self._bus._error(handle, exc), exc))
            except BaseException as exc:
                failures.note_on(exc)
                raise
        failures.raise_first()


class Bus:
    """The lifecycle bus of one trainer (never process-global).

    ``state`` is what schedules read and what error messages quote; a bus without one accepts only unscheduled
    handlers. ``clock`` (seconds, monotonic; ``time.monotonic`` by default) is what wall-time schedules
    (``"10min"``) read: a distributed trainer gives a clock its ranks agree on, so such a handler fires at the same
    iteration on every rank.
    """

    def __init__(self, state: State | None = None, *, clock: Callable[[], float] | None = None) -> None:
        self.state = state
        self.clock: Callable[[], float] = clock or time.monotonic
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._namespace = Namespace()
        self._channels: dict[Event, Channel] = {}
        self._times: HandlerTimes | None = None
        for event in Event:
            channel = (_EveryHandlerChannel if event in EVERY_HANDLER else Channel)(self, event)
            self._namespace[event.value] = channel.signal
            self._channels[event] = channel

    @property
    def namespace(self) -> Namespace:
        """The bus's private blinker namespace: event name -> ``NamedSignal``."""
        return self._namespace

    def signal(self, event: Event | str) -> NamedSignal:
        """The blinker ``NamedSignal`` of ``event``; plain blinker receivers connected to it get every emission."""
        return self._channels[as_event(event)].signal

    def channel(self, event: Event | str) -> Channel:
        """The :class:`Channel` of ``event`` (what the trainer's hot path emits through)."""
        return self._channels[as_event(event)]

    def connect(
        self,
        event: Event | str,
        fn: Handler,
        *,
        priority: int = 0,
        every: ScheduleSpec = None,
        name: str | None = None,
    ) -> Handle:
        """Register ``fn(sender, **payload)`` for ``event``.

        ``priority``: higher runs first; ties run in registration order. ``every``: a schedule (``"100it"``,
        ``"2ep"``, ``"30s"``, ``"once"``, a :class:`Schedule` ...) parsed now; a bad one is a ``ValueError`` now.
        ``name`` is what errors and listings call the handler (default: derived from ``fn``).
        Returns a :class:`Handle` to toggle (``handle.enabled = False``) or remove it.
        """
        ev = as_event(event)
        label = name if name is not None else handler_name(fn)
        if not callable(fn):
            raise TypeError(f"handler {label!r} for event {ev.value!r} is not callable: {fn!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority of handler {label!r} must be an int, got {priority!r}")
        try:
            schedule = Schedule.parse(every)
            schedule.check_event(ev, f"handler {label!r}")
        except ValueError as exc:
            raise ValueError(f"handler {label!r} on {ev.value!r}: {exc}") from None
        due: Predicate | None = None
        if not schedule.always:
            if self.state is None:
                raise ValueError(f"handler {label!r}: every={schedule} needs a bus created with a State")
            due = schedule.bind(self.state, ev, self.clock)
        channel = self._channels[ev]
        handle = Handle(
            channel, fn, priority=int(priority), schedule=schedule, due=due, name=label, seq=next(self._seq)
        )
        channel._add(handle)
        return handle

    def on(self, event: Event | str, *, every: ScheduleSpec = None, priority: int = 0) -> Callable[[F], F]:
        """Decorator: ``@bus.on("post_step", every="100it")`` connects ``fn``; returns it unchanged (use
        :meth:`connect` for a :class:`Handle`)."""

        def register(fn: F) -> F:
            self.connect(event, fn, priority=priority, every=every)
            return fn

        return register

    def emit(self, event: Event | str, sender: object, /, **payload: Any) -> None:
        """Emit ``event``: the ordered handlers run, then plain blinker receivers, each as ``fn(sender, **payload)``."""
        channel = self._channels[as_event(event)]
        if channel.active:  # nobody listening: nothing to call
            channel.emit(sender, **payload)

    def time_handlers(self) -> HandlerTimes:
        """Start timing every handler: calls, total and longest time per handler, and per event the whole dispatch
        (see :mod:`lifecycle.handler_times`). Timing lasts until the returned object's ``stop()`` (or the end of its
        ``with`` block); with it off, dispatch costs nothing extra. Raises ``RuntimeError`` while another
        :class:`HandlerTimes` of this bus is active."""
        with self._lock:
            if self._times is not None:
                raise RuntimeError(
                    f"handler timing is already on for this bus ({self._times!r}): stop() it before starting another"
                )
            times = self._times = HandlerTimes(self)
            times._start()
            return times

    def _rebuild_all(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel._rebuild()

    def _stop_timing(self, times: HandlerTimes) -> None:
        with self._lock:
            if self._times is times:
                self._times = None
                self._rebuild_all()

    def handles(self, event: Event | str | None = None) -> tuple[Handle, ...]:
        """Registered handles in run order: of one event, or of all events in lifecycle order."""
        if event is not None:
            return self._channels[as_event(event)].handles()
        return tuple(h for channel in self._channels.values() for h in channel.handles())

    def has_receivers(self, event: Event | str) -> bool:
        """Whether emitting ``event`` would call anything."""
        return self._channels[as_event(event)].active

    def _where(self) -> str:
        state = self.state
        if state is None:
            return "(no trainer state)"
        return (
            f"at iteration {state.iteration} (epoch {state.epoch}/{state.max_epochs}, "
            f"step {state.epoch_iteration}/{state.iterations_per_epoch})"
        )

    def _error(self, handle: Handle, exc: Exception) -> CallbackError:
        iteration = self.state.iteration if self.state is not None else None
        message = (
            f"handler {handle.name!r} (priority {handle.priority}) failed during event {handle.event.value!r} "
            f"{self._where()}: {type(exc).__name__}: {exc}"
        )
        return CallbackError(message, handler=handle.name, event=handle.event.value, iteration=iteration)

    def _raw_error(self, event: Event, exc: Exception, receiver: object = None) -> CallbackError:
        name = raw_receiver_name(exc) if receiver is None else receiver_name(receiver)
        iteration = self.state.iteration if self.state is not None else None
        message = (
            f"blinker receiver {name!r} (connected directly to signal {event.value!r}) failed during event "
            f"{event.value!r} {self._where()}: {type(exc).__name__}: {exc}"
        )
        return CallbackError(message, handler=name, event=event.value, iteration=iteration)
