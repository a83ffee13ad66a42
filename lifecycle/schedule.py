"""Schedules: when a filtered handler runs.

One vocabulary everywhere (code, YAML, CLI), parsed once at registration into a predicate::

    None            every time the event fires
    "never"         never (the handler stays registered, so a callback's unscheduled handlers still run)
    100 / "100it"   iterations 100, 200, ... (``state.iteration % 100 == 0``); filters pre_step, step, post_step
    "2ep"           epochs 2, 4, ... (``state.epoch % 2 == 0``); filters pre_epoch, post_epoch (so on post_epoch:
                    "at the end of epochs 2, 4, ...", the Ignite/Lightning convention)
    "30s" "10min" "1h"  the first time the event fires after that much wall time since the handler last ran
                    (or since it was first checked); filters step and epoch events
    "once"          the first time the event fires (within the bounds below), never again
    at=[100, 250]   exactly those iterations; ``at=["1ep", "3ep"]`` exactly those epochs
    start=, end=    inclusive bounds; an int means iterations, otherwise "500it" / "3ep"
    once=True       only the first time the schedule is due

Anything else -- ``0``, negatives, ``"1.5ep"``, ``"10 parsecs"``, ``True`` -- is a ``ValueError`` that names the bad
value and lists the valid forms, raised when the handler is registered rather than at step 1000. ``0`` and negative
periods (``-1`` is Wisp's "off") are refused rather than read as "off": the message points to ``"never"`` (and, in a
config file, to ``enabled: false``, which leaves the callback out altogether).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from lifecycle.events import EPOCH_EVENTS, STEP_EVENTS, Event
from lifecycle.state import State

__all__ = ["VALID_FORMS", "GeneralPredicate", "Schedule", "ScheduleSpec"]

VALID_FORMS = (
    "an int > 0 (iterations), a string '<N>it' (iterations), '<N>ep' (epochs), '<T>s' / '<T>min' / '<T>h' "
    "(wall time), 'once', 'never', or at=[...] with optional start=/end= bounds"
)

Unit = Literal["it", "ep", "s"]
ScheduleSpec = Union[None, int, str, "Schedule", Mapping[str, Any]]
Predicate = Callable[[], bool]

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(it|ep|s|sec|min|h)?\s*$", re.IGNORECASE)
_NEGATIVE = re.compile(r"^\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*(it|ep|s|sec|min|h)?\s*$", re.IGNORECASE)
_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_MAPPING_KEYS = ("every", "at", "start", "end", "once")


def _invalid(value: object, why: str) -> ValueError:
    return ValueError(f"invalid schedule {value!r}: {why}; valid forms are {VALID_FORMS}")


def _not_positive(value: object, what: str, negative: bool) -> ValueError:
    """The error for a count of zero or below; for a period it says how to write "never run" instead."""
    if what != "the period":
        return _invalid(value, f"{what} must be > 0")
    if negative:
        return _invalid(
            value,
            f"{what} must be > 0; a negative period does not mean 'off' here: write 'never' for a schedule that "
            "never fires (in a config file, 'enabled: false' leaves the callback out altogether)",
        )
    return _invalid(value, f"{what} must be > 0; write 'never' for a schedule that never fires")


def _parse_count(value: object, what: str) -> tuple[Unit, float]:
    """Parse ``100``, ``"100it"``, ``"2ep"``, ``"30s"`` into (unit, amount)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _invalid(value, f"{what} must be an int or a string, not {type(value).__name__}")
    if isinstance(value, int):
        if value <= 0:
            raise _not_positive(value, what, value < 0)
        return "it", float(value)
    match = _PATTERN.match(value)
    if match is None:
        if _NEGATIVE.match(value):
            raise _not_positive(value, what, True)
        raise _invalid(value, f"{what} is not a number with an optional unit")
    number, unit_text = match.group(1), (match.group(2) or "it").lower()
    amount = float(number)
    if not math.isfinite(amount) or amount <= 0:
        raise _not_positive(value, what, False)
    if unit_text in _SECONDS:
        return "s", amount * _SECONDS[unit_text]
    if not amount.is_integer() or "." in number:
        raise _invalid(value, f"{what} counts {'epochs' if unit_text == 'ep' else 'iterations'} and must be whole")
    return ("ep" if unit_text == "ep" else "it"), amount


