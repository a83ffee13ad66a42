"""``RayReport``: a run on Ray Train workers reports its metrics and its checkpoints to Ray (``ray.train.report``),
so Ray's ``Result`` holds them and Ray can restart the run from the newest checkpoint.

Events used, all at priority ``FINAL`` (after the checkpointer, so a checkpoint saved at the same event goes with
the report): the ``every`` schedule's event (``post_epoch`` for ``"1ep"``, the default; ``post_step`` for
``"100it"`` or ``"10min"``) reports, except after the run's last step; ``post_training`` reports, unless the run
failed (a rank may be gone: no barrier then), when the run went on or saved a checkpoint (at its end: the
checkpointer's end save) since the previous report, so the end of a run is one report with its final checkpoint;
``pre_training`` checks that this process is a Ray Train worker in the trainer's job and starts the metric window.

**Every rank reports at the same points.** ``ray.train.report`` is a barrier across Ray's workers: every worker
must call it as often as the others. The schedule fires at the same iteration on every rank (wall-time schedules
use the job's agreed clock), and the end report is decided by rank 0 and broadcast, so the ranks never disagree.

**What is reported.** Ray keeps rank 0's metrics only, so rank 0 sends them: ``iteration`` and ``epoch``, the means
of the step outputs since the previous report (``train/loss``, ``time/iter_ms`` ..., from the loggers' shared
``MetricFlow``: rank 0's share of each batch, as every logger writes it), and every number in
``trainer.state.metrics`` (``val/*``, ``best/*``, ``lr`` ...) as stepbus published it. The other ranks send the two
counters and read nothing from their device.

**Checkpoints.** When the checkpointer saved a checkpoint since the previous report (``state.last_checkpoint``),
rank 0 attaches it: the file -- or a sharded checkpoint's directory -- hard-linked into a temporary directory
(``trainers.distributed.ray_checkpoint.staged``) that Ray copies into its storage before ``report`` returns. A
checkpoint saved between two reports goes with the next one; choose ``every`` on the checkpointer's schedule to
report each checkpoint with the metrics of its own iteration.

Ray is imported in ``setup`` and the handlers, never when this module is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from callbacks.helpers import parse_schedule, periodic_event
from callbacks.loggers.metric_flow import MetricFlow
from callbacks.loggers.values import numbers
from lifecycle import Callback, Event, HandlerSpec, Priority, ScheduleSpec, Status
from trainers.distributed.ray_checkpoint import staged

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.loggers.metric_flow import Window
    from lifecycle import SavedCheckpoint
    from trainers.engine.trainer import BaseTrainer

__all__ = ["RayReport"]


class RayReport(Callback):
    """Report metrics and new checkpoints to Ray Train (``ray.train.report``) from every worker of a ``TorchTrainer``
    run, rank 0's metrics and the checkpoint saved since the previous report; ``trainers.config.ray_train.run_with_ray``
    adds one to every trainer it builds.

    Args:
        every: when to report (``"1ep"``: after each epoch; ``"100it"``, ``"10min"``; ``"never"``: only at the end).
            The end of a run that did not fail is reported too, when it took a step or saved a checkpoint
            since the previous report.
    """

    priority = Priority.FINAL

    def __init__(
        self,
        *,
        every: ScheduleSpec = "1ep",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        self.owner = f"{type(self).__name__} {self.state_key!r}"
        self.schedule = parse_schedule(every, self.owner)
        self._window: Window | None = None
        self._seen: SavedCheckpoint | None = None  # rank 0: the newest checkpoint Ray has (or had at the start)
        self._reported_at: int | None = None  # the iteration of the latest report of this run
        self._running = False
        #: reports made by this process, and how many of them carried a checkpoint
        self.reports = 0
        self.checkpoints = 0

    def handlers(self) -> Iterator[HandlerSpec]:
        yield Event.PRE_TRAINING, self.pre_training, None
        if not self.schedule.never:
            yield periodic_event(self.schedule), self._on_schedule, self.schedule
        yield Event.POST_TRAINING, self.post_training, None

    def setup(self, trainer: BaseTrainer) -> None:
        try:
            import ray.train  # noqa: F401 - refused here, when the trainer is built, rather than at the first report
        except ModuleNotFoundError as missing:
            raise ModuleNotFoundError(
                f"{self.owner}: reporting to Ray Train needs Ray (pip install 'stepbus[ray]'): {missing}",
                name=missing.name,
            ) from None

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._check_worker(trainer)
        self._running = True
        self._reported_at = trainer.state.iteration
        if trainer.is_global_zero:
            # a resumed run's checkpointer republishes the checkpoint it continues: Ray has that one already
            self._seen = trainer.state.last_checkpoint
            self._window = MetricFlow.of(trainer).window()

    def _on_schedule(self, trainer: BaseTrainer, **payload: Any) -> None:
        state = trainer.state
        # after the run's last step the end's report follows (with the checkpointer's end save): one row, not two
        if self._running and state.iteration < state.max_iterations:
            self._report(trainer)

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        running, self._running = self._running, False
        if not running or status is Status.FAILED:  # a failed run may have lost a rank: no barrier now
            return
        due = trainer.state.iteration != self._reported_at or self._newest(trainer) is not None
        if trainer.world_size > 1:
            due = bool(trainer.broadcast_object(due))  # rank 0 decides, so that every rank reports or none
        if due:
            self._report(trainer)

    # ------------------------------------------------------------------ reporting
    def _check_worker(self, trainer: BaseTrainer) -> None:
        """This process is a Ray Train worker whose job is the trainer's (Ray's rank and world size), or a
        ``RuntimeError`` that says what is wrong."""
        import ray.train

        try:
            context = ray.train.get_context()
            size, rank = context.get_world_size(), context.get_world_rank()
        except RuntimeError as exc:
            raise RuntimeError(
                f"{self.owner}: this process is not a Ray Train worker ({exc}); run the trainer inside a "
                "TorchTrainer's training function, e.g. with trainers.config.ray_train.run_with_ray"
            ) from None
        if (size, rank) != (trainer.world_size, trainer.rank):
            raise RuntimeError(
                f"{self.owner}: Ray Train runs this worker as rank {rank} of {size}, but the trainer is rank "
                f"{trainer.rank} of {trainer.world_size}: build the trainer inside the training function, after Ray "
                "set up torch.distributed"
            )

    def _newest(self, trainer: BaseTrainer) -> SavedCheckpoint | None:
        """Rank 0: the checkpoint saved since the previous report, if any (``None`` on the other ranks)."""
        if not trainer.is_global_zero:
            return None
        newest = trainer.state.last_checkpoint
        return newest if newest is not None and newest != self._seen else None

    def _report(self, trainer: BaseTrainer) -> None:
        import ray.train

        state = trainer.state
        metrics: dict[str, Any] = {"iteration": state.iteration, "epoch": state.epoch}
        newest = self._newest(trainer)
        if trainer.is_global_zero:
            if self._window is not None:
                metrics.update(self._window.take())
            metrics.update(numbers(state.metrics))
        if newest is None:
            ray.train.report(metrics)
        else:
            with staged(newest.path) as folder:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            self._seen = newest
            self.checkpoints += 1
        self.reports += 1
        self._reported_at = state.iteration
