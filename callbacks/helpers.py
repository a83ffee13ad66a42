"""Helpers the built-in callbacks share: parsing a schedule with the callback named in the error, the event a
periodic action runs on, and where a file-writing callback writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle import Callback, Event, Schedule, ScheduleSpec

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["output_dir", "parse_schedule", "periodic_event"]


def periodic_event(schedule: Schedule) -> Event:
    """The event a periodic action (validate, prune, ...) runs on: ``post_epoch`` for an epoch schedule (``"1ep"``),
    ``post_step`` for anything else (``"100it"``, ``"10min"``, ``at=[...]`` iterations)."""
    return Event.POST_EPOCH if schedule.unit == "ep" else Event.POST_STEP


def parse_schedule(spec: ScheduleSpec, owner: str, **bounds: Any) -> Schedule:
    """``Schedule.parse`` with the error naming the callback (``owner``) that was given the bad schedule."""
    try:
        return Schedule.parse(spec, **bounds)
    except ValueError as exc:
        raise ValueError(f"callback {owner}: {exc}") from None


def output_dir(callback: Callback, given: Path | None, trainer: BaseTrainer, sub: str) -> Path:
    """Where a file-writing callback writes: the ``dir`` it was given, else ``<trainer.run_dir>/<sub>``; a
    ``ValueError`` naming the callback when there is neither (raised from ``setup``, so at construction)."""
    if given is not None:
        return given
    if trainer.run_dir is None:
        kind = type(callback).__name__
        raise ValueError(
            f"{kind} {callback.state_key!r} needs a directory: pass {kind}(dir=...) or give the trainer run_dir=... "
            f"(it then writes to <run_dir>/{sub})"
        )
    return trainer.run_dir / sub
