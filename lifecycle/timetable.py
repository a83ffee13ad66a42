"""A channel's timetable: when each counting schedule of its plan can next be due.

A step on which no scheduled handler is due should cost nothing for them: a hundred idle ``"1000it"`` handlers would
otherwise each be asked, every step, whether they are due. So a step channel (``pre_step``, ``step``,
``post_step``: counted in iterations) or an epoch channel (``pre_epoch``, ``post_epoch``: in epochs) splits its plan:

* the *idle plan*: the entries whose schedules do not count -- unscheduled ones, wall-time and bound-only schedules
  -- and those due at least every :data:`DENSE` values (``"1it"``, ``"4it"``: moving them through the heap below
  would cost more than asking them), asked at every emission, as before;
* the *counting* entries (``"100it"``, ``at=[...]``, with bounds or ``once``, ``"never"``), each with the first
  counter value at which it can be due (:meth:`~lifecycle.schedule.Schedule.next_value`), kept in a heap.

Below the *wake* -- the heap's smallest value -- an emission runs the idle plan: one comparison. At the wake it runs
the idle plan merged, in priority order, with the counting entries due there (their predicates still decide, as
always), then moves those entries on; the merged plans are cached by the set of entries due, so a handler firing
every step costs a heap pop and push, not a pass over the others. A second emission at the same value (``step`` once
per optimizer) runs the same plan again. When the counter goes back (a restored state) every entry is placed anew
from it. The values are computed from the counter alone, never later than a due point, so nothing a resume could
lose is kept.
"""

from __future__ import annotations

import heapq
import sys
from typing import Any

from lifecycle.schedule import GeneralPredicate, Schedule
from lifecycle.state import State

__all__ = ["DENSE", "NEVER", "Timetable", "sparse"]

#: the wake of a timetable whose counting schedules are never due again
NEVER = sys.maxsize
#: a period below which a schedule is asked at every emission: moving it through the heap would cost more
DENSE = 10


def sparse(schedule: Schedule) -> bool:
    """Whether the timetable places ``schedule`` (a counting one due less often than every :data:`DENSE` values)."""
    return schedule.counts and (schedule.at is not None or schedule.never or (schedule.period or 0) >= DENSE)


class Timetable:
    """The timetable of one channel's plan (see the module docstring). ``steps``: counted in iterations (else in
    epochs). ``plan``: the channel's plan entries ``(fn, due, handle)``, in run order."""

    __slots__ = (
        "_cache", "_counted", "_due_plan", "_heap", "_plan", "_value", "idle", "since", "state", "steps", "wake"
    )  # fmt: skip

    def __init__(self, state: State, steps: bool, plan: tuple[Any, ...]) -> None:
        self.state, self.steps, self._plan = state, steps, plan
        self._counted = [i for i, entry in enumerate(plan) if sparse(entry[2].schedule)]
        self.idle = tuple(entry for entry in plan if not sparse(entry[2].schedule))
        self._heap: list[tuple[int, int]] = []  # (next value, plan index)
        self._cache: dict[tuple[int, ...], tuple[Any, ...]] = {}
        self._value = -1  # the value of the last run at or past the wake (-1: none yet)
        self._due_plan: tuple[Any, ...] = ()
        self.since, self.wake = 1, 0  # no value is idle before the first run places the entries

    def plan_at(self, value: int) -> tuple[Any, ...]:
        """The plan to run at ``value``, which lies at or past the wake (or before the last such value)."""
        if value == self._value:
            return self._due_plan
        heap = self._heap
        if value < self._value or self._value < 0:  # first use, or the counter went back: place every entry anew
            heap.clear()
            for index in self._counted:
                self._push(index, value)
            heapq.heapify(heap)
        due: list[int] = []
        while heap and heap[0][0] <= value:
            due.append(heapq.heappop(heap)[1])
        for index in due:
            self._push(index, value + 1, ordered=True)
        key = tuple(sorted(due))
        plan = self._cache.get(key)
        if plan is None:
            wanted = set(key)
            plan = self._cache[key] = tuple(
                entry for i, entry in enumerate(self._plan) if i in wanted or not sparse(entry[2].schedule)
            )
        self._value, self._due_plan = value, plan
        self.since, self.wake = value + 1, heap[0][0] if heap else NEVER
        return plan

    def _push(self, index: int, value: int, *, ordered: bool = False) -> None:
        """Place entry ``index`` at the first value ``>= value`` at which it can be due (nowhere: never again)."""
        due = self._plan[index][1]
        if isinstance(due, GeneralPredicate) and due.finished:
            return
        found = self._plan[index][2].schedule.next_value(value)
        if found is None:
            return
        if ordered:
            heapq.heappush(self._heap, (found, index))
        else:
            self._heap.append((found, index))
