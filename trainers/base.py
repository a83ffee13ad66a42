"""``BaseTrainer``: model, optimizer, data and one optimisation step; everything else is a callback."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset

from callbacks.base import Callback
from lifecycle import Bus, Event, Handle, Loop, Phase, ScheduleSpec, State, Status
from trainers.data import BatchPlan, Feeder
from trainers.placement import resolve_device, to_device
from trainers.requests import Requests

__all__ = ["BaseTrainer", "LossFn", "OptimizerSpec"]

#: ``compute_loss`` without subclassing: ``loss_fn(pipeline, batch) -> Tensor | dict`` (a dict has ``"loss"``).
LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, Any]"]
#: A built optimizer, or a factory ``params -> optimizer``.
OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None
F = TypeVar("F", bound=Callable[..., Any])


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
        self.trainer.pre_training()

    def begin_epoch(self) -> None:
        t = self.trainer
        t.pipeline.train()
        self._batches = t._feeder.epoch(t.state.epoch, t.state.epoch_iteration)
        t.pre_epoch()

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
        t.pre_step(batch)
        outputs = t.step(batch)
        t.post_step(outputs)
        if t._requests.pending:  # requested during the step: served now, before post_epoch
            t._requests.drain()

    def end_epoch(self) -> None:
        self._batches = iter(())
        t = self.trainer
        t.post_epoch()
        if t._requests.pending:
            t._requests.drain()

    def end_training(self, status: Status) -> None:
        t = self.trainer
        if t._requests.pending and status in (Status.COMPLETED, Status.STOPPED):
            t._requests.drain()  # before post_training, so loggers still receive what the requests publish
        t.post_training(status)

    def fail(self, error: BaseException) -> None:
        self.trainer.on_exception(error)


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
    ) -> None:
        if not isinstance(pipeline, nn.Module):
            raise TypeError(f"pipeline must be a torch.nn.Module, got {type(pipeline).__name__}")
        _check_int("max_epochs", max_epochs, minimum=1)
        if batch_size is not None:
            _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=None)
        _check_int("num_workers", num_workers, minimum=0)
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
        plan = BatchPlan(size, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
        if plan.iterations_per_epoch < 1:
            raise ValueError(
                f"dataset of {size} items with batch_size={batch_size}, drop_last={drop_last} gives no batch per "
                "epoch; use a smaller batch_size or drop_last=False"
            )

        self.device = resolve_device(device)
        self.pipeline = pipeline.to(self.device)
        self.optimizer = _build_optimizer(optimizer, pipeline)
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.loss_fn = loss_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.state = State(max_epochs=max_epochs, iterations_per_epoch=plan.iterations_per_epoch)
        self.bus = Bus(self.state)
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
        self._callbacks: dict[int, tuple[Callback, tuple[Handle, ...]]] = {}
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
        result = self.compute_loss(batch)
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
        return self._loop.iterate(self._host)

    def train(self) -> Status | None:
        """Iterate until the run ends (returns its status) or a callback calls :meth:`pause` (returns ``None``;
        call ``train()`` again to continue). Un-pauses first."""
        loop, host = self._loop, self._host
        loop.paused = False
        while loop.iterate(host):
            if loop.paused:
                return None
        return loop.status

    def run_for(self, seconds: float) -> bool:
        """Iterate for about ``seconds`` of wall time (at least one step), for a GUI frame; return whether
        training continues."""
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

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._loop.paused = False

    def stop(self) -> None:
        """End the run: from a handler, after the current step (``post_epoch`` and ``post_training(status=
        "stopped")`` follow once each); from outside ``iterate()``, at once. Idempotent."""
        self._loop.stop(self._host)

    def request_validation(self) -> None:
        """Ask every registered validator to run: at once when called between steps (a GUI button), or at the
        next safe point of the running ``iterate()`` when called from a handler (see ``trainers.requests``).
        Raises ``RuntimeError`` when no callback serves validation requests."""
        self._requests.request("validation", defer=self._loop.in_iterate)

    def request(self, kind: str) -> None:
        """Ask for an on-demand action by name (``"validation"``, or whatever a callback serves)."""
        self._requests.request(kind, defer=self._loop.in_iterate)

    def serve(self, kind: str, fn: Callable[[BaseTrainer], None], *, name: str) -> Callable[[], None]:
        """For callbacks: serve ``kind`` requests with ``fn(trainer)``; returns the function that stops serving
        (call it from ``teardown``)."""
        return self._requests.serve(kind, name, fn)

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
    def defines_validate(self) -> bool:
        """Whether this trainer's class overrides :meth:`validate` (a Validator without ``fn`` needs it)."""
        return type(self).validate is not BaseTrainer.validate

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
        """Register ``callback``: :meth:`Callback.setup` runs, then its event methods are connected with its
        priority and schedule. Errors (a class instead of an instance, a duplicate ``state_key``, a bad schedule,
        a refusal from ``setup``) are raised now and leave nothing registered."""
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
        specs = list(callback.handlers())
        callback.setup(self)
        handles: list[Handle] = []
        try:
            for event, method, schedule in specs:
                handles.append(
                    self.bus.connect(
                        event, method, priority=callback.priority, every=schedule, name=f"{key}.{event.value}"
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
        """The counters and the data seed: with them a new trainer continues at the exact next batch."""
        return {"counters": self.state.state_dict(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters saved by :meth:`state_dict` before training starts. The next :meth:`iterate` emits
        ``pre_training(resumed=True)``, ``pre_epoch`` again when the save was mid-epoch, then the next step; the
        trainer's own ``max_epochs`` is kept, so a finished run can be extended."""
        if self._loop.started:
            raise RuntimeError("load_state_dict() must be called before the first iterate()")
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
        self.state.load_state_dict(counters)
        self._loop.restore()

    def close(self) -> None:
        """Release DataLoader workers (also done when the trainer is garbage-collected)."""
        self._feeder.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state} phase={self._loop.phase.value} "
            f"callbacks={[cb.state_key for cb in self.callbacks]}>"
        )


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
