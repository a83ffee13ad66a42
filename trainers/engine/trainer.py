"""``BaseTrainer``: model, optimizer, data and one optimisation step; everything else is a callback.

A facade: it owns the constructor, the app's part (``compute_loss``, ``validate``), the optimisation step and the
lifecycle methods an app may override (each emits its signal; extend with ``super()``), and delegates the rest to
one part each: ``engine.driver`` (what the loop calls at each phase), ``engine.control`` (driving, stop, signals),
``engine.callback_set``, ``engine.requests``, ``engine.directory_locks``, ``data``, ``checkpoint`` and
``distributed.ranks``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset

import trainers.distributed.environment as environment
from lifecycle import Bus, Callback, Event, Handle, Loop, ScheduleSpec, State, Status
from trainers.data.feeder import Feeder
from trainers.data.placement import resolve_device
from trainers.data.plan import BatchPlan
from trainers.distributed.fsdp import check_options as fsdp_options
from trainers.distributed.ranks import Job, Ranks, SingleProcess
from trainers.engine import arguments
from trainers.engine.arguments import LossFn
from trainers.engine.callback_set import CallbackSet
from trainers.engine.checkpoints import CheckpointMethods, Checkpoints
from trainers.engine.collectives import RankMethods
from trainers.engine.control import Control
from trainers.engine.directory_locks import DirectoryLocks, LockMethods
from trainers.engine.driver import LoopDriver
from trainers.engine.inference import inference
from trainers.engine.log_sinks import LogSinks
from trainers.engine.optimization import Optimization, OptimizationMethods, Precision, Strategy
from trainers.engine.optimizers import OptimizerSpec, build_optimizers
from trainers.engine.requests import Requests
from trainers.engine.run_status import RunStatus

__all__ = ["BaseTrainer", "LossFn", "OptimizerSpec"]

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E")


class BaseTrainer(OptimizationMethods, CheckpointMethods, RankMethods, LockMethods, RunStatus):
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
        optimizer: a torch optimizer over ``pipeline``'s parameters, a factory ``params -> optimizer``, ``None``
            for ``Adam(lr=1e-3)``, or a mapping of names to optimizers or factories ``pipeline -> optimizer``
            (see ``trainers.engine.optimizers``); stepped in that order.
        callbacks: registered in order, exactly like :meth:`add_callback`.
        seed: the data order is a pure function of ``(seed, epoch)``. The trainer never seeds torch's global RNG.
        device: ``None`` picks CUDA when available, else the CPU. On the CPU batches are used as the dataset gives
            them; elsewhere every tensor in a batch is moved (non-blocking on CUDA).
        num_workers: DataLoader worker processes (0 fetches in-process, with no DataLoader overhead).
        shuffle: ``False`` visits the dataset in index order every epoch.
        drop_last: drop a final partial batch (kept by default: the last batch of every epoch is stepped).
        collate_fn: how items become a batch (``torch.utils.data.default_collate`` by default).
        loss_fn: ``loss_fn(pipeline, batch)``, used by the default :meth:`compute_loss`.
        run_dir: where callbacks write files (validation images, checkpoints, logs); ``None`` for nowhere. One run
            at a time: the first ``iterate()`` creates it if missing and locks it (``.stepbus.lock``, with every
            checkpoint directory outside it) until the run ends, or raises ``RunDirectoryBusy`` when another process
            holds it.
        precision, accumulate, compile: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"`` (autocast, a GradScaler for
            16); the optimizer steps once per ``accumulate`` iterations; ``True`` or ``torch.compile`` options (see
            ``trainers.engine.optimization``).
        backend, ddp, dist_timeout, vote_every: under ``torchrun`` -- the process group's backend (``"auto"``:
            ``nccl`` on CUDA, else ``gloo``), ``DistributedDataParallel`` options, how long a collective waits for a
            peer (default 300 s, or ``STEPBUS_DIST_TIMEOUT``), and after every how many steps the ranks vote on a
            stop. The trainer then wraps the loss in DDP (``trainer.pipeline`` stays the plain module), gives each
            rank its share of every global batch, and makes ``stop()``, checkpoints and validation collective.
        strategy, fsdp: ``"fsdp"`` shards the pipeline's parameters, gradients and optimizer state over the ranks
            of a job instead (``fully_shard``, in place; ``fsdp`` options: ``trainers.distributed.fsdp``) and
            writes sharded checkpoints (``trainers.checkpoint.sharded``). A single process trains the whole model.
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
        strategy: Strategy = "ddp",
        fsdp: Mapping[str, Any] | None = None,
        dist_timeout: float | timedelta | None = None,
        vote_every: int = 1,
        precision: Precision = "32",
        accumulate: int = 1,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        custom = type(self).optimization_step is not BaseTrainer.optimization_step
        overrides_loss = custom or type(self).compute_loss is not BaseTrainer.compute_loss
        arguments.check_arguments(
            self, pipeline, max_epochs, batch_size, seed, num_workers, vote_every, loss_fn, overrides_loss
        )
        arguments.check_step_options(accumulate, compile)
        arguments.check_strategy(strategy, ddp, fsdp)
        #: ``"ddp"`` or ``"fsdp"``: how a job splits the work (a single process always holds the whole model)
        self.strategy: Strategy = strategy
        size = arguments.dataset_size(dataset)
        self.device = environment.local_device(resolve_device(device))
        timeout = environment.collective_timeout(dist_timeout)
        environment.init_from_env(self.device, backend=backend, timeout=timeout)
        rank, world = environment.rank(), environment.world_size()
        plan = BatchPlan(size, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world)
        plan.check(drop_last)
        self.pipeline = pipeline.to(self.device)
        optimizers = build_optimizers(optimizer, pipeline)
        self.dataset, self.batch_size, self.seed, self.loss_fn = dataset, batch_size, seed, loss_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.state = State(max_epochs=max_epochs, iterations_per_epoch=plan.iterations_per_epoch, accumulate=accumulate)
        self._ranks: Ranks = Job(timeout) if world > 1 else SingleProcess()
        self.bus = Bus(self.state, clock=self._ranks.clock)
        pin = self.device.type == "cuda"
        self._feeder = Feeder(dataset, plan, num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin)
        self._loop = Loop(self.state)
        self._requests = Requests(self, self.state)
        self._locks = DirectoryLocks(self, self._loop, self._ranks, self._requests)
        self._driver = LoopDriver(
            self, self._loop, self._feeder, self._requests, self._ranks, vote_every=vote_every, locks=self._locks
        )
        self._control = Control(self._loop, self._driver, self._ranks, self.state)
        self._callbacks = CallbackSet(self, self.bus, self._ranks.rank)
        self._checkpoints = Checkpoints(self, self._loop, self._driver, self._ranks)
        self._extensions: dict[type[Any], Any] = {}
        self._log_sinks = LogSinks()
        #: the resolved configuration (plain containers), saved in every checkpoint's metadata
        self.config: dict[str, Any] | None = None
        #: the checkpoint this run was restored from, if any
        self.resumed_from: Path | None = None
        # the hot path emits through cached channels: "if channel.active" costs one attribute test when idle
        channel = self.bus.channel
        self._pre_training, self._pre_epoch = channel(Event.PRE_TRAINING), channel(Event.PRE_EPOCH)
        self._pre_step, self._step, self._post_step = map(channel, (Event.PRE_STEP, Event.STEP, Event.POST_STEP))
        self._post_epoch, self._post_training = channel(Event.POST_EPOCH), channel(Event.POST_TRAINING)
        self._exception = channel(Event.EXCEPTION)
        self._pre_validation, self._post_validation = channel(Event.PRE_VALIDATION), channel(Event.POST_VALIDATION)
        # per-step events with a fixed payload: dispatched without unpacking a dict per handler (lifecycle.emitters)
        self._emit_pre_step = self._pre_step.emitter("batch")
        self._emit_post_step = self._post_step.emitter("outputs")
        self._optimization = Optimization(
            self, self._ranks, self._step, optimizers=optimizers, custom=custom, precision=precision, compile=compile,
            ddp=ddp, strategy=strategy, fsdp=fsdp_options(fsdp) if strategy == "fsdp" else None,
        )  # fmt: skip
        if self._optimization.scaler is not None:
            self.track("grad_scaler", self._optimization.scaler)  # its scale and growth count resume exactly
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

    def reload_data(self, dataset: Dataset[Any] | Sequence[Any] | None = None) -> None:
        """The data changed (``dataset``: a new one): rebuild the batch plan for its length and restart DataLoader
        workers at the next epoch's start, or at once from ``pre_epoch`` (``trainers.engine.reload``)."""
        self._driver.reload.request(dataset)

    def inference(self) -> AbstractContextManager[None]:
        """``with trainer.inference():`` the pipeline in eval mode under ``no_grad``; afterwards every module's train
        flag and the RNG states are restored (``trainers.engine.inference``): for renders between GUI ticks."""
        return inference(self.pipeline)

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
            self._emit_pre_step(self, batch)

    def step(self, batch: Any) -> dict[str, Any]:
        """One iteration's optimisation (``trainers.engine.optimization``): zero_grad at a window's start,
        :meth:`compute_loss` under the precision's autocast, backward; at a window's end the ``step`` event, then the
        optimizer step. Returns the outputs dict (``{"loss": loss}`` when ``compute_loss`` returned a tensor)."""
        return self._optimization.run(batch)

    def optimization_step(self, batch: Any) -> torch.Tensor | dict[str, Any]:
        """Override to order the updates yourself (a GAN): compute losses, call :meth:`backward` and
        :meth:`optimizer_step` for each optimizer; return the loss or an outputs dict with ``"loss"``. It runs under
        the precision's autocast after the window's ``zero_grad``; the default step (:meth:`step`) never calls it."""
        raise NotImplementedError  # pragma: no cover - only called when a subclass overrides it

    def post_step(self, outputs: dict[str, Any]) -> None:
        """Emits ``post_step(outputs=...)``: the optimizer has stepped, counters are final for this step."""
        if self._post_step.active:
            self._emit_post_step(self, outputs)

    def post_epoch(self) -> None:
        """Emits ``post_epoch``."""
        if self._post_epoch.active:
            self._post_epoch.emit(self)

    def post_training(self, status: Status) -> None:
        """Emits ``post_training(status=...)``, exactly once per run."""
        if self._post_training.active:
            self._post_training.emit(self, status=status)

    def pre_validation(self, **payload: Any) -> None:
        """Emits ``pre_validation``; a validator calls it before it computes."""
        if self._pre_validation.active:
            self._pre_validation.emit(self, **payload)

    def post_validation(self, metrics: Mapping[str, float], **payload: Any) -> None:
        """Emits ``post_validation(metrics=...)``; a validator calls it once its metrics are in ``state.metrics``."""
        if self._post_validation.active:
            self._post_validation.emit(self, metrics=metrics, **payload)

    def on_exception(self, error: BaseException) -> None:
        """Emits ``exception(error=...)``; ``post_training(status="failed")`` follows, then the error propagates."""
        if self._exception.active:
            self._exception.emit(self, error=error)

    # ------------------------------------------------------------------ driving (trainers.engine.control)
    def iterate(self) -> bool:
        """Run exactly one step plus the lifecycle events around it; return whether training continues (after the
        end ``False``, emitting nothing; while paused ``True``, doing nothing)."""
        return self._control.iterate() if not self._locks.due else self._locks.run(self._control.iterate)

    def train(self, *, handle_signals: bool = True) -> Status | None:
        """Un-pause, then iterate until the run ends (returns its status) or is paused (returns ``None``). With
        ``handle_signals``, SIGINT and SIGTERM end it gracefully (``Status.INTERRUPTED``; see
        ``trainers.engine.signals``): the step finishes, a checkpointer saves, ``post_training`` fires once."""
        return self._locks.run(lambda: self._control.train(handle_signals=handle_signals))

    def run_for(self, seconds: float) -> bool:
        """Iterate for about ``seconds`` (at least one step), for a GUI frame; return whether training continues."""
        return self._locks.run(lambda: self._control.run_for(seconds))

    def pause(self) -> None:
        """``iterate()`` does nothing until :meth:`resume`; ``train()`` returns after the current step."""
        self._loop.paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` (:meth:`restore` loads a checkpoint)."""
        self._loop.paused = False

    def stop(self, reason: str | None = None) -> None:
        """End the run: from a handler, after the current step (``post_epoch`` and ``post_training(status=
        "stopped")`` follow once each); from outside ``iterate()``, at once. Idempotent. In a distributed run a
        stop on any rank stops every rank at the same iteration (``trainers.distributed.stop_vote``). The first
        ``reason`` given becomes :attr:`stop_reason`, which the progress summary shows."""
        self._control.stop(reason)

    # ------------------------------------------------------------------ requests (trainers.engine.requests)
    def request_validation(self, name: str | None = None) -> None:
        """Ask every validator to run, or the one ``name`` names (its prefix or state_key, served as the request kind
        ``"validation:<name>"``): at once between steps, else at the next safe point (see ``engine.requests``)."""
        self.request("validation" if name is None else f"validation:{name}")

    def request_checkpoint(self) -> None:
        """Ask the checkpointer(s) to save: at once between steps, else at the next resumable point."""
        self.request("checkpoint")

    def request(self, kind: str) -> None:
        """Ask for an on-demand action by name (``"validation"``, or whatever a callback serves)."""
        self._requests.request(kind, defer=self._loop.in_iterate)

    def serve(self, kind: str, fn: Callable[[BaseTrainer], None], *, name: str) -> Callable[[], None]:
        """For callbacks: serve ``kind`` requests with ``fn(trainer)``; returns the function that stops serving."""
        return self._requests.serve(kind, name, fn)

    def servers(self, kind: str) -> tuple[str, ...]:
        """The names of the callbacks serving ``kind`` requests, in order (empty: :meth:`request` would raise)."""
        return self._requests.servers(kind)

    def log(self, name: str, value: Any) -> None:
        """Send ``value`` -- a number or scalar tensor, an ``HxWxC`` image tensor, or a string -- to every logger
        now, at the current iteration (``trainers.engine.log_sinks``); on ranks other than 0 it does nothing."""
        if self._ranks.rank == 0:
            self._log_sinks.emit(name, value, self.state.iteration)

    def log_sink(self, fn: Callable[[str, Any, int], None], *, name: str) -> Callable[[], None]:
        """For loggers: receive every :meth:`log` as ``fn(name, value, iteration)``; returns what stops it."""
        return self._log_sinks.add(fn, name)

    # ------------------------------------------------------------------ where the run stands
    @property
    def defines_validate(self) -> bool:
        """Whether this trainer's class overrides :meth:`validate` (a Validator without ``fn`` needs it)."""
        return type(self).validate is not BaseTrainer.validate

    def extension(self, cls: type[E]) -> E:
        """This trainer's one instance of ``cls``, built as ``cls(trainer)`` on first use: state that several
        callbacks share (the loggers' metric flow) without the engine knowing what it is."""
        found = self._extensions.get(cls)
        if found is None:
            found = self._extensions[cls] = cls(self)  # type: ignore[call-arg]
        return found

    # ------------------------------------------------------------------ callbacks (trainers.engine.callback_set)
    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """Registered callbacks in registration order."""
        return self._callbacks.callbacks

    def add_callback(self, callback: Callback) -> Callback:
        """Register ``callback``: its ``setup`` runs, then its event methods are connected with their priorities and
        schedule. Errors (a class, a duplicate ``state_key``, a bad schedule, a refusal) leave nothing registered."""
        return self._callbacks.add(callback)

    def remove_callback(self, callback: Callback) -> None:
        """Unregister ``callback`` (its handlers stop from the next emission), then call its ``teardown``."""
        self._callbacks.remove(callback)

    def handles_of(self, callback: Callback) -> tuple[Handle, ...]:
        """The bus handles of a registered callback, e.g. to disable it at runtime (``h.enabled = False``)."""
        return self._callbacks.handles_of(callback)

    def on(self, event: Event | str, *, every: ScheduleSpec = None, priority: int = 0) -> Callable[[F], F]:
        """Decorator: ``@trainer.on("post_step", every="100it")`` registers ``fn(trainer, **payload)`` on the bus."""
        return self.bus.on(event, every=every, priority=priority)

    # ------------------------------------------------------------------ counters
    def state_dict(self) -> dict[str, Any]:
        """The counters and the data seed: with them a new trainer continues at the exact next batch. ``ended``
        says whether ``post_training`` had been emitted (a run saved at its final ``post_epoch`` had not)."""
        return {
            "counters": self.state.state_dict(),
            "seed": self.seed,
            "ended": self._loop.status is not None,
            "data_size": self._driver.reload.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict` before training starts; the trainer's own ``max_epochs`` is
        kept, so a finished run can be extended. (:meth:`restore` loads a whole checkpoint.)"""
        self._checkpoints.load_counters(state)

    def close(self) -> None:
        """Release DataLoader workers (also done when the trainer is garbage-collected), the run directory's lock
        (taken again if an unfinished run is driven on) and, in a distributed run, the trainer's own side groups: a
        closed distributed trainer cannot train on. The default process group is left alone
        (:func:`~trainers.distributed.environment.init_from_env` destroys it at exit)."""
        self._locks.close()
        self._feeder.close()
        self._ranks.close()
        self._optimization.forward = self.compute_loss

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state} phase={self._loop.phase.value} "
            f"callbacks={[cb.state_key for cb in self.callbacks]}>"
        )
