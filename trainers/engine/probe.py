"""Optimizer steps taken outside a trainer's run, on a copy of its state: what a learning-rate range test needs.

``with Probe(trainer) as probe: loss = probe.step()`` runs the trainer's own optimisation step -- ``compute_loss``
or ``optimization_step``, the precision's autocast and GradScaler, accumulation windows, every optimizer in order
-- on batches of the trainer's data, and on leaving puts everything back as it was. The run never notices:

* **no events**: the step runs through a copy of the trainer's :class:`~trainers.engine.optimization.Optimization`
  whose ``step`` channel has no handlers, and no other lifecycle method is called, so callbacks see nothing (no
  logger row, no checkpoint, no validation); ``trainer.log()`` goes nowhere while the probe runs;
* **its own data**: batches come from a separate in-process :class:`~trainers.data.feeder.Feeder` over the same
  dataset and batch plan (the run's first epochs, in the run's order), so the run's data position and DataLoader
  workers are untouched;
* **its own windows**: an optimizer step is ``accumulate`` micro-batches, counted by the probe, not by
  ``trainer.state``;
* **everything restored**: parameters and buffers (values copied back), gradients (the very tensors the run had),
  the optimizers' state and hyper-parameters (each optimizer steps on a clone of its state; the original objects
  are put back), the GradScaler (the probe steps a copy), ``trainer.state`` (counters and metrics), each module's
  train/eval flag and the RNG states (torch, CUDA, ``random``, numpy).

One process only (a distributed job's ranks would each have to agree on every step), and never from inside
``iterate()``: between runs, before ``train()``, or between GUI ticks.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch

from lifecycle import Bus, Event, State
from trainers.checkpoint.rng import capture_rng, restore_rng
from trainers.data.feeder import Feeder
from trainers.data.placement import to_device
from trainers.engine.log_sinks import LogSinks
from trainers.engine.optimization import Optimization

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["Probe"]


class _QuietOptimization(Optimization):
    """The trainer's step, with no ``step`` handlers and windows counted by the probe (see the module docstring)."""

    __slots__ = ("_micro",)

    def __init__(self, real: Optimization, trainer: BaseTrainer) -> None:  # a copy: Optimization.__init__ builds anew
        for name in Optimization.__slots__:  # every part of the real step: forward (compiled, DDP), optimizers ...
            setattr(self, name, getattr(real, name))
        self._channel = Bus(State()).channel(Event.STEP)  # nobody listens: the step event is never emitted
        self.scaler = copy.deepcopy(real.scaler)  # its scale and growth tracker move on a copy
        self._skip, self._unscaled, self._stepped = False, set(), set()
        self._micro = 0
        self._trainer = trainer

    def window(self, state: State) -> tuple[bool, bool, int]:
        """Every window is ``accumulate`` micro-batches long: the probe's steps do not follow the run's epochs."""
        n = state.accumulate
        return self._micro == 0, self._micro == n - 1, n

    def _close_window(self) -> None:
        """As the run's, without counting ``state.optimizer_step``: the probe's steps are not the run's."""
        if self.scaler is not None and self._stepped:
            self.scaler.update()
        self._unscaled.clear()
        self._stepped.clear()


@dataclasses.dataclass
class _Saved:
    """What the probe puts back (see the module docstring)."""

    tensors: list[tuple[torch.Tensor, torch.Tensor]]  # (parameter or buffer, a clone of its value)
    grads: list[tuple[torch.Tensor, torch.Tensor | None]]
    optimizer_states: list[tuple[torch.optim.Optimizer, Any, list[dict[str, Any]]]]
    state: dict[str, Any]
    training: list[tuple[torch.nn.Module, bool]]
    rng: dict[str, Any]
    optimization: Optimization
    log_sinks: LogSinks


