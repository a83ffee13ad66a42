"""``MLflowLogger``: the same metrics as the TensorBoard and W&B loggers, as an MLflow run.

Events used: ``pre_training`` (opens the run through an ``MlflowClient`` of its own -- never MLflow's global active
run, so two trainers in one process keep two runs -- in the experiment ``experiment``: a new run with the resolved
config as params and as the ``config.json`` artifact, or, after a resume, the run whose id the checkpoint kept, set
back to ``RUNNING``), ``post_step`` on an iteration or time schedule (the window means of the step outputs from
``MetricFlow.of(trainer)`` -- one host copy per row -- plus the numbers callbacks published, e.g. ``lr``; one
``log_batch`` per row), ``post_epoch`` (``epoch/*``, ``time/epoch_s``; with an epoch schedule such as ``"1ep"`` only
on it, with the published numbers and no step rows at all), ``post_validation`` (that validation's ``metrics`` and
``best`` values, and its images as PNG artifacts ``images/<prefix>/<name>/step-<iteration>.png``), ``exception`` (a
failure inside ``post_training`` still ends the run as failed) and ``post_training`` at priority ``FINAL`` -- after
the checkpointer's end save -- which sets the ``stepbus.*`` tags (status, iterations, epochs, checkpoint paths), logs
the best checkpoint (else the last) under ``checkpoint/`` with ``log_checkpoint=True``, and ends the run with the
status that matches the training's: ``FINISHED`` for completed or stopped, ``KILLED`` for interrupted, ``FAILED``
for failed. Every metric's step is ``state.iteration``. Values given to ``trainer.log(name, value)`` are logged when
logged: numbers and one-element tensors as metrics, ``HxWxC`` tensors as PNG artifacts ``images/<name>/...``,
strings as text artifacts ``text/<name>/step-<iteration>.txt`` (see :mod:`callbacks.loggers.backend`).

Exactly once across a resume: a killed process may have logged steps beyond its last checkpoint, and MLflow cannot
delete a metric point; so a run that is continued first reads back the last step it has per key and skips every
value at or before it (:mod:`callbacks.loggers.mlflow_store`, which also holds the store, params and URI rules).
Artifacts are written at fixed paths, so one written twice is the same file. A backend failure (a store that cannot
be created or reached) follows ``on_error`` like the other loggers. Metrics and artifacts are logged on the logger's
own thread (``background=True``, the default; :mod:`callbacks.loggers.background`), flushed at each epoch's end.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callbacks.helpers import output_dir
from callbacks.images import encode_png
from callbacks.loggers import mlflow_store as store
from callbacks.loggers.backend import BackendLogger, image_prefix
from callbacks.loggers.failure_policy import BackendGuard, OnError, require_package
from callbacks.loggers.logged import Kind, scalar
from lifecycle import Event, Phase, Priority, ScheduleSpec, Status

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from trainers.engine.trainer import BaseTrainer

__all__ = ["RUN_STATUS", "MLflowLogger"]

_log = logging.getLogger("stepbus.mlflow")

#: the MLflow run status each training status ends the run with
RUN_STATUS: dict[Status, str] = {
    Status.COMPLETED: "FINISHED",
    Status.STOPPED: "FINISHED",
    Status.INTERRUPTED: "KILLED",
    Status.FAILED: "FAILED",
}


class MLflowLogger(BackendLogger):
    """Log the run to MLflow -- by default into an SQLite store in ``<run_dir>/mlruns`` -- with the same metrics as
    the TensorBoard logger, the config as params, validation images as artifacts, and optionally the best checkpoint.

    Args:
        experiment: the MLflow experiment (created when the store has none of that name).
        run_name: the run's name; ``None`` for the name of ``trainer.run_dir`` (MLflow picks one without it).
        tracking_uri: where to log (``sqlite:///path/mlflow.db``, ``http://host:5000``, ...); ``None`` for the
            default SQLite store in ``dir``. A ``file:`` URI needs ``MLFLOW_ALLOW_FILE_STORE=true`` (MLflow 3).
        dir: the folder of the default store (``mlflow.db`` and ``artifacts/``); ``None`` for ``<run_dir>/mlruns``.
            Not with ``tracking_uri``.
        every: the schedule of the step rows (``"50it"``, ``"10min"``, ``"never"``), or of the epoch rows when it
            counts epochs (``"1ep"``: epoch means only, no step rows); validation values come at their event.
        log_images: log validation images as PNG artifacts.
        log_checkpoint: log the best checkpoint (``state.best_checkpoint``, else ``state.last_checkpoint``,
            published by the checkpointer) as an artifact at the end.
        run_id: continue this existing run; ``None`` for a new run, or the id saved in the checkpoint when resuming.
        tags: run tags (name -> text).
        on_error: ``"disable"`` (default), ``"warn"`` or ``"raise"`` for a backend failure during the run.
    """

    priority = Priority.LOGGING

    def __init__(
        self,
        experiment: str = "stepbus",
        *,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        every: ScheduleSpec = "50it",
        log_images: bool = True,
        log_checkpoint: bool = False,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        background: bool = True,
        on_error: OnError = "disable",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, every=every, state_key=state_key, background=background)
        owner = self.owner
        for label, flag in (("log_images", log_images), ("log_checkpoint", log_checkpoint)):
            if not isinstance(flag, bool):
                raise ValueError(f"{owner}: {label} must be true or false, got {flag!r}")
        for label, text in (("experiment", experiment), ("run_name", run_name)):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"{owner}: {label} must be a non-empty string, got {text!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id.isalnum()):
            raise ValueError(f"{owner}: run_id must be an MLflow run id (letters and digits), got {run_id!r}")
        if tracking_uri is not None:
            store.check_tracking_uri(tracking_uri, owner)
            if dir is not None:
                raise ValueError(
                    f"{owner}: dir={str(dir)!r} is the folder of the default store and tracking_uri={tracking_uri!r} "
                    "names another store; give one of them"
                )
        self.tags = store.checked_tags(tags, owner)
        self.experiment, self.run_name = experiment, run_name
        self.tracking_uri = tracking_uri  #: the store logged to (the default store's URI once added to a trainer)
        self.directory = Path(dir) if dir is not None else None
        self.log_images, self.log_checkpoint, self.on_error = log_images, log_checkpoint, on_error
        self._guard = BackendGuard(owner, on_error, _log, lambda: self.tracking_uri or self.directory)
        self._default_store = tracking_uri is None  # the SQLite store in dir (or <run_dir>/mlruns)
        self._given_id = run_id
        self.run_id: str | None = run_id  #: the MLflow run id (kept in the checkpoint, so a resume continues the run)
        self.client: MlflowClient | None = None  #: the client of the open run, between pre_training and the end
        self._skip: dict[str, int] = {}  # per metric key, the last step a continued run already has

    def priority_of(self, event: Event) -> int:
        # the end: after the checkpointer's final save (the artifact) and the other loggers
        return Priority.FINAL if event is Event.POST_TRAINING else self.priority

    def setup(self, trainer: BaseTrainer) -> None:
        require_package("mlflow", "mlflow", self.owner)
        if self._default_store:
            self.directory = output_dir(self, self.directory, trainer, "mlruns")
            self.tracking_uri = store.default_store(self.directory)
        super().setup(trainer)

    def teardown(self, trainer: BaseTrainer) -> None:
        super().teardown(trainer)
        self._end("FINISHED")  # removed mid-run: the run ends here

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self.open_rows(trainer)
        state = trainer.state
        config: dict[str, Any] = dict(trainer.config or {})
        config.setdefault("max_epochs", state.max_epochs)
        config.setdefault("iterations_per_epoch", state.iterations_per_epoch)
        run_dir = trainer.run_dir
        name = self.run_name or (run_dir.name if run_dir is not None and run_dir.name else None)
        self._run("start the run", lambda: self._start(config, name, run_dir))

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        values = self.step_row(trainer) if self.client is not None else None
        if values is not None:
            self._metrics(values, trainer.state.iteration)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self.client is None:
            return
        self._metrics(self.epoch_row(trainer), trainer.state.iteration)
        self._drain()

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
        if self.client is None:
            return
        step = trainer.state.iteration
        self._metrics(self.validation_values(metrics, best), step)  # this validation's values, no other's
        if self.log_images and images:
            folder = image_prefix(prefix, metrics)
            pictures = {store.artifact_path("images", folder, str(name)): image for name, image in images.items()}
            self._log_pngs(pictures, step)

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        # a failure inside post_training: no post_training follows, so this is the last chance to end the run
        if trainer.phase is Phase.FINISHING:
            self._end(RUN_STATUS[Status.FAILED], trainer, Status.FAILED)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self._end(RUN_STATUS[status], trainer, status)

    # ------------------------------------------------------------------ the run
    def _start(self, config: dict[str, Any], name: str | None, run_dir: Path | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        assert uri is not None  # set by __init__ or setup
        database = store.sqlite_file(uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        client = MlflowClient(tracking_uri=uri)
        run = self._existing_run(client, uri)
        params, refused = store.config_params(config)
        tags = dict(self.tags)
        if run_dir is not None:
            tags["stepbus.run_dir"] = str(run_dir.resolve())
        if run is None:
            # a new experiment in an SQLite store keeps its artifacts beside the database (MLflow's default would be
            # ./mlruns in the current directory)
            artifacts = None if database is None else (database.resolve().parent / "artifacts").as_uri()
            experiment_id = store.experiment_id(client, self.experiment, artifacts)
            self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            self.client = client  # open: a failure from here on ends it (as failed, under "disable")
            self._skip = {}
            _log.info("MLflow run %s in %s", self.run_id, uri)
        else:
            self.run_id = run.info.run_id
            client.update_run(self.run_id, status="RUNNING")
            self.client = client
            self._skip = store.last_steps(client, self.run_id)
            params, changed = store.new_params(params, run.data.params)
            if changed:
                self._guard.warn(
                    f"the config changed {', '.join(changed)} since run {self.run_id} logged them; MLflow params "
                    "cannot change, so they keep their first values (config.json holds the new ones)"
                )
            _log.info("MLflow run %s in %s, continued", self.run_id, uri)
        run_id = self.run_id
        if refused:
            self._guard.warn(
                f"config keys MLflow refuses as param names were left out of the params: {', '.join(refused)} "
                "(config.json holds them)"
            )
        for chunk in store.chunks(sorted(params.items()), store.MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=[store.param(k, v) for k, v in chunk], synchronous=True)
        if run is not None and tags:
            client.log_batch(run_id, tags=[store.tag(k, v) for k, v in tags.items()], synchronous=True)
        client.log_text(run_id, json.dumps(config, indent=2, sort_keys=True, default=str), "config.json")

    def _existing_run(self, client: MlflowClient, uri: str) -> Any:
        """The run to continue (``run_id`` given or from the checkpoint), or ``None`` for a new one."""
        from mlflow.exceptions import MlflowException

        if self.run_id is None:
            return None
        try:
            run = client.get_run(self.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is not None and run.info.lifecycle_stage != "deleted":
            return run
        if self._given_id is not None:
            raise ValueError(f"run_id={self._given_id!r}: the store {uri} has no such run (or it was deleted)")
        self._guard.warn(f"run {self.run_id} of the checkpoint is not in {uri} (or was deleted); starting a new run")
        return None

    def _end(self, run_status: str, trainer: BaseTrainer | None = None, status: Status | None = None) -> None:
        if self.client is not None:
            self._drain(close=True)
        client, self.client = self.client, None
        run_id = self.run_id
        if client is None or run_id is None:
            return
        if self._guard.raised:  # a failure of this logger failed the run: end the MLflow run, raise nothing more
            _quietly(lambda: client.set_terminated(run_id, status="FAILED"))
            return

        def end() -> None:
            try:
                if trainer is not None:
                    state = trainer.state
                    tags = {"stepbus.iterations": str(state.iteration), "stepbus.epochs": str(state.epoch)}
                    if status is not None:
                        tags["stepbus.status"] = str(status)
                    for role, saved in state.saved_checkpoints().items():
                        tags[f"stepbus.checkpoint.{role}"] = str(saved.path)
                    client.log_batch(run_id, tags=[store.tag(k, v) for k, v in tags.items()], synchronous=True)
                    if self.log_checkpoint:
                        self._log_checkpoint(client, run_id, trainer)
            finally:
                client.set_terminated(run_id, status=run_status)

        self._run("end the run", end)

    def _log_checkpoint(self, client: MlflowClient, run_id: str, trainer: BaseTrainer) -> None:
        state = trainer.state
        saved = state.best_checkpoint or state.last_checkpoint
        if saved is None:
            self._guard.warn(
                "log_checkpoint=True but no checkpoint was published (add a Checkpointer); no artifact logged"
            )
            return
        client.log_artifact(run_id, str(saved.path.resolve()), "checkpoint")
        role = "best" if saved is state.best_checkpoint else "last"
        client.set_tag(run_id, "stepbus.checkpoint", f"checkpoint/{saved.path.resolve().name} ({role})")

    # ------------------------------------------------------------------ writing
    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        """One row: the values not already in a continued run, in ``log_batch`` calls of at most 1000 metrics."""
        client, run_id = self.client, self.run_id
        if client is None or run_id is None:
            return
        skip = self._skip
        if skip:
            values = {k: v for k, v in values.items() if step > skip.get(k, -1)}
            if step > max(skip.values()):
                self._skip = {}  # past every step the run had: nothing more to compare
        if not values:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, float(value), stamp, step) for key, value in values.items()]

        def write() -> None:
            for chunk in store.chunks(metrics, store.MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=chunk, synchronous=True)

        self._write("log metrics", write)

    def _log_pngs(self, images: Mapping[str, Any], step: int) -> None:
        """Each image as ``<folder>/step-<step>.png`` for its folder (the key); encoded now, logged by the writer."""
        client, run_id = self.client, self.run_id
        if client is None or run_id is None:
            return
        encoded: dict[str, bytes] = {}

        def encode() -> None:  # on the training thread: the step may change a tensor after it was logged
            encoded.update({folder: encode_png(image, name=folder) for folder, image in images.items()})

        if not self._run("encode images", encode):
            return

        def write() -> None:
            with tempfile.TemporaryDirectory(prefix="stepbus-mlflow-") as scratch:
                for folder, png in encoded.items():
                    local = Path(scratch) / f"step-{step:08d}.png"
                    local.write_bytes(png)
                    client.log_artifact(run_id, str(local), folder)

        self._write("log images", write)

    def _is_open(self) -> bool:
        return self.client is not None

    def _write_logged(self, name: str, kind: Kind, value: Any, step: int) -> None:
        if kind == "scalar":
            self._metrics({name: scalar(value)}, step)
        elif kind == "image":
            self._log_pngs({store.artifact_path("images", name): value}, step)
        else:
            client, run_id = self.client, self.run_id
            if client is not None and run_id is not None:
                path = store.artifact_path("text", name, f"step-{step:08d}.txt")
                text = str(value)
                self._write(f"log {name!r}", lambda: client.log_text(run_id, text, path))

    def _disabled_now(self) -> None:
        """The logger was just disabled: end its run, if one is open, as failed."""
        client, self.client = self.client, None
        run_id = self.run_id
        if client is not None and run_id is not None:
            _quietly(lambda: client.set_terminated(run_id, status="FAILED"))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("run_id")
        if self._given_id is None and isinstance(saved, str):
            self.run_id = saved  # an explicit run_id= wins over the checkpoint's
        super().load_state_dict(state)


def _quietly(action: Callable[[], None]) -> None:
    """Best effort after a failure that was already reported or raised."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the failure that ended the run was already reported
        _log.debug("MLflowLogger: ending the run after a failure also failed: %s", exc)
