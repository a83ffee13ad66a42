"""``WandbLogger``: the same metrics as the TensorBoard logger, as a Weights & Biases run -- offline by default.

Events used: ``pre_training`` (``wandb.init`` with the resolved config; a resumed run continues the same run id with
``resume="allow"``), ``post_step`` on an iteration or time schedule (the window means of the step outputs from
``MetricFlow.of(trainer)`` -- one host copy per row -- plus the numbers callbacks published, e.g. ``lr``),
``post_epoch`` (``epoch/*``, ``time/epoch_s``; with an epoch schedule such as ``"1ep"`` only on it, with the published
numbers and no step rows at all), ``post_validation`` (that validation's ``metrics`` and ``best`` values, and its
images as ``wandb.Image`` under the validator's prefix), ``exception`` (a failure inside ``post_training`` still
finishes the run) and ``post_training`` at priority ``FINAL`` -- after the checkpointer's end save, so the final
checkpoint can be logged as an artifact -- which writes the summary and calls ``finish`` with an exit code that
reflects the status (0 completed or stopped, ``128 + signal`` interrupted, 1 failed). Every row's step is
``state.iteration``; the rows written at one iteration (step values, epoch means, validation) merge into one.
Values given to ``trainer.log(name, value)`` are logged when logged, at that iteration: numbers and one-element
tensors as numbers, ``HxWxC`` tensors as ``wandb.Image``, strings as text, lists of dicts as a ``wandb.Table`` (see
:mod:`callbacks.loggers.backend`).

It never prompts and never blocks: ``mode`` defaults to ``"offline"`` (upload later with ``wandb sync``), and
``mode="online"`` without credentials is refused when the logger is added, with what to do, instead of the login
prompt ``wandb.init`` would show on a terminal. Rows are logged on the logger's own thread (``background=True``, the
default; :mod:`callbacks.loggers.background`). A backend failure follows ``on_error`` like the TensorBoard logger.

W&B's service writes the run file in a process of its own and tells Python nothing when a write fails (a full disk):
so at each epoch's end, and after ``finish``, the logger looks at the run's files for such a failure
(:mod:`callbacks.loggers.wandb_health`) and reports the first one once, through ``on_error`` and in plain words
(``could not write the run file run-x.wandb in .../offline-run-...: no space left on device (0 bytes free on
/mnt)``); it counts as one failed write. A failure found only after ``finish`` comes after the summaries written at
the same ``post_training`` (the progress display's, ``metrics.json``) when they were added before this logger.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from callbacks.helpers import output_dir
from callbacks.loggers.backend import BackendLogger, image_prefix
from callbacks.loggers.failure_policy import BackendGuard, OnError, require_package
from callbacks.loggers.logged import Kind, pixels, scalar, table_rows
from callbacks.loggers.wandb_ends import check_credentials, exit_code_of
from callbacks.loggers.wandb_health import RunFileWatch
from lifecycle import Event, Phase, Priority, ScheduleSpec, Status

if TYPE_CHECKING:  # pragma: no cover
    from wandb import Run

    from trainers.engine.trainer import BaseTrainer

__all__ = ["WandbLogger"]

_log = logging.getLogger("stepbus.wandb")
Mode = Literal["offline", "online", "disabled"]
_MODES: tuple[str, ...] = ("offline", "online", "disabled")
_ID_ALPHABET = string.ascii_lowercase + string.digits
#: how long ``finish`` waits for W&B's service to write the run's exit record: milliseconds as a rule, seconds on
#: a loaded machine, and a healthy run is not to be reported as incomplete (only a lost one waits this long)
FINISH_TIMEOUT = 30.0


class WandbLogger(BackendLogger):
    """Log the run to Weights & Biases -- offline by default, and never prompting -- with the same metrics as the
    TensorBoard logger, and optionally the final and best checkpoints as artifacts.

    Args:
        project: the W&B project.
        name: the run's display name; W&B picks one when ``None``.
        dir: where W&B writes (it adds ``wandb/``); ``None`` for ``trainer.run_dir``.
        mode: ``"offline"`` (default), ``"online"`` (only when asked; needs ``wandb login`` or ``WANDB_API_KEY``)
            or ``"disabled"`` (W&B's no-op mode).
        every: the schedule of the step rows (``"50it"``, ``"10min"``, ``"never"``), or of the epoch rows when it
            counts epochs (``"1ep"``: epoch means only, no step rows); validation values come at their event.
        log_images: log validation images as ``wandb.Image``.
        log_checkpoint: log the run's final checkpoint (``state.last_checkpoint``, published by the
            checkpointer) as a ``model`` artifact at the end, plus the best one (alias ``best``) when it differs.
        id: the run id; ``None`` for a new random one, or the id saved in the checkpoint when resuming.
        entity, group, tags, notes: passed to ``wandb.init``.
        settings: extra ``wandb.Settings`` fields (``silent=True`` and ``console="off"`` are the defaults here, so
            W&B does not write over the progress display).
        on_error: ``"disable"`` (default), ``"warn"`` or ``"raise"`` for a backend failure during the run.
    """

    priority = Priority.LOGGING
    accepts_tables = True

    def __init__(
        self,
        project: str = "stepbus",
        *,
        name: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        mode: Mode = "offline",
        every: ScheduleSpec = "50it",
        log_images: bool = True,
        log_checkpoint: bool = False,
        id: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        settings: Mapping[str, Any] | None = None,
        background: bool = True,
        on_error: OnError = "disable",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key, background=background)
        owner = self.owner
        if mode not in _MODES:
            raise ValueError(f"{owner}: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
        for label, flag in (("log_images", log_images), ("log_checkpoint", log_checkpoint)):
            if not isinstance(flag, bool):
                raise ValueError(f"{owner}: {label} must be true or false, got {flag!r}")
        for label, text in (("project", project), ("name", name), ("entity", entity), ("group", group)):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"{owner}: {label} must be a non-empty string, got {text!r}")
        if id is not None and (not isinstance(id, str) or not id or any(c in id for c in "/\\:?#%")):
            raise ValueError(f"{owner}: id must be a non-empty string without / \\ : ? # %, got {id!r}")
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{owner}: tags must be a list of strings, got {tags!r}")
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"{owner}: settings must be a mapping of wandb.Settings fields, got {settings!r}")
        self.project, self.name, self.mode = project, name, mode
        self.directory = Path(dir) if dir is not None else None
        self.log_images, self.log_checkpoint = log_images, log_checkpoint
        self.entity, self.group, self.tags, self.notes = entity, group, tuple(tags), notes
        self.settings = dict(settings or {})
        self.on_error = on_error
        self._guard = BackendGuard(owner, on_error, _log, lambda: self.directory)
        self._given_id = id
        self.run_id: str | None = id  #: the W&B run id (kept in the checkpoint, so a resume continues the run)
        self.run: Run | None = None  #: the open ``wandb`` run, between ``pre_training`` and ``post_training``
        self.sync_dir: Path | None = None  #: the last run's local directory (``<dir>/wandb/offline-run-...``)
        self._watch: RunFileWatch | None = None  # the open run's files, watched for a write W&B could not make
        self._write_failed = False  # a failed write of the run file was reported (once per run)

    def priority_of(self, event: Event) -> int:
        # the end: after the checkpointer's final save (the artifact) and the other loggers
        return Priority.FINAL if event is Event.POST_TRAINING else self.priority

    def setup(self, trainer: BaseTrainer) -> None:
        require_package("wandb", "wandb", self.owner)
        self.directory = output_dir(self, self.directory, trainer, "")
        if self.mode == "online":
            check_credentials(self.owner)
        super().setup(trainer)

    def teardown(self, trainer: BaseTrainer) -> None:
        super().teardown(trainer)
        self._finish(None, exit_code=0)  # removed mid-run: the run ends here rather than at interpreter exit

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, *, resumed: bool = False, **payload: Any) -> None:
        self.open_rows(trainer)
        if self.run_id is None:
            self.run_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
        state = trainer.state
        config: dict[str, Any] = dict(trainer.config or {})
        config.setdefault("max_epochs", state.max_epochs)
        config.setdefault("iterations_per_epoch", state.iterations_per_epoch)

        def start() -> None:
            import wandb

            directory = self.directory
            assert directory is not None  # set by setup
            directory.mkdir(parents=True, exist_ok=True)  # wandb warns about a git root that does not exist yet
            settings: dict[str, Any] = {"silent": True, "console": "off", **self.settings}
            self.run = wandb.init(
                project=self.project,
                name=self.name,
                dir=str(directory),
                mode=self.mode,
                id=self.run_id,
                resume="allow",
                config=config,
                entity=self.entity,
                group=self.group,
                tags=list(self.tags) or None,
                notes=self.notes,
                reinit="create_new",  # two trainers, two runs; never the global wandb.run of someone else
                settings=wandb.Settings(**settings),
            )
            run_settings = self.run.settings
            sync_dir = getattr(run_settings, "sync_dir", None) if self.mode != "disabled" else None
            self.sync_dir = Path(sync_dir) if sync_dir else None  # "disabled": W&B writes nothing
            sync_file = getattr(run_settings, "sync_file", None) if self.sync_dir is not None else None
            service_log = getattr(run_settings, "log_internal", None)
            self._write_failed = False
            self._watch = (
                RunFileWatch(Path(sync_file), Path(service_log) if service_log else None) if sync_file else None
            )
            where = self.run.url if self.mode == "online" else self.sync_dir  # .url warns when offline
            _log.info("W&B run %s (%s%s): %s", self.run_id, self.mode, ", resumed" if resumed else "", where)

        self._run("start the run", start)

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        values = self.step_row(trainer) if self.run is not None else None
        if values is not None:
            self._row(values, trainer.state.iteration)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self.run is None:
            return
        self._row(self.epoch_row(trainer), trainer.state.iteration)
        if self._drain():
            self._check_run_file(final=False)

    def post_validation(
        self,
        trainer: BaseTrainer,
        *,
        metrics: Mapping[str, float],
        best: Mapping[str, float] | None = None,
        images: Mapping[str, Any] | None = None,
        prefix: str | None = None,
        **payload: Any,
    ) -> None:
        run = self.run
        if run is None:
            return
        step = trainer.state.iteration
        values: dict[str, Any] = self.validation_values(metrics, best)  # this validation's values, no other's
        if self.log_images and images:
            import wandb

            folder = image_prefix(prefix, metrics)

            def convert() -> None:
                for name, image in images.items():
                    values[f"{folder}/{name}"] = wandb.Image(pixels(image, str(name)), caption=f"iteration {step}")

            self._run("convert images", convert)
        self._row(values, step)

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        # a failure inside post_training: no post_training follows, so this is the last chance to end the run
        if trainer.phase is Phase.FINISHING:
            self._finish(trainer, exit_code=1, status=Status.FAILED)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self._finish(trainer, exit_code=exit_code_of(status, trainer.interrupted_by), status=status)

    # ------------------------------------------------------------------ helpers
    def _finish(self, trainer: BaseTrainer | None, *, exit_code: int, status: Status | None = None) -> None:
        if self.run is not None:
            self._drain(close=True)
        run, self.run = self.run, None
        if run is None:
            return
        if self._guard.raised:  # a failure of this logger failed the run: end the W&B run, raise nothing more
            self._watch = None
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:  # noqa: BLE001 - the failure that ended the run was already raised
                _log.debug("WandbLogger %r: finish after a failure also failed: %s", self.state_key, exc)
            return

        def end() -> None:
            try:
                if trainer is not None:
                    state = trainer.state
                    summary: dict[str, Any] = self.final_numbers(trainer)
                    summary.update(iterations=state.iteration, epochs=state.epoch, exit_code=exit_code)
                    if status is not None:
                        summary["status"] = str(status)
                    for role, saved in state.saved_checkpoints().items():
                        summary[f"checkpoint/{role}"] = str(saved.path)
                    run.summary.update(summary)
                    if self.log_checkpoint:
                        self._log_checkpoints(run, trainer, status)
            finally:
                run.finish(exit_code=exit_code)

        self._run("finish the run", end)
        self._check_run_file(final=True)
        self._watch = None

    def _check_run_file(self, *, final: bool) -> None:
        """Report, once, a write of the run file that W&B's service could not make (see the module docstring)."""
        watch = self._watch
        if watch is None or self._write_failed or self._guard.disabled:
            return
        failure = watch.finished(FINISH_TIMEOUT) if final else watch.failure()
        if failure is None:
            return
        self._write_failed = True
        what = f"write the run file {watch.run_file.name}"
        self._guard.fail(what, failure, where=watch.run_file.parent)
        if self._guard.disabled:
            self._disabled_now()

    def _log_checkpoints(self, run: Run, trainer: BaseTrainer, status: Status | None) -> None:
        import wandb

        state = trainer.state
        last, best = state.last_checkpoint, state.best_checkpoint
        if last is None:
            _log.warning(
                "WandbLogger %r: log_checkpoint=True but no checkpoint was published (add a Checkpointer); "
                "no artifact logged",
                self.state_key,
            )
            return
        files: dict[str, Path] = {}
        if best is not None:
            files["best"] = best.path.resolve()
        files["last"] = last.path.resolve()  # logged last: W&B gives "latest" to the newest version logged
        same = files.get("best") == files["last"]
        for role, path in files.items():
            if role == "best" and same:
                continue
            aliases = ["latest", "last", "best"] if same else (["latest", "last"] if role == "last" else ["best"])
            artifact = wandb.Artifact(
                f"checkpoint-{run.id}",
                type="model",
                metadata={"iteration": state.iteration, "epoch": state.epoch, "status": str(status), "role": role},
            )
            artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact, aliases=aliases)

    def _is_open(self) -> bool:
        return self.run is not None

    def _write_logged(self, name: str, kind: Kind, value: Any, step: int) -> None:
        logged: list[Any] = []

        def convert() -> None:  # on the training thread: the step may change a tensor after it was logged
            import wandb

            if kind == "scalar":
                logged.append(scalar(value))
            elif kind == "image":
                logged.append(wandb.Image(pixels(value, name), caption=f"iteration {step}"))
            elif kind == "table":
                columns, rows = table_rows(value) or ([], [])
                header: list[str | int] = list(columns)  # wandb's annotation; the names are strings
                logged.append(wandb.Table(columns=header, data=rows))
            else:
                logged.append(str(value))

        self._run(f"log {name!r}", convert)
        if logged:
            self._row({name: logged[0]}, step)

    def _row(self, values: Mapping[str, Any], step: int) -> None:
        run = self.run
        if run is None or not values:
            return
        row = dict(values)
        self._write("log", lambda: run.log(row, step=step))

    def _disabled_now(self) -> None:
        """The logger was just disabled: end its run, if one is open, as failed."""
        run, self.run = self.run, None
        self._watch = None
        if run is None:
            return
        try:
            run.finish(exit_code=1)
        except Exception as exc:  # noqa: BLE001 - the failure that disabled the logger was already reported
            _log.debug("WandbLogger %r: finish after a failure also failed: %s", self.state_key, exc)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("run_id")
        if self._given_id is None and isinstance(saved, str):
            self.run_id = saved  # an explicit id= wins over the checkpoint's
        super().load_state_dict(state)
