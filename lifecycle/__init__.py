"""stepbus's torch-free core: lifecycle events, the ordered blinker bus, schedules, counters and the loop."""

from lifecycle.bus import Bus, Channel, Handle, handler_name
from lifecycle.callback import Callback, HandlerSpec
from lifecycle.errors import CallbackError
from lifecycle.events import EPOCH_EVENTS, STEP_EVENTS, Event, Status, as_event
from lifecycle.loop import Driver, Loop, Phase
from lifecycle.priority import Priority
from lifecycle.schedule import VALID_FORMS, Schedule, ScheduleSpec
from lifecycle.state import SavedCheckpoint, State

__all__ = [
    "EPOCH_EVENTS",
    "STEP_EVENTS",
    "VALID_FORMS",
    "Bus",
    "Callback",
    "CallbackError",
    "Channel",
    "Driver",
    "Event",
    "Handle",
    "HandlerSpec",
    "Loop",
    "Phase",
    "Priority",
    "SavedCheckpoint",
    "Schedule",
    "ScheduleSpec",
    "State",
    "Status",
    "as_event",
    "handler_name",
]