def _parse_bound(value: object, name: str) -> tuple[Unit, int] | None:
    if value is None:
        return None
    unit, amount = _parse_count(value, name)
    if unit == "s":
        raise _invalid(value, f"{name} must count iterations or epochs ('500it', '3ep'), not wall time")
    return unit, int(amount)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule. Build with :meth:`parse`; turn into a predicate with :meth:`bind`."""

    unit: Unit | None = None
    period: float | None = None
    at: frozenset[int] | None = None
    once: bool = False
    start: tuple[Unit, int] | None = None
    end: tuple[Unit, int] | None = None
    text: str = "always"
    never: bool = False

    @classmethod
    def parse(
        cls,
        spec: ScheduleSpec = None,
        *,
        at: Iterable[int | str] | None = None,
        start: int | str | None = None,
        end: int | str | None = None,
        once: bool = False,
    ) -> Schedule:
        """Parse any accepted form (see the module docstring) into a :class:`Schedule`."""
        if isinstance(spec, Schedule):
            if at is None and start is None and end is None and not once:
                return spec
            raise _invalid(spec, "a parsed Schedule cannot take extra at=/start=/end=/once= arguments")
        if isinstance(spec, Mapping):
            unknown = sorted(set(map(str, spec)) - set(_MAPPING_KEYS))
            if unknown:
                raise _invalid(dict(spec), f"unknown keys {unknown} (valid keys: {list(_MAPPING_KEYS)})")
            given = {"at": at, "start": start, "end": end, "once": once or None}
            clash = sorted(k for k, v in given.items() if v is not None and spec.get(k) is not None)
            if clash:
                raise _invalid(dict(spec), f"{clash} given both in the mapping and as arguments; give each once")

            mapping = spec

            def pick(key: str, argument: Any) -> Any:
                value = mapping.get(key)
                return argument if value is None else value

            return cls.parse(
                spec.get("every"),
                at=pick("at", at),
                start=pick("start", start),
                end=pick("end", end),
                once=pick("once", once),
            )
        if not isinstance(once, bool):
            raise _invalid(once, "once= must be True or False")
        lo, hi = _parse_bound(start, "start"), _parse_bound(end, "end")
        if lo is not None and hi is not None and lo[0] == hi[0] and lo[1] > hi[1]:
            raise _invalid({"start": start, "end": end}, "start is after end")
        unit: Unit | None = None
        period: float | None = None
        points: frozenset[int] | None = None
        parts: list[str] = []
        if isinstance(spec, str) and spec.strip().lower() == "once":
            once, spec = True, None
        if isinstance(spec, str) and spec.strip().lower() == "never":
            if at is not None:
                raise _invalid(spec, "give either 'never' or at=[...], not both")
            # bounds and once= were checked above and change nothing: a schedule that never fires stays so
            return cls(never=True, text="never")
        if at is not None:
            if spec is not None:
                raise _invalid(spec, "give either a period or at=[...], not both")
            if isinstance(at, (str, bytes)) or not isinstance(at, Iterable):
                raise _invalid(at, "at= must be a list such as [100, 250] or ['1ep', '3ep']")
            parsed = [_parse_count(item, "each at= entry") for item in at]
            units = {u for u, _ in parsed}
            if not parsed or len(units) != 1 or "s" in units:
                raise _invalid(list(at), "at= must be a non-empty list of iterations or of epochs, not mixed")
            unit = units.pop()
            points = frozenset(int(amount) for _, amount in parsed)
            parts.append("at=[" + ", ".join(f"{p}{unit}" for p in sorted(points)) + "]")
        elif spec is not None:
            unit, period = _parse_count(spec, "the period")
            parts.append(f"{period:g}{unit}" if unit == "s" else f"{int(period)}{unit}")
        for bound, name in ((lo, "start"), (hi, "end")):
            if bound is None:
                continue
            if unit in ("it", "ep") and bound[0] != unit:
                counted = "iterations" if unit == "it" else "epochs"
                raw = start if name == "start" else end
                raise _invalid(raw, f"{name}= must count {counted} like the schedule does (e.g. '{bound[1]}{unit}')")
            parts.append(f"{name}={bound[1]}{bound[0]}")
        if once:
            parts.append("once")
        text = ", ".join(parts) if parts else "always"
        return cls(unit=unit, period=period, at=points, once=once, start=lo, end=hi, text=text)

    @property
    def always(self) -> bool:
        """True when the schedule never filters anything."""
        return self.text == "always"

    @property
    def counts(self) -> bool:
        """Whether it is due at counter values alone (iterations or epochs, never the clock): what a channel's
        timetable (``lifecycle.timetable``) can skip ahead on. ``"never"`` counts too: it is due at none."""
        return self.never or (self.unit in ("it", "ep") and (self.period is not None or self.at is not None))

    def next_value(self, value: int) -> int | None:
        """The first counter value ``>= value`` at which this counting schedule can be due, or ``None`` when it
        never is again (``once`` aside: a predicate that already fired knows that, see ``finished``)."""
        if self.never:
            return None
        if self.start is not None:
            value = max(value, self.start[1])
        if self.at is not None:
            later = [point for point in self.at if point >= value]
            found = min(later) if later else None
        else:
            n = int(self.period or 1)
            found = -(-value // n) * n
        if found is None or (self.end is not None and found > self.end[1]):
            return None
        return found

    def events(self) -> frozenset[Event]:
        """The events this schedule can filter: iteration schedules the step events, epoch schedules the epoch
        events, time, ``once`` and ``never`` schedules both."""
        if self.unit == "it":
            return STEP_EVENTS
        if self.unit == "ep":
            return EPOCH_EVENTS
        if self.always:
            return frozenset(Event)
        return STEP_EVENTS | EPOCH_EVENTS

    def check_event(self, event: Event, handler: str = "handler") -> None:
        """Raise a ``ValueError`` when this schedule cannot filter ``event`` (e.g. ``"100it"`` on ``post_epoch``)."""
        if event in self.events():
            return
        if self.unit in ("it", "ep"):
            counted = "iterations" if self.unit == "it" else "epochs"
            fits = ", ".join(sorted(e.value for e in self.events()))
            raise ValueError(
                f"schedule {self.text!r} of {handler} counts {counted}, so it can filter {fits}, not "
                f"{event.value!r}; use '<N>ep' for epoch events and '<N>it' for step events"
            )
        raise ValueError(
            f"schedule {self.text!r} of {handler} cannot filter {event.value!r}: only step and epoch events "
            "are scheduled; connect without every="
        )

    def bind(self, state: State, event: Event, clock: Callable[[], float] = time.monotonic) -> Predicate | None:
        """Compile into a zero-argument predicate reading ``state`` (``None`` means "always").

        Each call returns a fresh predicate with its own memory (``once``, the wall-time anchor), so one parsed
        schedule may be shared by several handlers.
        """
        self.check_event(event)
        if self.always:
            return None
        if self.never:
            return _never
        counter = "epoch" if self.unit == "ep" else "iteration"
        if self.unit == "it" and self.period is not None and not (self.once or self.start or self.end):
            n = int(self.period)
            return lambda: state.iteration % n == 0  # the hot case, kept branch-free
        if self.unit == "ep" and self.period is not None and not (self.once or self.start or self.end):
            n = int(self.period)
            return lambda: state.epoch % n == 0
        if self.unit == "s" and self.period is not None and not (self.once or self.start or self.end):
            return _every_seconds(float(self.period), clock)
        return GeneralPredicate(self, state, counter, clock)

    def __str__(self) -> str:
        return self.text


def _never() -> bool:
    return False


def _every_seconds(period: float, clock: Callable[[], float]) -> Predicate:
    """A plain wall-time period (``"1min"``), asked at every step: one clock read and one comparison, without
    :class:`GeneralPredicate`'s general walk (which asks one of these for its own wall-time part). The first call
    anchors the period; it is due once ``period`` seconds have passed since the anchor, which then moves to that
    call."""
    anchor: float | None = None

    def due() -> bool:
        nonlocal anchor
        now = clock()
        if anchor is None:
            anchor = now
            return False
        if now - anchor < period:
            return False
        anchor = now
        return True

    return due


class GeneralPredicate:
    """Bounds, ``at``, ``once`` and wall-time schedules; slower than the lambdas above but rarely on a hot path."""

    __slots__ = ("_counter", "_done", "_schedule", "_state", "_wall")

    def __init__(self, schedule: Schedule, state: State, counter: str, clock: Callable[[], float]) -> None:
        self._schedule, self._state, self._counter = schedule, state, counter
        self._done = False
        # a wall-time period's clock and anchor, asked only once the bounds allow
        self._wall = _every_seconds(schedule.period or 0.0, clock) if schedule.unit == "s" else None

    @property
    def finished(self) -> bool:
        """A ``once`` schedule that fired: never due again."""
        return self._done

    def _value(self, unit: Unit) -> int:
        return self._state.epoch if unit == "ep" else self._state.iteration

    def __call__(self) -> bool:
        s = self._schedule
        if self._done:
            return False
        if s.start is not None and self._value(s.start[0]) < s.start[1]:
            return False
        if s.end is not None and self._value(s.end[0]) > s.end[1]:
            return False
        if self._wall is not None:
            if not self._wall():
                return False
        elif s.unit is not None:
            value = getattr(self._state, self._counter)
            if s.at is not None:
                if value not in s.at:
                    return False
            elif s.period is not None and value % int(s.period) != 0:
                return False
        if s.once:
            self._done = True
        return True
