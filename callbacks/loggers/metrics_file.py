"""``MetricsFile``: the run's outcome as one JSON file, for scripts and CI (``<run_dir>/metrics.json``).

Events used: ``pre_training`` (starts the clock) and ``post_training`` at priority ``FINAL`` -- after the
checkpointer's end save, so the checkpoint paths are the final ones -- whatever the status. The file is written
atomically::

    {"status": "completed", "iterations": 3000, "epochs": 10, "seconds": 58.2, "seconds_total": 58.2,
     "final": {"val/psnr": 33.1, ...}, "best": {"best/psnr": 33.4, ...},
     "metrics": {every number in state.metrics}, "checkpoints": {"last": "...", "best": "..."},
     "failed_writes": {"Checkpointer": 3}}

``seconds`` is this process's training time; ``seconds_total`` adds the time of the runs it resumed from (kept in
the checkpoint). ``failed_writes`` counts, by writer, the writes that failed while the run went on (a checkpointer
or logger with ``on_error="warn"``, a logger disabled by a failure): ``{"Checkpointer": 164}``, ``{}`` when none
did. The counts come from ``trainer.state.failed_writes``, where each writer records its own (see
:mod:`lifecycle.state`), and cover the runs this one resumed from.

When the file itself cannot be written the run fails with an ``OSError`` that names it and says why in plain words
(``MetricsFile 'MetricsFile': runs/x/metrics.json could not be written: no space left on device (0 bytes free on
/mnt)``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callbacks.helpers import output_dir
from lifecycle import Callback, Priority, Status
from trainers.checkpoint.atomic import atomic_write
from trainers.checkpoint.disk_space import describe_full_disk

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["MetricsFile"]


class MetricsFile(Callback):
    """Write the run's final and best metrics, time and checkpoint paths to a JSON file.

    Args:
        path: the file; relative paths are under ``trainer.run_dir`` (default ``metrics.json``).
    """

    priority = Priority.FINAL
    rank_zero_only = True  # one writer: rank 0 of a distributed job

    def __init__(
        self,
        path: str | os.PathLike[str] = "metrics.json",
        *,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise ValueError(f"MetricsFile {self.state_key!r}: path must be a file name, got {path!r}")
        self.path = Path(path)
        self._started = 0.0
        self._before = 0.0  # seconds of the runs this one resumed from

    def setup(self, trainer: BaseTrainer) -> None:
        if not self.path.is_absolute():
            self.path = output_dir(self, None, trainer, "") / self.path

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._started = time.perf_counter()

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        state = trainer.state
        seconds = time.perf_counter() - self._started
        numbers = {
            k: (v if math.isfinite(v) else None)
            for k, v in ((k, float(v)) for k, v in state.metrics.items() if _is_number(v))
        }
        report = {
            "status": str(status),
            "iterations": state.iteration,
            "epochs": state.epoch,
            "seconds": round(seconds, 3),
            "seconds_total": round(seconds + self._before, 3),
            "final": {k: v for k, v in numbers.items() if k.startswith("val/")},
            "best": {k: v for k, v in numbers.items() if k.startswith("best/")},
            "metrics": numbers,
            "checkpoints": {role: str(saved.path) for role, saved in state.saved_checkpoints().items()},
            "failed_writes": dict(sorted(state.failed_writes.items())),
        }
        text = (json.dumps(report, indent=2, sort_keys=False) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: f.write(text), durable=True)
        except OSError as exc:
            words = describe_full_disk(exc, self.path) or exc.strerror or str(exc)
            where = f"MetricsFile {self.state_key!r}: {self.path} could not be written"
            raise (OSError(exc.errno, f"{where}: {words}") if exc.errno else OSError(f"{where}: {words}")) from exc

    def state_dict(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        return {"seconds": self._before + elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._before = float(state.get("seconds", 0.0))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
