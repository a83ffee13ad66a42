"""``Checkpointer``: save resumable checkpoints on a schedule, at the end, on request and on interrupt; keep the
last few and the best few; maintain ``last.pt`` and ``best.pt``.

At the start of a run, right after the engine locked the run's directories and before any event (the
``trainers.engine.directory_locks.CLAIM`` request, on rank 0), it refuses a directory that holds another run's
checkpoints -- nothing of this run is written then, every rank raises the ``CheckpointError`` -- removes temporary
files a killed process left (only under the lock, so no other writer is alive, and never a live process's: see
``trainers.checkpoint.run_lock``) and points the links. Events used: the periodic event of its schedule
(``post_step`` or ``post_epoch``), ``post_epoch`` (a step-schedule save that falls on an epoch's last step is taken
after that epoch's ``post_epoch``, the only resumable point there), ``post_training`` (the final save) and
``exception`` (an optional, non-resumable crash dump; none with FSDP). It serves ``"checkpoint"`` requests
(``trainer.request_checkpoint()``) and ``"interrupt"`` requests (SIGINT/SIGTERM during ``train()``: the save
happens after the current step, before the cut-short epoch's ``post_epoch``).

Files, in ``dir`` (default ``<run_dir>/checkpoints``): ``step-<iteration>.pt``, written atomically (see
``trainers.checkpoint.format``; with ``strategy="fsdp"`` a directory of that name: ``trainers.checkpoint.sharded``);
``last.pt`` and ``best.pt``, symbolic links (hard links where symlinks are unavailable) replaced atomically and only
after the file they name is durable. Retention keeps the ``keep_last`` newest and the ``keep_best`` best-scoring
files and deletes the rest only after the links were moved, so a link never dangles. Which files it owns is part
of its state, saved in every checkpoint: files it does not know (another run's, or the abandoned future of a resume
from an older checkpoint) are never deleted.

In a distributed run it runs on every rank, because a save is a collective (``trainer.save_checkpoint``: every rank
hands its RNG state to rank 0, rank 0 writes, every rank learns the outcome); only rank 0 touches the directory
(links, retention, leftovers, the crash dump), and its verdict on the directory at the start is every rank's.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callbacks.checkpoint_files import Saved, ranked, retention
from callbacks.helpers import output_dir, parse_schedule, periodic_event
from callbacks.metrics import Mode, as_scalar, monitor_mode
from lifecycle import Callback, Event, HandlerSpec, Priority, Schedule, ScheduleSpec, State, Status
from trainers.checkpoint.atomic import atomic_link, fsync_directory, remove_checkpoint, remove_dead_temporaries
from trainers.checkpoint.format import CheckpointError, EarlierRunCheckpoints, list_checkpoints
from trainers.engine.directory_locks import CLAIM

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["Checkpointer"]

_log = logging.getLogger("stepbus.checkpointer")
_TEMPORARY = r"step-\d+\.pt|last\.pt|best\.pt|crash-\d+\.pt"  # the final names of its temporary files


class Checkpointer(Callback):
    """Save resumable checkpoints; keep the last ``keep_last`` and the best ``keep_best``.

    Args:
        dir: where checkpoints go; ``None`` for ``<trainer.run_dir>/checkpoints``.
        every: a schedule (``"1ep"``, ``"500it"``, ``"10min"``, ``at=[...]``), or ``None`` for no periodic saves.
        at_end: save when the run completes or is stopped.
        on_interrupt: save when SIGINT/SIGTERM interrupts ``train()`` (after the current step).
        on_exception: when the run fails, write ``crash-<iteration>.pt`` with the state at the failure (not
            resumable -- the failure may be mid-step -- but loadable for inspection); never counted or linked.
        keep_last: how many of the newest checkpoints to keep (>= 1), or ``None`` for all.
        monitor: the ``state.metrics`` key that scores a checkpoint (``"val/psnr"``): its latest value at save time.
        mode: ``"max"`` or ``"min"``; inferred for known metric names (psnr, ssim: max; loss, mse: min).
        keep_best: how many of the best-scoring checkpoints to keep; 1 by default with ``monitor``, else 0.
        on_error: ``"raise"`` (default: a failed save fails the run, whose earlier checkpoints are intact) or
            ``"warn"`` (log the failure and keep training).
    """

    priority = Priority.CHECKPOINT

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        *,
        every: ScheduleSpec = "1ep",
        at_end: bool = True,
        on_interrupt: bool = True,
        on_exception: bool = False,
        keep_last: int | None = 3,
        monitor: str | None = None,
        mode: Mode | None = None,
        keep_best: int | None = None,
        on_error: Literal["raise", "warn"] = "raise",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = f"Checkpointer {self.state_key!r}"
        self._schedule: Schedule | None = None if every is None else parse_schedule(every, name)
        for flag, value in (("at_end", at_end), ("on_interrupt", on_interrupt), ("on_exception", on_exception)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: {flag} must be true or false, got {value!r}")
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"{name}: keep_last must be an int >= 1 or None (keep all), got {keep_last!r}")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"{name}: monitor must be a metric name such as 'val/psnr', got {monitor!r}")
        if keep_best is None:
            keep_best = 1 if monitor else 0
        if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
            raise ValueError(f"{name}: keep_best must be an int >= 0, got {keep_best!r}")
        if keep_best and monitor is None:
            raise ValueError(f"{name}: keep_best={keep_best} needs monitor='<metric>' to rank checkpoints by")
        if monitor is not None:
            mode = monitor_mode(monitor, mode, name)
        if on_error not in ("raise", "warn"):
            raise ValueError(f"{name}: on_error must be 'raise' or 'warn', got {on_error!r}")
        self.directory = Path(dir) if dir is not None else None
        self.at_end, self.on_interrupt, self.on_exception = at_end, on_interrupt, on_exception
        self.keep_last, self.keep_best = keep_last, keep_best
        self.monitor, self.mode, self.on_error = monitor, mode, on_error
        self._files: list[Saved] = []  # every file written and not yet deleted, in write order
        self._loaded_dir: str | None = None
        self._due = False  # a step-schedule save fell on an epoch's last step: take it after post_epoch
        self._saved_iteration: int | None = None  # the iteration of this process's latest save
        self._failed = False
        self._warned_monitor = False
        self._unserve: list[Any] = []
        self._trainer_state: State | None = None  # where the saved files are published (state.last_checkpoint)
        #: the newest checkpoint written and the best-scoring one, once there are such files
        self.last_path: Path | None = None
        self.best_path: Path | None = None
        #: saves that failed under ``on_error="warn"``
        self.failures = 0

    # ------------------------------------------------------------------ wiring
    @property
    def checkpoint_dir(self) -> Path | None:
        """The directory this checkpointer writes to (known once it is added to a trainer)."""
        return self.directory

    def handlers(self) -> Iterator[HandlerSpec]:
        if self._schedule is not None:
            yield periodic_event(self._schedule), self._on_schedule, self._schedule
        yield Event.POST_EPOCH, self._after_epoch, None
        yield Event.POST_TRAINING, self.post_training, None
        yield Event.EXCEPTION, self.exception, None

    def setup(self, trainer: BaseTrainer) -> None:
        self._trainer_state = trainer.state
        self.directory = output_dir(self, self.directory, trainer, "checkpoints")
        name = f"{self.state_key}.request"
        self._unserve = [
            trainer.serve("checkpoint", self._on_request, name=name),
            trainer.serve(f"{self.state_key}.schedule", self._on_scheduled_request, name=f"{self.state_key}.schedule"),
        ]
        if self.on_interrupt:
            self._unserve.append(trainer.serve("interrupt", self._on_interrupt, name=name))
        self._unserve.append(trainer.serve(CLAIM, self._claim, name=f"{self.state_key}.claim"))

    def teardown(self, trainer: BaseTrainer) -> None:
        for remove in self._unserve:
            remove()
        self._unserve = []

    # ------------------------------------------------------------------ events
    def _claim(self, trainer: BaseTrainer) -> None:
        """Served at the start of a run, on rank 0 with the directories locked, before ``pre_training``: a refusal
        here leaves every file untouched (no ``config.yaml``, logger or ``metrics.json`` of this run is written)."""
        self._check_directory(trainer)

    def _check_directory(self, trainer: BaseTrainer) -> None:
        """Remove a killed process's temporary files (this process holds the directory's lock: no other writer of
        it is alive); refuse another run's checkpoints; point the links."""
        directory = self._dir()
        remove_dead_temporaries(directory, _TEMPORARY)  # left by a process killed mid-write
        existing = list_checkpoints(directory)
        if self._loaded_dir is not None and self._loaded_dir != str(directory):
            self._files = []  # the state came from a run in another directory: its files are not ours
        known = {saved.name for saved in self._files}
        self._files = [saved for saved in self._files if (directory / saved.name).exists()]
        strangers = [f for f in existing if f.path.name not in known]
        if strangers and trainer.resumed_from is None:
            newest = strangers[0]
            raise EarlierRunCheckpoints(
                directory,
                f"holds {len(strangers)} checkpoint(s) of an earlier run (newest {newest.path.name}, iteration "
                f"{newest.iteration}); continue that run with trainer.restore('auto') (stepbus train --resume auto), "
                "or move them away or choose another directory -- nothing was overwritten",
            )
        if strangers:
            ahead = [f.path.name for f in strangers if f.iteration > trainer.state.iteration]
            if ahead:
                _log.warning(
                    "Checkpointer %r: %s holds checkpoints beyond the resume point (%s); they are not this run's "
                    "and are never deleted by it, but a save at the same iteration replaces them",
                    self.state_key,
                    directory,
                    ", ".join(sorted(ahead)),
                )
        self._refresh_links(directory)

    def _on_schedule(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.post_epoch_pending:
            self._due = True  # post_epoch is pending: the resumable point is after it
            return
        if trainer.state.mid_window:  # an accumulation window is open: saved where it ends
            trainer.request(f"{self.state_key}.schedule")
            return
        self._save(trainer, "schedule")

    def _after_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._due:
            self._due = False
            self._save(trainer, "schedule")

    def _on_scheduled_request(self, trainer: BaseTrainer) -> None:
        self._save(trainer, "schedule")

    def _on_request(self, trainer: BaseTrainer) -> None:
        self._save(trainer, "request", force=True)

    def _on_interrupt(self, trainer: BaseTrainer) -> None:
        if not self._failed:
            self._save(trainer, "interrupt")

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self._due = False
        if self._failed:
            return
        if (status is Status.COMPLETED or status is Status.STOPPED) and self.at_end:
            # always written, even where the schedule just saved this iteration: post_training handlers above
            # this one (a final validation) may have changed state since, and this is the run's final word
            self._save(trainer, f"end ({status})", force=True)

    def exception(self, trainer: BaseTrainer, *, error: BaseException, **payload: Any) -> None:
        self._failed = True
        if not self.on_exception or not trainer.is_global_zero:
            return  # in a job, rank 0 writes the crash dump (no collective on a failure path: a peer may be gone)
        path = self._dir() / f"crash-{trainer.state.iteration:08d}.pt"
        try:
            trainer.save_checkpoint(path, reason=f"exception: {type(error).__name__}: {error}"[:500], resumable=False)
        except Exception as exc:  # noqa: BLE001 - a crash dump must never hide the error being handled
            _log.error("Checkpointer %r: could not write the crash dump %s: %s", self.state_key, path, exc)
        else:
            _log.warning("Checkpointer %r: wrote the state at the failure to %s", self.state_key, path)

    # ------------------------------------------------------------------ saving
    def save(self, trainer: BaseTrainer) -> Path | None:
        """Save now (between ``iterate()`` calls, e.g. from a GUI); returns the file, or ``None`` when the save
        failed under ``on_error="warn"``. Outside a run the directory is locked for the save (``RunDirectoryBusy``
        when another process holds it)."""
        with trainer.holding_directories():
            return self._save(trainer, "manual", force=True)

    def _save(self, trainer: BaseTrainer, reason: str, *, force: bool = False) -> Path | None:
        iteration = trainer.state.iteration
        if not force and self._saved_iteration == iteration:
            return self.last_path  # the same position was just saved (e.g. by the schedule, then at the end)
        directory = self._dir()
        name = f"step-{iteration:08d}.pt"
        entry = Saved(name, iteration, self._score(trainer), reason)
        before = list(self._files)
        candidates = [saved for saved in self._files if saved.name != name] + [entry]
        # the checkpoint records the files that remain after its own retention, so it never claims a file that
        # is deleted right after it is written (and a later resume from it can never delete a stranger's file)
        self._files, doomed = retention(
            directory, candidates, keep_last=self.keep_last, keep_best=self.keep_best, mode=self.mode
        )
        try:
            path = trainer.save_checkpoint(directory / name, reason=reason, metadata={"score": entry.score})
        except CheckpointError as exc:
            self._files = before
            if self.on_error == "raise":
                raise
            self.failures += 1
            trainer.state.count_failed_write(self.state_key)  # reported by the run's summary and metrics.json
            _log.error(
                "Checkpointer %r: save at iteration %d failed; training goes on: %s",
                self.state_key,
                iteration,
                exc,
            )
            return None
        self._saved_iteration = iteration
        if trainer.is_global_zero:
            self._refresh_links(directory)
            self._delete(directory, doomed)
        else:  # rank 0 maintains the links and deletes; this rank knows the file
            self.last_path = path
            if self._trainer_state is not None:
                self._trainer_state.last_checkpoint = entry.published(path)
        return path

    def _score(self, trainer: BaseTrainer) -> float | None:
        if self.monitor is None:
            return None
        metrics = trainer.state.metrics
        value = as_scalar(metrics.get(self.monitor))
        if value is None and not self._warned_monitor:
            # a validator published its group (val/...) but not this key: most likely a typo
            prefix = self.monitor.rpartition("/")[0]
            siblings = sorted(k for k in metrics if isinstance(k, str) and prefix and k.startswith(prefix + "/"))
            if siblings:
                self._warned_monitor = True
                close = difflib.get_close_matches(self.monitor, siblings, n=1)
                _log.warning(
                    "Checkpointer %r: monitor %r is not published (%s are)%s; checkpoints cannot be ranked as best",
                    self.state_key,
                    self.monitor,
                    ", ".join(siblings),
                    f"; did you mean {close[0]!r}?" if close else "",
                )
        if value is None or not math.isfinite(value):
            return None
        return value

    def _refresh_links(self, directory: Path) -> None:
        if not self._files:
            return
        last = self._files[-1]
        self.last_path = self._link(directory, "last.pt", last.name)
        best = ranked(self._files, self.mode) if self.keep_best else []
        if best:
            self.best_path = self._link(directory, "best.pt", best[0].name)
        # for loggers, progress displays and summaries (callbacks cooperate through the trainer's state)
        state = self._trainer_state
        if state is not None:
            state.last_checkpoint = last.published(self.last_path)
            if best and self.best_path is not None:
                state.best_checkpoint = best[0].published(self.best_path)

    def _link(self, directory: Path, link: str, target: str) -> Path:
        try:
            atomic_link(directory, link, target)
        except OSError as exc:
            _log.warning("Checkpointer %r: could not point %s at %s: %s", self.state_key, directory / link, target, exc)
        return directory / target

    def _delete(self, directory: Path, doomed: list[Saved]) -> None:
        removed = False
        for saved in doomed:
            try:
                remove_checkpoint(directory / saved.name)  # a file, or a sharded checkpoint's directory
                removed = True
            except OSError as exc:
                _log.warning("Checkpointer %r: could not delete %s: %s", self.state_key, saved.name, exc)
                self._files.insert(0, saved)  # still on disk, still ours
        if removed:
            fsync_directory(directory)

    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError(f"Checkpointer {self.state_key!r} is not added to a trainer")
        return self.directory

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory) if self.directory is not None else None,
            "files": [saved.as_list() for saved in self._files],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        files = state.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, list) and len(f) == 3 for f in files):
            raise ValueError(f"expected 'files' as a list of [name, iteration, score], got {files!r}")
        self._loaded_dir = state.get("directory")
        self._files = [
            Saved(str(name), int(it), None if score is None else float(score), "restored") for name, it, score in files
        ]
        self._saved_iteration = None
        self._failed = False
