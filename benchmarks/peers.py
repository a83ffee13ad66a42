"""The peers -- PyTorch-Ignite's ``Engine`` and Lightning's ``Trainer`` -- running the overhead benchmark's workload.

They come from the optional extra ``stepbus[bench]`` (``pytorch-ignite``, ``lightning``); nothing here installs
anything. :func:`versions` says which are importable; a missing peer's rows are reported as missing, not faked.

Every runner trains (or, with ``null=True``, merely iterates over) the same pre-built batches and returns a
:class:`Timing`: the steady-state time from the framework's own "training started" event to its "training ended"
event, and the whole call, whose difference is the framework's fixed start-up and tear-down cost.

* Ignite, bare: ``Engine(update)`` with nothing attached; ``autocast=torch.bfloat16``: the same update with its
  forward pass and loss under ``torch.autocast("cpu", ...)`` (``create_supervised_trainer(amp_mode="amp")`` autocasts
  for CUDA only, so on the CPU a custom update function is how an Ignite user gets bf16).
* Ignite, stock trainer (:func:`ignite_supervised_run`): ``create_supervised_trainer(model, optimizer, mse_loss,
  device="cpu", **options)``, e.g. ``gradient_accumulation_steps=4``; its update also calls ``model.train()``, moves
  the batch with ``prepare_batch`` and returns ``loss.item()`` every iteration.
* Ignite, handlers: what stepbus's default set does, with Ignite's own handlers -- ``ProgressBar`` (tqdm, into a
  buffer), ``TensorboardLogger`` every 50 iterations, ``LRScheduler`` (MultiStepLR at Wisp's 50/75/90 %),
  ``Checkpoint`` + ``DiskSaver`` every epoch (keep 3), and a non-finite check every 50 iterations in the update.
* Lightning, extras off: ``Trainer(barebones=True)``; ``options`` adds ``Trainer`` arguments (e.g.
  ``accumulate_grad_batches=4``, ``precision="bf16-mixed"``).
* Lightning, defaults: ``Trainer()`` as it comes -- progress bar (into a buffer), ``TensorBoardLogger`` (every 50
  steps, its default) with ``self.log("train/loss")``, ``ModelCheckpoint`` every epoch, model summary -- plus the
  same LR decay (a step-interval MultiStepLR).
* ``null=True``: no forward, backward or optimizer step, so only the engine runs; ``noop_handlers=10`` attaches ten
  no-op handlers/callbacks on the same mix of events as the stepbus benchmark's ten no-op callbacks.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.workload import Batch, Discard, Timing, make_model

__all__ = ["PEERS", "ignite_run", "ignite_supervised_run", "lightning_run", "versions"]

#: import name -> distribution name
PEERS = {"ignite": "pytorch-ignite", "lightning": "lightning"}
MILESTONES = (0.5, 0.75, 0.9)
GAMMA = 0.333


def versions() -> dict[str, str | None]:
    """Each peer's version, or ``None`` when it is not installed (``pip install stepbus[bench]``)."""
    found: dict[str, str | None] = {}
    for module in PEERS:
        try:
            with warnings.catch_warnings():  # their imports warn about torch.jit deprecations
                warnings.simplefilter("ignore")
                found[module] = str(importlib.import_module(module).__version__)
        except ImportError:
            found[module] = None
    return found


