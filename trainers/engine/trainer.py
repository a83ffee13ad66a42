"""``BaseTrainer``: model, optimizer, data and one optimisation step; everything else is a callback."""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset

import trainers.distributed.environment as distributed
from callbacks.base import Callback
from callbacks.loggers.metric_flow import MetricFlow
from lifecycle import Bus, Event, Handle, Loop, Phase, ScheduleSpec, State, Status
from trainers.checkpoint.format import (
    FORMAT,
    CheckpointError,
    check_model_fits,
    check_optimizer_fits,
    load_checkpoint,
    load_newest,
    now_metadata,
    stepbus_version,
    write_checkpoint,
)
from trainers.checkpoint.rng import capture_rng, check_rng, restore_rng
from trainers.data.feeder import BatchPlan, Feeder
from trainers.data.placement import resolve_device, to_device
from trainers.distributed.collective import Collective, RankZeroFailure
from trainers.distributed.ddp import wrap as ddp_wrap
from trainers.distributed.peer_failure import describe, is_collective_failure
from trainers.distributed.stop_vote import INTERRUPT, STOP, StopVote
from trainers.engine.requests import Requests
from trainers.engine.signals import TrainingInterrupted, graceful_signals

__all__ = ["BaseTrainer", "LossFn", "OptimizerSpec"]

#: ``compute_loss`` without subclassing: ``loss_fn(pipeline, batch) -> Tensor | dict`` (a dict has ``"loss"``).
LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, Any]"]
#: A built optimizer, or a factory ``params -> optimizer``.
OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_log = logging.getLogger("stepbus")


class _Host:
    """Drives the trainer for the torch-free :class:`lifecycle.Loop`: internal bookkeeping first, then the
    trainer's overridable lifecycle method (so an override that forgets ``super()`` loses its signal, never the
    data position)."""

    __slots__ = ("_batches", "_device", "_move", "_non_blocking", "trainer")

    def __init__(self, trainer: BaseTrainer) -> None:
        self.trainer = trainer
        self._batches: Iterator[Any] = iter(())
        self._device = trainer.device
        self._move = trainer.device.type != "cpu"
        self._non_blocking = trainer.device.type == "cuda"

    def begin_training(self) -> None:
        t = self.trainer
        if t._pending_rng is not None and t._rng_point == "start":
            t._restore_rng()  # saved before training started: this pre_training is the original run's too
        t.pre_training()
        if t._vote is not None:
            t._settle(wait=True)
        if t._pending_rng is not None and t._rng_point == "boundary":
            t._restore_rng()  # saved after a post_epoch: the next pre_epoch is the uninterrupted run's

    def begin_epoch(self) -> None:
        t = self.trainer
        t.pipeline.train()
        self._batches = t._feeder.epoch(t.state.epoch, t.state.epoch_iteration)
        t.pre_epoch()
        if t._vote is not None:
            t._settle(wait=True)
        if t._pending_rng is not None:
            t._restore_rng()  # saved inside an epoch: this pre_epoch re-opened it; the next step is the run's

    def run_step(self) -> None:
        t = self.trainer
        try:
            batch = next(self._batches)
        except StopIteration:
            raise RuntimeError(
                f"the data ran out at iteration {t.state.iteration} ({t.state}): the dataset yielded fewer "
                f"batches than its length promised ({t.state.iterations_per_epoch} per epoch)"
            ) from None
        if self._move:
            batch = to_device(batch, self._device, self._non_blocking)
        t._stepping = True
        t.pre_step(batch)
        outputs = t.step(batch)
        t._stepping = False
        t.post_step(outputs)
        if t._vote is not None and t.state.iteration % t._vote_every == 0:
            t._settle(wait=False)  # the previous round's result; this round's is read at the next one
        if t._requests.pending and not t.post_epoch_pending:
            t._requests.drain()  # requested during a step: served now (at an epoch's last step, after post_epoch)

    def end_epoch(self) -> None:
        self._batches = iter(())
        t = self.trainer
        t.post_epoch()
        if t._vote is not None:
            t._settle(wait=True)
        if t._requests.pending:
            t._requests.drain()

    def end_training(self, status: Status) -> None:
        t = self.trainer
        if t._vote is not None:
            t._vote.finish()  # no vote round outlives the run (after a failure, fail() abandoned it)
        if t._requests.pending and status is not Status.FAILED:
            t._requests.drain()  # before post_training, so loggers still receive what the requests publish
        t.post_training(status)

    def fail(self, error: BaseException) -> None:
        t = self.trainer
        t._stepping = False
        if t._vote is not None:
            t._vote.abandon()  # a peer may be gone: waiting for its vote could take the whole timeout
        t._requests.pending.clear()  # the run may be mid-step: nothing queued (an interrupt checkpoint) is served
        t.on_exception(error)

    def serve_requests(self) -> None:
        requests = self.trainer._requests
        if requests.pending:
            requests.drain()