class Probe:
    """Optimizer steps on a trainer outside its run, undone on leaving the ``with`` block (see the module
    docstring). ``step()`` takes one optimizer step -- ``accumulate`` micro-batches -- and returns the mean of their
    losses as a float (one device sync per step). Set hyper-parameters (the learning rate) on
    ``trainer.optimizers[...]`` inside the block: they are restored too."""

    def __init__(self, trainer: BaseTrainer) -> None:
        if trainer._loop.in_iterate:
            raise RuntimeError(
                "optimizer steps outside the run cannot be taken from inside iterate() (a handler): "
                "call it between iterate() calls, e.g. before train()"
            )
        if trainer.world_size > 1:
            raise RuntimeError(
                f"optimizer steps outside the run need a single process; this is rank {trainer.rank} of "
                f"{trainer.world_size}: run it without torchrun"
            )
        self.trainer = trainer
        self._saved: _Saved | None = None
        self._quiet: _QuietOptimization | None = None
        self._feeder: Feeder | None = None
        self._batches: Iterator[Any] = iter(())
        self._epoch = 0
        #: optimizer steps taken in this block
        self.steps = 0

    # ------------------------------------------------------------------ entering and leaving
    def __enter__(self) -> Probe:
        t = self.trainer
        real = t._optimization
        feeder = t._feeder
        self._feeder = Feeder(
            feeder.dataset, feeder.plan, num_workers=0, collate_fn=feeder.user_collate, pin_memory=False
        )
        self._quiet = _QuietOptimization(real, t)  # copies references only: nothing of the trainer changes yet
        parameters = _parameters(t)
        self._saved = _Saved(
            tensors=[(x, x.detach().clone()) for x in _tensors(t)],
            grads=[(p, p.grad) for p in parameters],
            optimizer_states=[],
            state={f.name: copy.copy(getattr(t.state, f.name)) for f in dataclasses.fields(State)},
            training=[(m, m.training) for m in t.pipeline.modules()],
            rng=capture_rng(),
            optimization=real,
            log_sinks=t._log_sinks,
        )
        try:
            for optimizer in real.optimizers.values():
                self._saved.optimizer_states.append(_swap_in_copy(optimizer))
            for p in parameters:
                p.grad = None  # the run's gradients stay as they are; the probe's accumulate in new tensors
            t._optimization = self._quiet  # backward()/optimizer_step() of an optimization_step land here too
            t._log_sinks = LogSinks()
            t.pipeline.train()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        saved, self._saved = self._saved, None
        self._quiet, self._feeder, self._batches = None, None, iter(())
        if saved is None:
            return
        t = self.trainer
        t._optimization, t._log_sinks = saved.optimization, saved.log_sinks
        with torch.no_grad():
            for tensor, value in saved.tensors:
                tensor.copy_(value)
        for parameter, grad in saved.grads:
            parameter.grad = grad
        for optimizer, state, groups in saved.optimizer_states:
            optimizer.state = state
            for group, options in zip(optimizer.param_groups, groups, strict=True):
                group.clear()
                group.update(options)
        for name, value in saved.state.items():
            setattr(t.state, name, value)
        for module, training in saved.training:
            module.training = training
        restore_rng(saved.rng)

    # ------------------------------------------------------------------ stepping
    def step(self) -> float:
        """One optimizer step (``accumulate`` micro-batches); the mean of their losses."""
        quiet = self._quiet
        if quiet is None:
            raise RuntimeError("Probe.step() runs inside its `with` block only")
        t = self.trainer
        total: torch.Tensor | None = None
        n = t.state.accumulate
        for micro in range(n):
            quiet._micro = micro
            outputs = quiet.run(self._next_batch())
            loss = outputs["loss"].detach().float()
            total = loss if total is None else total + loss
        self.steps += 1
        assert total is not None
        return float(total.item()) / n

    def _next_batch(self) -> Any:
        assert self._feeder is not None
        for _ in range(2):
            try:
                batch = next(self._batches)
            except StopIteration:
                self._epoch += 1  # the run's epochs in order: 1, 2, ...
                self._batches = self._feeder.epoch(self._epoch, 0)
                continue
            device = self.trainer.device
            return batch if device.type == "cpu" else to_device(batch, device, device.type == "cuda")
        raise RuntimeError(f"the data yielded no batch for epoch {self._epoch}")


def _parameters(trainer: BaseTrainer) -> list[torch.Tensor]:
    """The pipeline's parameters and any other parameter an optimizer holds, each once."""
    found: dict[int, torch.Tensor] = {id(p): p for p in trainer.pipeline.parameters()}
    for optimizer in trainer.optimizers.values():
        for group in optimizer.param_groups:
            for p in group["params"]:
                found.setdefault(id(p), p)
    return list(found.values())


def _tensors(trainer: BaseTrainer) -> list[torch.Tensor]:
    """Every tensor a step may change in place: the parameters and all buffers (non-persistent ones included)."""
    found: dict[int, torch.Tensor] = {id(p): p for p in _parameters(trainer)}
    for buffer in trainer.pipeline.buffers():
        found.setdefault(id(buffer), buffer)
    return list(found.values())


def _swap_in_copy(optimizer: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, Any, list[dict[str, Any]]]:
    """Give ``optimizer`` a clone of its state to step on; returns what puts the original back (the state object
    itself and each group's options)."""
    original = optimizer.state
    optimizer.state = defaultdict(dict, {p: _cloned(s) for p, s in original.items()})
    groups = [dict(group) for group in optimizer.param_groups]
    for group, options in zip(optimizer.param_groups, groups, strict=True):
        group.update({k: copy.deepcopy(v) for k, v in options.items() if k != "params"})
    return optimizer, original, groups


def _cloned(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}