def _milestones(total: int) -> list[int]:
    return [round(m * total) for m in MILESTONES]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Progress bars and banners into a buffer; the peers' info logs and deprecation chatter off."""
    loggers = [logging.getLogger(name) for name in ("lightning", "lightning.pytorch", "lightning.fabric", "ignite")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(Discard()),
            contextlib.redirect_stderr(Discard()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ---------------------------------------------------------------- Ignite
def ignite_run(
    batches: Sequence[Batch],
    epochs: int,
    *,
    handlers: bool = False,
    null: bool = False,
    noop_handlers: int = 0,
    tmp: Path | None = None,
    autocast: torch.dtype | None = None,
) -> Timing:
    from ignite.engine import Engine, Events

    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    model.train()

    def update(engine: Any, batch: Batch) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()  # type: ignore[no-untyped-call]
        if handlers and engine.state.iteration % 50 == 0:  # the gradient guard's default: a check every 50 it
            finite = torch.stack([torch.isfinite(p.grad).all() for p in params if p.grad is not None]).all()
            if not bool(finite & torch.isfinite(loss)):
                return loss
        optimizer.step()
        return loss

    def update_autocast(engine: Any, batch: Batch) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast):
            loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss

    def nothing(engine: Any, batch: Batch) -> None:
        return None

    engine = Engine(nothing if null else update if autocast is None else update_autocast)
    if noop_handlers:
        _ignite_noops(engine, Events)
    closers: list[Any] = []
    if handlers:
        closers = _ignite_handlers(engine, Events, model, optimizer, epochs * len(batches), tmp)
    return _ignite_timed(engine, batches, epochs, closers)


def ignite_supervised_run(batches: Sequence[Batch], epochs: int, **options: Any) -> Timing:
    """Ignite's stock trainer: ``create_supervised_trainer(model, optimizer, mse_loss, device="cpu", **options)``."""
    from ignite.engine import create_supervised_trainer

    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = create_supervised_trainer(model, optimizer, nn.functional.mse_loss, device="cpu", **options)
    return _ignite_timed(engine, batches, epochs, [])


def _ignite_timed(engine: Any, batches: Sequence[Batch], epochs: int, closers: Sequence[Any]) -> Timing:
    """Run ``engine`` over ``batches``, timed from its ``STARTED`` event to its ``COMPLETED`` event."""
    from ignite.engine import Events

    marks: dict[str, int] = {}
    engine.add_event_handler(Events.STARTED, lambda _: marks.__setitem__("start", time.perf_counter_ns()))
    engine.add_event_handler(Events.COMPLETED, lambda _: marks.__setitem__("end", time.perf_counter_ns()))
    with _quiet():
        start = time.perf_counter_ns()
        engine.run(list(batches), max_epochs=epochs)
        for close in closers:
            close()
        total = time.perf_counter_ns() - start
    return Timing((marks["end"] - marks["start"]) / 1e3, total / 1e3)


def _ignite_noops(engine: Any, events: Any) -> None:
    """Ten no-op handlers, the mix of the stepbus benchmark's ten no-op callbacks: six every iteration, two
    filtered (every 50 iterations, once a minute), an epoch pair and a run pair."""

    def noop(engine: Any) -> None:
        pass

    minute = {"next": time.monotonic() + 60.0}

    def once_a_minute(engine: Any, event: int) -> bool:
        if time.monotonic() < minute["next"]:
            return False
        minute["next"] += 60.0
        return True

    for event in [events.ITERATION_STARTED] * 3 + [events.ITERATION_COMPLETED] * 3:
        engine.add_event_handler(event, noop)
    engine.add_event_handler(events.ITERATION_COMPLETED(every=50), noop)
    engine.add_event_handler(events.ITERATION_COMPLETED(event_filter=once_a_minute), noop)
    engine.add_event_handler(events.EPOCH_STARTED | events.EPOCH_COMPLETED, noop)
    engine.add_event_handler(events.STARTED | events.COMPLETED, noop)


def _ignite_handlers(
    engine: Any, events: Any, model: nn.Module, optimizer: torch.optim.Optimizer, total: int, tmp: Path | None
) -> list[Any]:
    from ignite.handlers import Checkpoint, DiskSaver, LRScheduler, ProgressBar
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    if tmp is None:
        raise ValueError("Ignite's handlers need a directory for the TensorBoard files and checkpoints")
    ProgressBar(file=Discard()).attach(engine)
    board = TensorboardLogger(log_dir=str(tmp / "tb"))
    board.attach_output_handler(
        engine,
        event_name=events.ITERATION_COMPLETED(every=50),
        tag="train",
        output_transform=lambda loss: {"loss": loss},
    )
    decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=_milestones(total), gamma=GAMMA)
    engine.add_event_handler(events.ITERATION_COMPLETED, LRScheduler(decay))
    saver = DiskSaver(str(tmp / "checkpoints"), require_empty=False)
    state = {"model": model, "optimizer": optimizer, "trainer": engine}
    engine.add_event_handler(events.EPOCH_COMPLETED, Checkpoint(state, saver, n_saved=3))
    return [board.close]


# ---------------------------------------------------------------- Lightning
class _Batches:
    """The pre-built batches as one loader (a bare list would be taken for a list of loaders)."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_run(
    batches: Sequence[Batch],
    epochs: int,
    *,
    defaults: bool = False,
    null: bool = False,
    noop_handlers: int = 0,
    tmp: Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Timing:
    import lightning as L

    total_steps = epochs * len(batches)
    marks: dict[str, int] = {}

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model(0)
            self.automatic_optimization = not null

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
            if null:
                return None
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            if defaults:
                self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
            if not defaults:
                return optimizer
            decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=_milestones(total_steps), gamma=GAMMA)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    class Clock(L.Callback):
        def on_train_start(self, trainer: Any, module: Any) -> None:
            marks["start"] = time.perf_counter_ns()

        def on_train_end(self, trainer: Any, module: Any) -> None:
            marks["end"] = time.perf_counter_ns()

    callbacks: list[Any] = [Clock()]
    if noop_handlers:
        callbacks += _lightning_noops(L)
    arguments: dict[str, Any] = {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "callbacks": callbacks}
    if defaults:
        if tmp is None:
            raise ValueError("Lightning's defaults need a directory for its logs and checkpoints")
        arguments["default_root_dir"] = str(tmp)
    else:
        arguments["barebones"] = True
    arguments.update(options or {})
    with _quiet():
        start = time.perf_counter_ns()
        trainer = L.Trainer(**arguments)
        trainer.fit(Module(), train_dataloaders=_Batches(batches))
        total = time.perf_counter_ns() - start
    return Timing((marks["end"] - marks["start"]) / 1e3, total / 1e3)


def _lightning_noops(L: Any) -> list[Any]:
    """Ten no-op callbacks on the mix of events of the stepbus benchmark's ten (Lightning has no schedules: the
    two periodic ones check the batch index or the clock themselves)."""

    class BatchStart(L.Callback):  # type: ignore[misc]
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            pass

    class BatchEnd(L.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            pass

    class Every50(L.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fired = 0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step % 50 == 0:
                self.fired += 1

    class EveryMinute(L.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.next = time.monotonic() + 60.0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if time.monotonic() >= self.next:
                self.next += 60.0

    class Epochs(L.Callback):  # type: ignore[misc]
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            pass

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            pass

    class Run(L.Callback):  # type: ignore[misc]
        def on_train_start(self, trainer: Any, module: Any) -> None:
            pass

        def on_train_end(self, trainer: Any, module: Any) -> None:
            pass

    per_step = [BatchStart(), BatchStart(), BatchStart(), BatchEnd(), BatchEnd(), BatchEnd()]
    return [*per_step, Every50(), EveryMinute(), Epochs(), Run()]