class BaseTrainer:
    """The stepping engine's torch half.

    An app writes :meth:`compute_loss` (or passes ``loss_fn``); the base class does zero_grad, forward, backward,
    the ``step`` event (gradients ready, optimizer not stepped), and the optimizer step. Behaviour on a schedule
    -- LR decay, pruning, logging, validation, checkpoints -- comes from callbacks, not from overrides.

    Args:
        pipeline: the ``nn.Module`` to train; moved to ``device``.
        dataset: a map-style dataset (``len`` + ``__getitem__``; ``__getitems__`` is used when present), or with
            ``batch_size=None`` a sequence whose items already are batches.
        max_epochs: number of epochs (>= 1).
        batch_size: items per batch, or ``None`` for pre-built batches.
        optimizer: a torch optimizer over ``pipeline``'s parameters, a factory ``params -> optimizer``, or ``None``
            for ``Adam(lr=1e-3)``.
        callbacks: registered in order, exactly like :meth:`add_callback`.
        seed: the data order is a pure function of ``(seed, epoch)``. The trainer never seeds torch's global RNG.
        device: ``None`` picks CUDA when available, else the CPU. On the CPU batches are used as the dataset gives
            them; elsewhere every tensor in a batch is moved (non-blocking on CUDA).
        num_workers: DataLoader worker processes (0 fetches in-process, with no DataLoader overhead).
        shuffle: ``False`` visits the dataset in index order every epoch.
        drop_last: drop a final partial batch (kept by default: the last batch of every epoch is stepped).
        collate_fn: how items become a batch (``torch.utils.data.default_collate`` by default).
        loss_fn: ``loss_fn(pipeline, batch)``, used by the default :meth:`compute_loss`.
        run_dir: where callbacks write files (validation images, checkpoints, logs); ``None`` for nowhere. It is
            created by whichever callback writes first.
        backend: the ``torch.distributed`` backend when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and no process
            group is up yet: ``"auto"``/``None`` (``nccl`` on CUDA, ``gloo`` otherwise), ``"gloo"`` or ``"nccl"``.
        ddp: ``DistributedDataParallel`` options (``find_unused_parameters=True`` for a pipeline some of whose
            parameters get no gradient in a step, ``static_graph``, ``bucket_cap_mb``).
        dist_timeout: seconds (or a ``timedelta``) a collective waits for a peer before the run fails naming it;
            default 300, or ``STEPBUS_DIST_TIMEOUT``.
        vote_every: in a distributed run, the ranks vote on a stop after every ``vote_every``-th step (and at every
            epoch boundary); a larger value saves one small collective per step for tiny models, and a stop asked
            for during a step then lands up to ``2 * vote_every - 1`` steps later (on every rank alike).

    In a ``torchrun`` job (see ``trainers.distributed.environment``) the trainer starts the process group, wraps the
    loss in DDP (``trainer.pipeline`` stays the plain module), gives each rank its share of every global batch of
    ``batch_size`` items, and makes ``stop()``, checkpoints and validation collective (see the README).
    """

    def __init__(
        self,
        pipeline: nn.Module,
        dataset: Dataset[Any] | Sequence[Any],
        *,
        max_epochs: int,
        batch_size: int | None,
        optimizer: OptimizerSpec = None,
        callbacks: Iterable[Callback] = (),
        seed: int = 0,
        device: torch.device | str | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        loss_fn: LossFn | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        backend: str | None = None,
        ddp: Mapping[str, Any] | None = None,
        dist_timeout: float | timedelta | None = None,
        vote_every: int = 1,
    ) -> None:
        if not isinstance(pipeline, nn.Module):
            raise TypeError(f"pipeline must be a torch.nn.Module, got {type(pipeline).__name__}")
        _check_int("max_epochs", max_epochs, minimum=1)
        if batch_size is not None:
            _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=None)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("vote_every", vote_every, minimum=1)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(pipeline, batch), got {loss_fn!r}")
        if loss_fn is None and type(self).compute_loss is BaseTrainer.compute_loss:
            raise TypeError(
                f"{type(self).__name__} has no loss: override compute_loss(self, batch) in a subclass, or pass "
                "loss_fn=lambda pipeline, batch: ... to BaseTrainer"
            )
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"dataset must be map-style (define __len__ and __getitem__); got {type(dataset).__name__}"
            ) from None
        self.device = distributed.local_device(resolve_device(device))
        timeout = distributed.collective_timeout(dist_timeout)
        distributed.init_from_env(self.device, backend=backend, timeout=timeout)
        rank, world = distributed.rank(), distributed.world_size()
        plan = BatchPlan(size, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world)
        if plan.iterations_per_epoch < 1:
            raise ValueError(
                f"dataset of {size} items with batch_size={batch_size}, drop_last={drop_last} gives no batch per "
                "epoch; use a smaller batch_size or drop_last=False"
            )
        if world > 1:
            _check_shares(plan, world, drop_last)
        self.pipeline = pipeline.to(self.device)
        self.optimizer = _build_optimizer(optimizer, pipeline)
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.loss_fn = loss_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.state = State(max_epochs=max_epochs, iterations_per_epoch=plan.iterations_per_epoch)
        # distributed: a side channel between ranks and the stop vote, whose clock wall-time schedules read
        self._collective: Collective | None = None
        self._vote: StopVote | None = None
        self._vote_every = vote_every
        if world > 1:
            self._collective = Collective(timeout)
            self._vote = StopVote(self._collective.group)
        self.bus = Bus(self.state, clock=None if self._vote is None else self._vote.now)
        self._feeder = Feeder(
            dataset,
            plan,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        self._loop = Loop(self.state)
        self._requests = Requests(self, self.state)
        self._host = _Host(self)
        self._skip_optimizer_step = False
        self._stepping = False  # between pre_step and post_step: no resumable checkpoint can be taken
        self._pending_rng: dict[str, Any] | None = None  # from a checkpoint, restored at the resume point
        self._rng_point = "start"  # where that point is: before pre_training, after it, or after pre_epoch
        self._tracked: dict[str, Any] = {}
        self._metric_flow: MetricFlow | None = None
        #: the resolved configuration (plain containers), saved in every checkpoint's metadata
        self.config: dict[str, Any] | None = None
        #: the checkpoint this run resumed from, if any
        self.resumed_from: Path | None = None
        #: the signal that interrupted ``train()`` (``signal.SIGINT`` ...), if one did
        self.interrupted_by: int | None = None
        self._callbacks: dict[int, tuple[Callback, tuple[Handle, ...]]] = {}
        self._idle_callbacks: set[int] = set()  # rank_zero_only callbacks on another rank: never set up
        # the hot path emits through cached channels: "if channel.active" costs one attribute test when idle
        channel = self.bus.channel
        self._pre_training, self._pre_epoch = channel(Event.PRE_TRAINING), channel(Event.PRE_EPOCH)
        self._pre_step, self._step, self._post_step = (
            channel(Event.PRE_STEP),
            channel(Event.STEP),
            channel(Event.POST_STEP),
        )
        self._post_epoch, self._post_training = channel(Event.POST_EPOCH), channel(Event.POST_TRAINING)
        self._exception = channel(Event.EXCEPTION)
        self._pre_validation, self._post_validation = channel(Event.PRE_VALIDATION), channel(Event.POST_VALIDATION)
        self._forward: Callable[[Any], Any] = self.compute_loss
        if world > 1:
            self._forward = ddp_wrap(self.pipeline, self.compute_loss, self.device, ddp)
        for callback in callbacks:
            self.add_callback(callback)

    # ------------------------------------------------------------------ the app's part
    def compute_loss(self, batch: Any) -> torch.Tensor | dict[str, Any]:
        """The loss of one batch: a scalar tensor, or a dict with a ``"loss"`` key plus anything callbacks should
        see as ``outputs`` (keep values as tensors: converting them here would sync the device every step)."""
        assert self.loss_fn is not None  # guaranteed by __init__
        return self.loss_fn(self.pipeline, batch)

    def validate(self) -> Mapping[str, Any]:
        """What a :class:`~callbacks.Validator` computes: ``{"psnr": ..., "mse": ...}`` (numbers or one-element
        tensors), optionally with ``"images": {name: HxWxC tensor}``. Apps override it; the Validator has already
        put the pipeline in eval mode under ``torch.no_grad()`` and restores both afterwards."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define validate(): override validate(self) -> dict of metrics, "
            "or give the Validator a function: Validator(fn=lambda trainer: {...})"
        )

    # ------------------------------------------------------------------ lifecycle methods (override + super())
    def pre_training(self) -> None:
        """Emits ``pre_training(resumed=...)``."""
        if self._pre_training.active:
            self._pre_training.emit(self, resumed=self._loop.resumed)

    def pre_epoch(self) -> None:
        """Emits ``pre_epoch``. The pipeline is already in train mode and the epoch's data is positioned."""
        if self._pre_epoch.active:
            self._pre_epoch.emit(self)

    def pre_step(self, batch: Any) -> None:
        """Emits ``pre_step(batch=...)`` before the forward pass."""
        if self._pre_step.active:
            self._pre_step.emit(self, batch=batch)

    def step(self, batch: Any) -> dict[str, Any]:
        """One optimisation step: zero_grad, :meth:`compute_loss`, backward, the ``step`` event, optimizer step.
        Returns the outputs dict (``{"loss": loss}`` when ``compute_loss`` returned a tensor)."""
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        result = self._forward(batch)  # compute_loss, through DDP in a distributed run
        if isinstance(result, torch.Tensor):
            loss, outputs = result, {"loss": result}
        elif isinstance(result, dict) and isinstance(result.get("loss"), torch.Tensor):
            loss, outputs = result["loss"], result
        else:
            raise TypeError(
                f"{type(self).__name__}.compute_loss must return a loss tensor or a dict with a 'loss' tensor; "
                f"got {_short(result)} at iteration {self.state.iteration}"
            )
        loss.backward()  # type: ignore[no-untyped-call]
        if self._step.active:
            self._step.emit(self, loss=loss, outputs=outputs)
        if self._skip_optimizer_step:
            self._skip_optimizer_step = False
        else:
            optimizer.step()
        return outputs

    def post_step(self, outputs: dict[str, Any]) -> None:
        """Emits ``post_step(outputs=...)``: the optimizer has stepped, counters are final for this step."""
        if self._post_step.active:
            self._post_step.emit(self, outputs=outputs)

    def post_epoch(self) -> None:
        """Emits ``post_epoch``."""
        if self._post_epoch.active:
            self._post_epoch.emit(self)

    def post_training(self, status: Status) -> None:
        """Emits ``post_training(status=...)``, exactly once per run."""
        if self._post_training.active:
            self._post_training.emit(self, status=status)

    def pre_validation(self, **payload: Any) -> None:
        """Emits ``pre_validation``; called by a validator before it computes (``payload`` names the validator)."""
        if self._pre_validation.active:
            self._pre_validation.emit(self, **payload)

    def post_validation(self, metrics: Mapping[str, float], **payload: Any) -> None:
        """Emits ``post_validation(metrics=...)``; called by a validator once its metrics are published in
        ``state.metrics`` (``payload`` carries images, best values and the validator's name)."""
        if self._post_validation.active:
            self._post_validation.emit(self, metrics=metrics, **payload)

    def on_exception(self, error: BaseException) -> None:
        """Emits ``exception(error=...)``; ``post_training(status="failed")`` follows, then the error propagates."""
        if self._exception.active:
            self._exception.emit(self, error=error)

    # ------------------------------------------------------------------ driving
    def iterate(self) -> bool:
        """Run exactly one step plus the lifecycle events around it; return whether training continues.

        After the end it returns ``False`` and emits nothing; while paused it returns ``True`` and does nothing.
        """
        if self._collective is not None and self._collective.closed:
            self._refuse_closed()
        try:
            return self._loop.iterate(self._host)
        except Exception as error:
            self._raise_peer_failure(error)
            raise

    def train(self, *, handle_signals: bool = True) -> Status | None:
        """Iterate until the run ends (returns its status) or a callback calls :meth:`pause` (returns ``None``;
        call ``train()`` again to continue). Un-pauses first.

        With ``handle_signals`` (and on the main thread) SIGINT and SIGTERM end the run gracefully: the current
        step finishes, ``"interrupt"`` requests are served (a :class:`~callbacks.Checkpointer` saves), then
        ``post_epoch`` and ``post_training(status="interrupted")`` fire and ``train()`` returns
        ``Status.INTERRUPTED`` (:attr:`interrupted_by` names the signal). A second signal raises
        :class:`~trainers.engine.signals.TrainingInterrupted` at once. The previous handlers are restored on return."""
        if self._collective is not None and self._collective.closed:
            self._refuse_closed()
        loop, host = self._loop, self._host
        loop.paused = False
        try:
            with graceful_signals(self._on_signal) if handle_signals else nullcontext():
                while loop.iterate(host):
                    if loop.paused:
                        return None
        except Exception as error:
            self._raise_peer_failure(error)
            raise
        return loop.status

    def _on_signal(self, signum: int) -> None:
        """The signal handler: flags only (it may run between any two bytecodes), except a second signal."""
        if self.interrupted_by is not None:
            raise TrainingInterrupted(signum)
        self.interrupted_by = signum
        if self._loop.ending:
            return  # the run is ending anyway: let post_training finish (a second signal still aborts it)
        if self._vote is not None:
            self._vote.want(INTERRUPT)  # the ranks agree on it (trainers.distributed.stop_vote); the save follows then
            return
        self._loop.request_stop(Status.INTERRUPTED)
        self._queue_interrupt()

    def _queue_interrupt(self) -> None:
        if self._requests.servers("interrupt"):
            self._requests.pending["interrupt"] = None  # served at the next safe point, before post_epoch

    def _settle(self, *, wait: bool) -> None:
        """A round of the stop vote (distributed runs only): apply what the ranks agreed on, on every rank."""
        assert self._vote is not None
        agreed = self._vote.settle(wait=wait)
        if agreed == INTERRUPT:
            self._loop.request_stop(Status.INTERRUPTED)
            self._queue_interrupt()
        elif agreed == STOP:
            self._loop.request_stop(Status.STOPPED)

    def _refuse_closed(self) -> NoReturn:
        raise RuntimeError(
            f"this trainer was closed at iteration {self.state.iteration}: in a distributed run close() releases its "
            "side groups, so it cannot step on (build a new trainer, and resume() from a checkpoint to continue)"
        )

    def _raise_peer_failure(self, error: Exception) -> None:
        """In a job, when ``error`` is a failed collective: probe the peers and raise :class:`PeerFailure` naming the
        ones that are gone (from ``error``). Otherwise return, and the caller re-raises ``error`` itself."""
        collective = self._collective
        if collective is None or not is_collective_failure(error):
            return
        probe = min(collective.timeout, timedelta(seconds=10))
        failed = collective.probe(probe)
        where = f"at iteration {self.state.iteration} ({self.state})"
        raise describe(self.rank, failed, where, error, probe) from error

    def run_for(self, seconds: float) -> bool:
        """Iterate for about ``seconds`` of wall time (at least one step), for a GUI frame; return whether
        training continues."""
        if self._collective is not None and self._collective.closed:
            self._refuse_closed()
        deadline = time.perf_counter() + seconds
        loop, host = self._loop, self._host
        while loop.iterate(host):
            if loop.paused or time.perf_counter() >= deadline:
                return True
        return False

    def pause(self) -> None:
        """``iterate()`` does nothing (and returns ``True``) until :meth:`resume`; ``train()`` returns after the
        current step."""
        self._loop.paused = True

    def resume(self, checkpoint: str | os.PathLike[str] | None = None) -> Path | None:
        """``resume()`` undoes :meth:`pause`. ``resume(path)`` -- before training -- loads a checkpoint so that
        the next :meth:`iterate` continues with the exact next batch; returns the file it loaded.

        ``path`` is a checkpoint file, a directory (its newest loadable checkpoint), or ``"auto"``: the newest
        loadable checkpoint in the directory of each callback that has a ``checkpoint_dir`` (a Checkpointer),
        else in ``run_dir/checkpoints``. In a directory, a checkpoint that is damaged, incompatible or not a
        stepbus file is reported with a warning and the next newest is tried; ``"auto"`` with no checkpoint at all
        starts from scratch (and returns ``None``). Every other failure is a :class:`~trainers.checkpoint.format.
        CheckpointError` naming the file and the reason, raised before anything is changed.

        The resumed run emits ``pre_training(resumed=True)``, then ``pre_epoch`` again when the checkpoint was
        taken mid-epoch, then the next step; no consumed batch is replayed and no event of a finished step repeats.
        """
        if checkpoint is None:
            self._loop.paused = False
            return None
        if self._loop.started:
            raise RuntimeError(
                f"resume({str(checkpoint)!r}) must be called before training starts; this trainer is at {self.state} "
                "(build a new trainer to load a checkpoint)"
            )
        if isinstance(checkpoint, str) and checkpoint == "auto":
            directories = self.checkpoint_dirs()
            if not directories:
                raise ValueError(
                    "resume('auto') needs a place to look: give the trainer run_dir=... or add a Checkpointer, "
                    "or pass a checkpoint file or directory"
                )
            found = self._resume_newest(directories, required=False)
            if found is None:
                _log.warning("resume('auto'): no checkpoint in %s; starting from scratch", _names(directories))
            return found
        target = Path(checkpoint)
        if target.is_dir():
            return self._resume_newest([target], required=True)
        loaded = self._load_agreed(target, lambda: (target, load_checkpoint(target)))
        assert loaded is not None
        self._apply_checkpoint(*loaded)
        return target

    def checkpoint_dirs(self) -> list[Path]:
        """Where ``resume("auto")`` looks: every registered callback's ``checkpoint_dir``, else
        ``run_dir/checkpoints``."""
        found: list[Path] = []
        for callback in self.callbacks:
            directory = getattr(callback, "checkpoint_dir", None)
            if isinstance(directory, Path) and directory not in found:
                found.append(directory)
        if not found and self.run_dir is not None:
            found.append(self.run_dir / "checkpoints")
        return found

    def _resume_newest(self, directories: list[Path], *, required: bool) -> Path | None:
        found = self._load_agreed(directories[0], lambda: load_newest(directories, required=required))
        if found is None:
            return None
        self._apply_checkpoint(*found)
        return found[0]

    def _load_agreed(
        self, asked: Path, choose: Callable[[], tuple[Path, dict[str, Any]] | None]
    ) -> tuple[Path, dict[str, Any]] | None:
        """``choose()`` in a single process. In a job, rank 0 chooses the file and every other rank loads that
        same file; any rank's failure is raised on every rank (naming the rank), before anything is applied."""
        collective = self._collective
        if collective is None:
            return choose()
        found: tuple[Path, dict[str, Any]] | None = None

        def chosen_on_zero() -> str | None:
            nonlocal found
            found = choose()
            return None if found is None else str(found[0])

        path_text = collective.on_rank_zero(
            chosen_on_zero,
            lambda failure: CheckpointError(asked, f"rank 0 could not resume from it: {failure.reason or failure}"),
        )
        if path_text is None:
            return None
        error: Exception | None = None
        if collective.rank != 0:
            try:
                found = (Path(path_text), load_checkpoint(path_text))
            except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised
                error = exc
        problems = collective.all_gather(None if error is None else str(error))
        if error is not None:
            raise error
        for rank, text in enumerate(problems):
            if text is not None:
                raise CheckpointError(Path(path_text), f"rank {rank} could not load it: {text}")
        return found

    def _apply_checkpoint(self, path: Path, loaded: dict[str, Any]) -> None:
        """Check that ``loaded`` fits this trainer, then apply it. Everything that can be checked without changing
        the trainer is checked first, so a checkpoint that does not fit changes nothing."""
        meta = loaded["stepbus"]
        if not meta.get("resumable", True):
            raise CheckpointError(
                path,
                f"not resumable: it was written at iteration {meta.get('iteration')} because of {meta.get('reason')!r} "
                "(the state at a failure, mid-step); load it with "
                "trainers.checkpoint.format.load_checkpoint to inspect it",
            )
        try:
            counters = self._checked_counters(loaded["trainer"])
        except ValueError as exc:
            raise CheckpointError(path, f"does not fit this trainer: {exc}") from None
        rng = self._rng_of_this_rank(path, loaded)
        try:
            check_rng(rng)
        except ValueError as exc:
            raise CheckpointError(path, f"malformed: {exc}") from None
        check_model_fits(path, self.pipeline, loaded["model"])
        check_optimizer_fits(path, self.optimizer, loaded["optimizer"])
        tracked = loaded.get("tracked", {})
        if not isinstance(tracked, dict):
            raise CheckpointError(path, f"malformed: 'tracked' is a {type(tracked).__name__}, expected a dict")
        saved_callbacks = loaded["callbacks"]
        # all or nothing: the parts are applied in order of how likely they are to refuse (callbacks and tracked
        # objects run user code), each undone from a snapshot if a later one fails; the model, checked key by key
        # and shape by shape above, goes last
        parts: list[tuple[str, Any, Any]] = []
        for name, obj in self._tracked.items():
            if name in tracked:
                parts.append((f"tracked object {name!r}", obj, tracked[name]))
            else:
                _log.warning("resume: %s has no state for tracked object %r; it starts fresh", path, name)
        for name in sorted(set(tracked) - set(self._tracked)):
            _log.warning("resume: %s holds state for tracked object %r, which this trainer does not track", path, name)
        for callback in self.callbacks:
            key = callback.state_key
            if key in saved_callbacks:
                parts.append((f"callback {key!r} ({type(callback).__name__})", callback, saved_callbacks[key]))
            else:
                _log.warning("resume: %s has no state for callback %r; it starts fresh", path, key)
        extra = sorted(set(saved_callbacks) - {cb.state_key for cb in self.callbacks})
        if extra:
            _log.warning("resume: %s holds state for callbacks %s, which are not registered now", path, extra)
        parts.append(("the optimizer", self.optimizer, loaded["optimizer"]))
        parts.append((f"the model ({type(self.pipeline).__name__})", self.pipeline, loaded["model"]))
        undo: list[tuple[Any, Any]] = []
        try:
            for what, obj, saved in parts:
                before = copy.deepcopy(obj.state_dict()) if obj is not self.pipeline else None
                try:
                    obj.load_state_dict(saved)
                except Exception as exc:
                    raise CheckpointError(path, f"{what} refused its saved state: {type(exc).__name__}: {exc}") from exc
                if before is not None:
                    undo.append((obj, before))
        except CheckpointError:
            for obj, before in reversed(undo):
                try:
                    obj.load_state_dict(before)
                except Exception as exc:  # noqa: BLE001 - reported; the original error is the one raised
                    _log.error("resume: could not undo loading %r after a failure: %s", obj, exc)
            raise
        self.state.load_state_dict(counters)
        self._loop.restore(ended=bool(loaded["trainer"].get("ended", True)))
        self._pending_rng = rng
        # the RNG state is the one at the save: re-fired events must not draw from it before the resume point
        epoch, step = counters["epoch"], counters["epoch_iteration"]
        if epoch == 0:
            self._rng_point = "start"
        elif step >= counters["iterations_per_epoch"]:
            self._rng_point = "boundary"
        else:
            self._rng_point = "epoch"  # pre_epoch of this epoch had run (even at step 0: e.g. stopped in it)
        self.resumed_from = path
        _log.info("resumed from %s at %s", path, self.state)

    def _rng_of_this_rank(self, path: Path, loaded: dict[str, Any]) -> Any:
        """The RNG state this rank restores: its own from a distributed checkpoint's ``rank_rng`` (every rank's,
        in rank order), else the ``rng`` of the process that saved."""
        states = loaded.get("rank_rng")
        if not isinstance(states, list) or not states:
            if self.world_size > 1 and self.rank > 0:
                _log.warning(
                    "resume: %s holds the RNG state of one process; rank %d restores it too (random draws, such "
                    "as dropout, repeat across ranks from here)",
                    path,
                    self.rank,
                )
            return loaded["rng"]
        if len(states) != self.world_size:
            _log.warning(
                "resume: %s was saved by %d ranks, this run has %d; rank %d restores the RNG state of rank %d",
                path,
                len(states),
                self.world_size,
                self.rank,
                self.rank % len(states),
            )
        return states[self.rank % len(states)]

    def _restore_rng(self) -> None:
        state, self._pending_rng = self._pending_rng, None
        if state is not None:
            for note in restore_rng(state):
                _log.warning("resume: %s", note)

    # ------------------------------------------------------------------ checkpoints
    def track(self, name: str, obj: Any) -> Any:
        """Carry ``obj`` (anything with ``state_dict()`` / ``load_state_dict()``: an LR scheduler driven by hand,
        an AMP ``GradScaler``, an EMA of the weights) in every checkpoint under ``name``; returns ``obj``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"track() needs a non-empty name, got {name!r}")
        if not callable(getattr(obj, "state_dict", None)) or not callable(getattr(obj, "load_state_dict", None)):
            raise TypeError(f"track({name!r}, ...): {type(obj).__name__} has no state_dict()/load_state_dict()")
        if name in self._tracked:
            raise ValueError(f"track({name!r}, ...): the name is already used by {self._tracked[name]!r}")
        self._tracked[name] = obj
        return obj

    def checkpoint_state(self, *, reason: str = "manual", resumable: bool = True) -> dict[str, Any]:
        """Everything an exact resume needs, as tensors and plain containers (see ``trainers.checkpoint.format``).

        Raises ``RuntimeError`` for a resumable checkpoint asked for where the run is not at a resumable point:
        inside a step (between ``pre_step`` and ``post_step``) or at an epoch's last step before its ``post_epoch``.
        A callback asks for one with :meth:`request_checkpoint` instead, which is always served at a resumable point.
        """
        state = self.state
        if resumable:
            self._check_resumable_point()
        meta: dict[str, Any] = {
            "format": FORMAT,
            "version": stepbus_version(),
            "torch": str(torch.__version__),
            **now_metadata(),
            "reason": reason,
            "resumable": resumable,
            "iteration": state.iteration,
            "epoch": state.epoch,
            "epoch_iteration": state.epoch_iteration,
            "max_epochs": state.max_epochs,
            "iterations_per_epoch": state.iterations_per_epoch,
            "status": str(self._loop.status) if self._loop.status is not None else None,
            "metrics": _plain_metrics(state.metrics),
            "config": self.config,
            "trainer": f"{type(self).__module__}.{type(self).__qualname__}",
            "writer": {"host": socket.gethostname(), "pid": os.getpid(), "rank": self.rank},
            "world_size": self.world_size,
        }
        return {
            "stepbus": meta,
            "trainer": self.state_dict(),
            "model": self.pipeline.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tracked": {name: obj.state_dict() for name, obj in self._tracked.items()},
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "rng": capture_rng(),
        }

    def save_checkpoint(
        self,
        path: str | os.PathLike[str],
        *,
        reason: str = "manual",
        resumable: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write :meth:`checkpoint_state` to ``path`` atomically (see
        :func:`trainers.checkpoint.format.write_checkpoint`); ``metadata`` adds plain keys to the metadata block.
        Raises :class:`~trainers.checkpoint.format.CheckpointError` when the file cannot be written; the previous file
        at ``path`` is then intact."""
        collective = self._collective
        if collective is None or not resumable:
            payload = self.checkpoint_state(reason=reason, resumable=resumable)
            if metadata:
                payload["stepbus"].update(metadata)
            return write_checkpoint(path, payload)
        return self._save_collectively(Path(path), reason, metadata, collective)

    def _save_collectively(
        self, path: Path, reason: str, metadata: Mapping[str, Any] | None, collective: Collective
    ) -> Path:
        """Every rank sends its RNG state to rank 0 (the entry barrier), rank 0 writes the file, and its outcome
        is broadcast (the exit barrier): every rank returns the path, or raises (a ``CheckpointError`` where rank 0
        raised one)."""
        self._check_resumable_point()  # the same answer on every rank: they are at the same point
        states = collective.gather(capture_rng())

        def write_on_zero() -> str:
            payload = self.checkpoint_state(reason=reason, resumable=True)
            payload["rank_rng"] = states
            if metadata:
                payload["stepbus"].update(metadata)
            return str(write_checkpoint(path, payload))

        def elsewhere(failure: RankZeroFailure) -> Exception:
            if failure.kind == "CheckpointError" and failure.reason is not None:
                return CheckpointError(path, f"{failure.reason} (rank 0 writes the checkpoints)")
            return RuntimeError(f"rank 0 could not save checkpoint {path}: {failure}")

        return Path(collective.on_rank_zero(write_on_zero, elsewhere))

    def _check_resumable_point(self) -> None:
        if self._stepping or self.post_epoch_pending:
            where = "inside a step" if self._stepping else "before this epoch's post_epoch"
            raise RuntimeError(
                f"no resumable checkpoint can be taken {where} (iteration {self.state.iteration}, {self.state}); "
                "take it from post_step, post_epoch or between iterate() calls, or call trainer.request_checkpoint()"
            )

    # ------------------------------------------------------------------ between ranks
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (small, picklable) on every rank; ``obj`` itself in a single process. A
        collective: every rank calls it at the same point (e.g. from the same event)."""
        return obj if self._collective is None else self._collective.broadcast(obj, src)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (``[obj]`` in a single process). A collective."""
        return [obj] if self._collective is None else self._collective.all_gather(obj)

    def on_rank_zero(
        self, fn: Callable[[], T], *, elsewhere: Callable[[RankZeroFailure], BaseException] | None = None
    ) -> T:
        """``fn()`` on rank 0 only and its result (small, picklable) on every rank; ``fn()`` itself in a single
        process. A collective. If ``fn`` raises, rank 0 re-raises it once every other rank heard of it, and those
        raise ``elsewhere(failure)`` (a :class:`~trainers.distributed.collective.RankZeroFailure`: the type name,
        message and ``reason`` of rank 0's error), by default a ``RuntimeError`` that names rank 0 and ``fn``."""
        if self._collective is None:
            return fn()
        if elsewhere is None:
            name = getattr(fn, "__qualname__", repr(fn))
            return self._collective.on_rank_zero(fn, lambda f: RuntimeError(f"{name} failed on rank 0: {f}"))
        return self._collective.on_rank_zero(fn, elsewhere)

    def barrier(self) -> None:
        """Wait for every rank (nothing in a single process). A collective, bounded by the timeout."""
        if self._collective is not None:
            self._collective.barrier()

    def request_checkpoint(self) -> None:
        """Ask the checkpointer(s) to save: at once between steps, or at the next resumable point of the running
        ``iterate()`` (after ``post_step``; at an epoch's last step, after ``post_epoch``)."""
        self.request("checkpoint")

    def stop(self) -> None:
        """End the run: from a handler, after the current step (``post_epoch`` and ``post_training(status=
        "stopped")`` follow once each); from outside ``iterate()``, at once. Idempotent.

        In a distributed run a stop on any rank stops every rank at the same iteration
        (``trainers.distributed.stop_vote``): asked for at an epoch boundary (``pre_training``, ``pre_epoch``,
        ``post_epoch``, validation there) it ends the run there; asked for during a step, after the next step."""
        if self._vote is not None:
            if not self._loop.ending:
                self._vote.want(STOP)
            return
        self._loop.stop(self._host)

    def request_validation(self) -> None:
        """Ask every registered validator to run: at once when called between steps (a GUI button), or at the
        next safe point of the running ``iterate()`` when called from a handler (see ``trainers.engine.requests``).
        Raises ``RuntimeError`` when no callback serves validation requests."""
        self.request("validation")

    def request(self, kind: str) -> None:
        """Ask for an on-demand action by name (``"validation"``, or whatever a callback serves)."""
        self._requests.request(kind, defer=self._loop.in_iterate)

    def serve(self, kind: str, fn: Callable[[BaseTrainer], None], *, name: str) -> Callable[[], None]:
        """For callbacks: serve ``kind`` requests with ``fn(trainer)``; returns the function that stops serving
        (call it from ``teardown``)."""
        return self._requests.serve(kind, name, fn)

    def servers(self, kind: str) -> tuple[str, ...]:
        """The names of the callbacks serving ``kind`` requests, in the order they run (empty: :meth:`request`
        would raise), e.g. to enable a GUI's Save button only when a checkpointer is registered."""
        return self._requests.servers(kind)

    def skip_optimizer_step(self) -> None:
        """From a ``step`` handler: do not apply this step's gradients (e.g. they are not finite)."""
        self._skip_optimizer_step = True

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
        """True from the end of an epoch's last step until its ``post_epoch``: not a resumable point, so a checkpoint
        (or any request) asked for there waits until after that ``post_epoch``."""
        state, loop = self.state, self._loop
        return loop.in_iterate and loop.phase is Phase.IN_EPOCH and state.epoch_iteration >= state.iterations_per_epoch

    @property
    def metric_flow(self) -> MetricFlow:
        """The step outputs accumulated on the device for loggers (``callbacks.loggers.metric_flow``); created, and its
        handlers connected, on first use, so a run without loggers pays nothing for it."""
        flow = self._metric_flow
        if flow is None:
            flow = self._metric_flow = MetricFlow(self)
        return flow

    @property
    def defines_validate(self) -> bool:
        """Whether this trainer's class overrides :meth:`validate` (a Validator without ``fn`` needs it)."""
        return type(self).validate is not BaseTrainer.validate

    @property
    def rank(self) -> int:
        """This process's rank in the ``torch.distributed`` job (0 when there is none)."""
        return distributed.rank()

    @property
    def world_size(self) -> int:
        """The number of processes in the job (1 when there is none)."""
        return distributed.world_size()

    @property
    def is_global_zero(self) -> bool:
        """Whether this is rank 0: the process that logs, shows progress and writes files."""
        return distributed.rank() == 0

    @property
    def is_paused(self) -> bool:
        return self._loop.paused

    @property
    def is_finished(self) -> bool:
        return self._loop.finished

    # ------------------------------------------------------------------ callbacks
    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """Registered callbacks in registration order."""
        return tuple(cb for cb, _ in self._callbacks.values())

    def add_callback(self, callback: Callback) -> Callback:
        """Register ``callback``: :meth:`Callback.setup` runs, then its event methods are connected with their
        priorities (:meth:`Callback.priority_of`) and schedule. Errors (a class instead of an instance, a duplicate
        ``state_key``, a bad schedule, a refusal from ``setup``) are raised now and leave nothing registered."""
        if isinstance(callback, type):
            raise TypeError(
                f"add_callback needs an instance, got the class {callback.__name__}; write {callback.__name__}(...)"
            )
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callbacks must be Callback instances, got {callback!r} ({type(callback).__name__}); "
                "for a plain function use trainer.on(event) or trainer.bus.connect(event, fn)"
            )
        if id(callback) in self._callbacks:
            raise ValueError(f"callback {callback.state_key!r} is already registered on this trainer")
        key = callback.state_key
        for other, _ in self._callbacks.values():
            if other.state_key == key:
                raise ValueError(
                    f"two callbacks share state_key {key!r} ({type(other).__name__} and {type(callback).__name__});"
                    f" give the new one a distinct key, e.g. {type(callback).__name__}(..., state_key='{key}_2')"
                )
        if callback.rank_zero_only and self.rank != 0:  # registered (its state has a place) but never set up or run
            self._callbacks[id(callback)] = (callback, ())
            self._idle_callbacks.add(id(callback))
            return callback
        specs = list(callback.handlers())
        callback.setup(self)
        handles: list[Handle] = []
        try:
            for event, method, schedule in specs:
                handles.append(
                    self.bus.connect(
                        event,
                        method,
                        priority=callback.priority_of(event),
                        every=schedule,
                        name=f"{key}.{event.value}",
                    )
                )
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self._callbacks[id(callback)] = (callback, tuple(handles))
        return callback

    def remove_callback(self, callback: Callback) -> None:
        """Unregister ``callback`` (its handlers stop from the next emission), then call its ``teardown``."""
        entry = self._callbacks.pop(id(callback), None)
        if entry is None:
            raise ValueError(f"callback {callback!r} is not registered on this trainer")
        for handle in entry[1]:
            handle.remove()
        if id(callback) in self._idle_callbacks:
            self._idle_callbacks.discard(id(callback))
            return
        callback.teardown(self)

    def handles_of(self, callback: Callback) -> tuple[Handle, ...]:
        """The bus handles of a registered callback, e.g. to disable it at runtime (``h.enabled = False``)."""
        entry = self._callbacks.get(id(callback))
        if entry is None:
            raise ValueError(f"callback {callback!r} is not registered on this trainer")
        return entry[1]

    def on(self, event: Event | str, *, every: ScheduleSpec = None, priority: int = 0) -> Callable[[F], F]:
        """Decorator: ``@trainer.on("post_step", every="100it")`` registers ``fn(trainer, **payload)``.
        Returns the function unchanged; use ``trainer.bus.connect`` for a :class:`~lifecycle.Handle`."""

        def register(fn: F) -> F:
            self.bus.connect(event, fn, priority=priority, every=every)
            return fn

        return register

    # ------------------------------------------------------------------ counters
    def state_dict(self) -> dict[str, Any]:
        """The counters and the data seed: with them a new trainer continues at the exact next batch. ``ended``
        says whether ``post_training`` had been emitted (a run saved at its final ``post_epoch`` had not)."""
        return {"counters": self.state.state_dict(), "seed": self.seed, "ended": self._loop.status is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict` before training starts. The next :meth:`iterate` emits
        ``pre_training(resumed=True)``, ``pre_epoch`` again when the save was mid-epoch, then the next step; the
        trainer's own ``max_epochs`` is kept, so a finished run can be extended. (:meth:`resume` restores a whole
        checkpoint: model, optimizer, callbacks, RNGs and these counters.)"""
        if self._loop.started:
            raise RuntimeError("load_state_dict() must be called before the first iterate()")
        self.state.load_state_dict(self._checked_counters(state))
        self._loop.restore(ended=bool(state.get("ended", True)))

    def _checked_counters(self, state: Any) -> dict[str, int]:
        """The counters of a trainer state dict, checked against this trainer; raises ``ValueError``."""
        if not isinstance(state, dict) or "counters" not in state or "seed" not in state:
            raise ValueError(f"not a trainer state dict (expected keys 'counters' and 'seed'): {_short(state)}")
        counters = dict(state["counters"])
        if counters.get("iterations_per_epoch") != self.state.iterations_per_epoch:
            raise ValueError(
                f"the saved run had {counters.get('iterations_per_epoch')} iterations per epoch, this trainer has "
                f"{self.state.iterations_per_epoch}: dataset size, batch_size or drop_last changed, so the data "
                "position cannot be restored"
            )
        if state["seed"] != self.seed:
            raise ValueError(
                f"the saved run used seed={state['seed']}, this trainer seed={self.seed}: the data "
                f"order would differ; construct the trainer with seed={state['seed']}"
            )
        counters["max_epochs"] = self.state.max_epochs
        if counters.get("epoch", 0) > self.state.max_epochs:
            raise ValueError(
                f"the saved run reached epoch {counters.get('epoch')}, beyond this trainer's "
                f"max_epochs={self.state.max_epochs}"
            )
        State(max_epochs=self.state.max_epochs).load_state_dict(counters)  # validates without touching self.state
        return counters

    def close(self) -> None:
        """Release DataLoader workers (also done when the trainer is garbage-collected) and, in a distributed run,
        the trainer's own side groups: a closed distributed trainer cannot train on. The default process group is
        left alone (whoever started it destroys it; :func:`~trainers.distributed.environment.init_from_env` does so at
        exit)."""
        self._feeder.close()
        if self._collective is not None:
            if self._vote is not None:
                self._vote.abandon()  # normally finished already; after a failure a round may still be pending
            self._collective.close()
            self._forward = self.compute_loss  # DDP's reducer holds the default group: let it go too

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state} phase={self._loop.phase.value} "
            f"callbacks={[cb.state_key for cb in self.callbacks]}>"
        )


def _check_shares(plan: BatchPlan, world: int, drop_last: bool) -> None:
    """Every rank needs at least one item of every batch; uneven shares are allowed but change the gradient."""
    if plan.batch_size is None:
        return  # pre-built batches are checked as they are split
    full, last = plan.batch_sizes()
    if last < world:
        which = "every batch" if last == full else f"the last batch of each epoch ({last} items)"
        raise ValueError(
            f"{which} must have at least one item per rank: batch_size={plan.batch_size} over {world} ranks leaves "
            f"a rank with nothing; use a batch_size >= {world}"
            + ("" if last == full else " and drop_last=True, or a dataset size that divides evenly")
        )
    if full % world or last % world:
        _log.warning(
            "batch_size=%d (last batch %d) does not divide among %d ranks: the shares differ by one item, and "
            "DDP's gradient (the mean over ranks of each rank's mean) weighs items of smaller shares more than a "
            "single process would; use a batch_size divisible by %d%s for the same result",
            full,
            last,
            world,
            world,
            "" if drop_last or last == full else " and drop_last=True",
        )


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | str]:
    """The published metrics that are plain numbers or strings (a tensor value is left out: no device sync)."""
    plain: dict[str, float | int | str] = {}
    for key, value in metrics.items():
        if type(value) in (int, float, str) and isinstance(key, str):
            plain[key] = value
    return plain


def _names(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _check_int(name: str, value: object, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _build_optimizer(spec: OptimizerSpec, pipeline: nn.Module) -> torch.optim.Optimizer:
    params = list(pipeline.parameters())
    if spec is None:
        if not params:
            raise ValueError(
                f"{type(pipeline).__name__} has no parameters to optimise; pass optimizer=... for a custom setup"
            )
        return torch.optim.Adam(params, lr=1e-3)
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec):
        built = spec(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory {spec!r} returned {type(built).__name__}, not a torch.optim.Optimizer"
            )
        return built
    raise TypeError(f"optimizer must be a torch.optim.Optimizer, a factory params -> optimizer, or None; got {spec!r}")


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
