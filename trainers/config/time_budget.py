"""``trainer.max_time``: the one ``trainer:`` key every trainer accepts, whatever its factory's parameters.

It is a :class:`~callbacks.time_limit.TimeLimit`'s budget (``2h``, ``1h30min``; ``null``: no limit), checked here
exactly as ``TimeLimit(max_time=...)`` checks it, kept in the resolved config when it was given, and turned into the
callback by the builder -- never passed to the factory. An enabled ``time_limit`` block beside it would be a second
budget for the same run, so the two are refused together.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from callbacks.time_limit import TimeLimit, parse_duration
from trainers.config.errors import Problem
from trainers.config.params import Param, params_of

__all__ = ["MAX_TIME", "TIME_LIMIT", "budget_clash", "check_max_time", "max_time_param"]

#: the ``trainer:`` key
MAX_TIME = "max_time"
#: the registry target of the callback it becomes
TIME_LIMIT = f"{TimeLimit.__module__}:{TimeLimit.__qualname__}"


def max_time_param() -> Param:
    """``TimeLimit``'s ``max_time`` parameter, optional (default ``None``): listed among every trainer's keys."""
    return replace(params_of(TimeLimit)[MAX_TIME], default=None)


def check_max_time(value: Any, problems: list[Problem]) -> Any:
    """``value`` when it is a budget ``TimeLimit`` accepts or ``None``; else ``None``, with the problem added."""
    try:
        if value is not None:
            parse_duration(value, f"trainer.{MAX_TIME}")
    except ValueError as exc:
        problems.append(Problem(f"trainer.{MAX_TIME}", str(exc).removeprefix(f"trainer.{MAX_TIME}: ")))
        return None
    return value


def budget_clash(key: str) -> Problem:
    """The problem of an enabled ``callbacks.<key>`` TimeLimit block beside ``trainer.max_time``."""
    return Problem(
        f"callbacks.{key}",
        f"trainer.{MAX_TIME} already adds a TimeLimit; give the budget once: either trainer.{MAX_TIME} or "
        f"callbacks.{key} (remove one, or set callbacks.{key}.enabled: false)",
    )
