"""Where a trainer's run stands: a mixin of ``BaseTrainer`` over its loop, driver and control (read-only)."""

from __future__ import annotations

from lifecycle import Loop, Phase, Status
from trainers.engine.control import Control
from trainers.engine.driver import LoopDriver

__all__ = ["RunStatus"]


class RunStatus:
    """The trainer's read-only view of its run."""

    _loop: Loop
    _driver: LoopDriver
    _control: Control

    @property
    def status(self) -> Status | None:
        """The run's final status once it ended, else ``None``."""
        return self._loop.status

    @property
    def phase(self) -> Phase:
        """Where the loop stands: idle, in or between epochs, finishing, done."""
        return self._loop.phase

    @property
    def post_epoch_pending(self) -> bool:
        """From an epoch's last step until its ``post_epoch``: not a resumable point (requests wait past it)."""
        return self._driver.post_epoch_pending

    @property
    def is_paused(self) -> bool:
        return self._loop.paused

    @property
    def is_finished(self) -> bool:
        return self._loop.finished

    @property
    def stop_reason(self) -> str | None:
        """Why the run was stopped (``"EarlyStopping: val/loss did not improve ..."``), as the first ``stop(reason)``
        said; ``None`` when it was not stopped or no reason was given."""
        return self._control.stop_reason

    @property
    def interrupted_by(self) -> int | None:
        """The signal that interrupted ``train()`` (``signal.SIGINT`` ...), if one did."""
        return self._control.interrupted_by
