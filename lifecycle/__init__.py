"""stepbus's torch-free core: lifecycle events, the ordered blinker bus, schedules, counters and the loop."""

from lifecycle.bus import Bus, Channel, Handle, describe
from lifecycle.errors import CallbackError
from lifecycle.events import EPOCH_EVENTS, STEP_EVENTS, Event, Status, as_event
from lifecycle.loop import Host, Loop, Phase
from lifecycle.priority import Priority
from lifecycle.schedule import VALID_FORMS, Schedule, ScheduleSpec
from lifecycle.state import State

__all__ = [
    "EPOCH_EVENTS",
    "STEP_EVENTS",
    "VALID_FORMS",
    "Bus",
    "CallbackError",
    "Channel",
    "Event",
    "Handle",
    "Host",
    "Loop",
    "Phase",
    "Priority",
    "Schedule",
    "ScheduleSpec",
    "State",
    "Status",
    "as_event",
    "describe",
]
