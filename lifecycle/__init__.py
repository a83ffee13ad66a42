"""stepbus's torch-free core: lifecycle events, the ordered blinker bus, schedules, counters and the loop.

Names are imported on first use (``lifecycle.lazy``), so a module that needs one part -- ``stepbus --help`` needs
none -- pays for that part only. Importing the package checks that ``callbacks`` and ``trainers`` are this
installation's (``lifecycle.installation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifecycle.installation import check_installation
from lifecycle.lazy import lazy_attributes

if TYPE_CHECKING:  # pragma: no cover
    from lifecycle.bus import Bus, Channel, Handle, handler_name
    from lifecycle.callback import Callback, HandlerSpec
    from lifecycle.errors import CallbackError
    from lifecycle.events import EPOCH_EVENTS, STEP_EVENTS, Event, Status, as_event
    from lifecycle.handler_times import DispatchTime, HandlerTime, HandlerTimes, StepTime
    from lifecycle.loop import Driver, Loop, Phase
    from lifecycle.priority import Priority
    from lifecycle.schedule import VALID_FORMS, Schedule, ScheduleSpec
    from lifecycle.state import SavedCheckpoint, State

_WHERE = {
    "Bus": "lifecycle.bus",
    "Channel": "lifecycle.bus",
    "Handle": "lifecycle.bus",
    "handler_name": "lifecycle.bus",
    "Callback": "lifecycle.callback",
    "HandlerSpec": "lifecycle.callback",
    "CallbackError": "lifecycle.errors",
    "DispatchTime": "lifecycle.handler_times",
    "HandlerTime": "lifecycle.handler_times",
    "HandlerTimes": "lifecycle.handler_times",
    "StepTime": "lifecycle.handler_times",
    "EPOCH_EVENTS": "lifecycle.events",
    "STEP_EVENTS": "lifecycle.events",
    "Event": "lifecycle.events",
    "Status": "lifecycle.events",
    "as_event": "lifecycle.events",
    "Driver": "lifecycle.loop",
    "Loop": "lifecycle.loop",
    "Phase": "lifecycle.loop",
    "Priority": "lifecycle.priority",
    "VALID_FORMS": "lifecycle.schedule",
    "Schedule": "lifecycle.schedule",
    "ScheduleSpec": "lifecycle.schedule",
    "SavedCheckpoint": "lifecycle.state",
    "State": "lifecycle.state",
}

__all__ = [
    "EPOCH_EVENTS",
    "STEP_EVENTS",
    "VALID_FORMS",
    "Bus",
    "Callback",
    "CallbackError",
    "Channel",
    "DispatchTime",
    "Driver",
    "Event",
    "Handle",
    "HandlerSpec",
    "HandlerTime",
    "HandlerTimes",
    "Loop",
    "Phase",
    "Priority",
    "SavedCheckpoint",
    "Schedule",
    "ScheduleSpec",
    "State",
    "Status",
    "StepTime",
    "as_event",
    "handler_name",
]

check_installation()  # callbacks and trainers are this installation's, else an error names the file in the way

__getattr__, __dir__ = lazy_attributes("lifecycle", _WHERE, __all__)
