"""The optimisation step around ``compute_loss``: precision, gradient accumulation, the ``step`` event, the update.

One iteration (``BaseTrainer.step``) runs, in order:

1. at the first micro-batch of an accumulation window: ``zero_grad`` on every optimizer;
2. ``compute_loss(batch)`` -- under ``torch.autocast`` in a mixed precision, through DDP in a job, compiled with
   ``compile=`` -- and ``backward`` of the loss divided by the window's number of micro-batches (so that
   ``accumulate=N`` with batch ``B`` computes the gradient of batch ``N*B`` for a mean-reduced loss), scaled by the
   GradScaler under ``"16-mixed"``; in a job the micro-batches before the window's last run under DDP's ``no_sync``
   (FSDP's ``set_requires_gradient_sync(False)`` with ``strategy="fsdp"``, where there is no wrapper: see
   ``trainers.distributed.fsdp``);
3. at the window's last micro-batch, for each optimizer in order: the ``step`` event (``optimizer=<name>``;
   gradients complete, optimizer not stepped), then its update -- through the scaler, which skips it when the
   scaled gradients are not finite -- unless a handler called ``skip_optimizer_step()`` (or, for a fused optimizer,
   ``skip_optimizer_step_if(found_inf)``: withheld on the device where the tensor is non-zero); then the scaler's
   ``update()`` and ``state.optimizer_step += 1``.

A trainer that orders its own updates (a GAN) overrides ``optimization_step(batch)``, which replaces step 2 and 3:
it runs under the precision's autocast, calls ``trainer.backward(loss, optimizer=...)`` (divided by the window's
length, scaled, into that optimizer's parameters only) and ``trainer.optimizer_step(name)`` (at a window's last
micro-batch: gradients averaged over the ranks, the ``step`` event, the update; inside a window: nothing). Such a
trainer has no DDP wrapper: see ``trainers.distributed.replicas``.

A window is ``accumulate`` iterations long and never crosses an epoch: the last window of an epoch may be shorter,
and its losses are divided by its own length. A checkpoint can only be taken where a window is complete (see
``state.mid_window``): mid-window, gradients accumulated on every rank would have to be saved too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import torch

from lifecycle import Channel, State
from trainers.distributed.ranks import Ranks
from trainers.engine.arguments import short
from trainers.engine.optimizers import SINGLE, parameters_of

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = [
    "PRECISIONS",
    "Optimization",
    "OptimizationMethods",
    "Precision",
    "Strategy",
    "check_precision",
    "supports_found_inf",
]

#: the precisions a trainer runs in
Precision = Literal["32", "bf16-mixed", "16-mixed"]
#: how a job splits the work: replicas with all-reduced gradients, or sharded parameters
Strategy = Literal["ddp", "fsdp"]

#: precision name -> the autocast dtype (``None``: full precision, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def check_precision(precision: object, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision``, or a ``ValueError`` naming the valid values, or what the device lacks."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        valid = ", ".join(repr(name) for name in PRECISIONS)
        raise ValueError(f"precision must be one of {valid}; got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise ValueError(f"precision={precision!r} needs torch.autocast, which {device.type!r} devices lack; use '32'")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16-mixed': this CUDA device ({device}) has no bfloat16; use '16-mixed'")
    if device.type not in ("cpu", "cuda") and dtype is torch.float16:
        raise ValueError("precision='16-mixed' needs a GradScaler, which stepbus runs on 'cpu' and 'cuda' only")
    return dtype


class Optimization:
    """The step of one trainer (see the module docstring)."""

    __slots__ = (
        "_autocast",
        "_channel",
        "_current",
        "_custom",
        "_emit_step",
        "_found_inf",
        "_last",
        "_length",
        "_loss",
        "_no_autocast",
        "_params",
        "_ranks",
        "_skip",
        "_stepped",
        "_trainer",
        "_unscaled",
        "_zero",
        "forward",
        "optimizers",
        "precision",
        "scaler",
    )

    def __init__(
        self,
        trainer: BaseTrainer,
        ranks: Ranks,
        channel: Channel,
        *,
        optimizers: dict[str, torch.optim.Optimizer],
        custom: bool,
        precision: str,
        compile: bool | Mapping[str, Any],
        ddp: Mapping[str, Any] | None,
        strategy: str = "ddp",
        fsdp: Mapping[str, Any] | None = None,
    ) -> None:
        device = trainer.device
        dtype = check_precision(precision, device)
        self._trainer, self._ranks, self._channel = trainer, ranks, channel
        self._emit_step = channel.emitter("loss", "outputs", "optimizer")
        self.precision = precision
        self._autocast: Callable[[], AbstractContextManager[Any]] = (
            nullcontext if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))
        )
        self._no_autocast: Callable[[], AbstractContextManager[Any]] = (
            nullcontext if dtype is None else (lambda: torch.autocast(device.type, enabled=False))
        )
        #: the loss scaler of ``"16-mixed"`` (checkpointed as the tracked object ``"grad_scaler"``), else ``None``
        self.scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
        #: the trainer's optimizers by name, in stepping order
        self.optimizers = optimizers
        self._zero = tuple(optimizers.values())
        if strategy == "fsdp":
            if custom:
                raise ValueError(
                    f"strategy='fsdp' shards the parameters under the default step; {type(trainer).__name__}."
                    "optimization_step orders its own updates, which run with strategy='ddp'"
                )
            ranks.shard(trainer.pipeline, self._zero, fsdp)  # before the parameter lists below: they change
        self._params = {name: parameters_of(optimizer) for name, optimizer in optimizers.items()}
        self._custom = custom
        self._skip = False
        self._found_inf: torch.Tensor | None = None
        self._unscaled: set[str] = set()
        self._stepped: set[str] = set()
        self._current = next(iter(optimizers))
        self._last, self._length = True, 1
        self._loss: torch.Tensor | None = None
        if custom:
            if compile is not False:
                raise ValueError(
                    f"compile= compiles compute_loss, which {type(trainer).__name__}.optimization_step replaces; "
                    "compile the modules that optimization_step calls instead (keep trainer.pipeline uncompiled)"
                )
            ranks.replicate(trainer.pipeline)  # no DDP wrapper: gradients are averaged per optimizer step
            forward: Callable[[Any], Any] = trainer.compute_loss
        else:
            forward = (
                trainer.compute_loss
                if ranks.sharded
                else ranks.forward(trainer.pipeline, trainer.compute_loss, device, ddp)
            )
            if compile is not False:
                options = {} if compile is True else dict(compile)
                forward = torch.compile(forward, **options)
        #: what computes the loss: ``compute_loss``, through DDP in a job, compiled with ``compile=``
        self.forward: Callable[[Any], Any] = forward

    # ------------------------------------------------------------------ windows
    def window(self, state: State) -> tuple[bool, bool, int]:
        """(first micro-batch of its window, last micro-batch, the window's length) for the current iteration."""
        n = state.accumulate  # the trainer's State holds it: windows are a property of the run's counters
        if n == 1:
            return True, True, 1
        step, per_epoch = state.epoch_iteration, state.iterations_per_epoch
        start = (step - 1) // n * n  # micro-batches of this epoch before the window
        length = min(n, per_epoch - start)
        return step - 1 == start, step == start + length, length

    # ------------------------------------------------------------------ the step
    def run(self, batch: Any) -> dict[str, Any]:
        trainer = self._trainer
        first, last, length = self.window(trainer.state)
        if first:
            for optimizer in self._zero:
                optimizer.zero_grad(set_to_none=True)
        self._last, self._length = last, length
        if self._custom:
            return self._run_custom(batch, last)
        with nullcontext() if last else self._ranks.no_sync():
            with self._autocast():
                result = self.forward(batch)
            loss, outputs = _split(result, trainer, "compute_loss")
            self._backward(loss if length == 1 else loss / length, None)
        if last:
            for name in self.optimizers:
                self._step(name, loss, outputs)
            self._close_window()
        return outputs

    def _run_custom(self, batch: Any, last: bool) -> dict[str, Any]:
        trainer = self._trainer
        self._loss = None
        with self._autocast():
            result = trainer.optimization_step(batch)
        outputs = _split(result, trainer, "optimization_step")[1]
        if last:
            self._close_window()
        return outputs

    def backward(self, loss: torch.Tensor, optimizer: str | None = None) -> None:
        """For ``optimization_step``: backward of ``loss`` divided by the window's length (scaled under
        ``"16-mixed"``), into the parameters of ``optimizer`` only when one is named."""
        self._loss = loss
        inputs = self._params[self._known(optimizer)] if optimizer is not None else None
        with self._no_autocast():  # optimization_step runs under autocast; backward uses the forward's dtypes
            self._backward(loss if self._length == 1 else loss / self._length, inputs)

    def _backward(self, loss: torch.Tensor, inputs: list[torch.Tensor] | None) -> None:
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        scaled.backward(inputs=inputs)  # type: ignore[no-untyped-call]

    def optimizer_step(self, name: str) -> bool:
        """For ``optimization_step``: at a window's last micro-batch, average ``name``'s gradients over the ranks,
        emit ``step(optimizer=name)`` and step it (unless a handler skipped it); inside a window, nothing (the
        gradients keep accumulating). Returns whether it stepped or was skipped."""
        self._known(name)
        if not self._last:
            return False
        if name in self._stepped:
            raise RuntimeError(
                f"optimizer {name!r} already stepped at iteration {self._trainer.state.iteration}: each optimizer "
                "steps at most once per iteration"
            )
        self._ranks.average_gradients(self._params[name])
        loss = self._loss if self._loss is not None else torch.zeros(())
        self._step(name, loss, {"loss": loss})
        return True

    def _step(self, name: str, loss: torch.Tensor, outputs: dict[str, Any]) -> None:
        """One optimizer's update at a window's end: the ``step`` event, then the update (unless skipped)."""
        trainer = self._trainer
        self._current = name
        self._stepped.add(name)
        if self._channel.active:
            self._emit_step(trainer, loss, outputs, name)
        optimizer, scaler = self.optimizers[name], self.scaler
        found, self._found_inf = self._found_inf, None
        if self._skip:
            self._skip = False
            if scaler is not None and name not in self._unscaled:
                scaler.unscale_(optimizer)  # the scaler still closes its step: update() needs every inf check
        elif found is not None:
            # as GradScaler hands it over: the fused kernel leaves weights, state and step count alone when set
            optimizer.found_inf = found  # type: ignore[attr-defined]
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf  # type: ignore[attr-defined]
        elif scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # skips the update itself when the unscaled gradients are not finite

    def _close_window(self) -> None:
        if self.scaler is not None and self._stepped:
            self.scaler.update()
        self._unscaled.clear()
        self._stepped.clear()
        self._trainer.state.optimizer_step += 1

    def unscale(self) -> None:
        """Divide the stepping optimizer's gradients by the loss scale, once per step (no-op without a scaler)."""
        if self.scaler is not None and self._current not in self._unscaled:
            self.scaler.unscale_(self.optimizers[self._current])
            self._unscaled.add(self._current)

    def skip(self) -> None:
        self._skip = True

    def skip_if(self, found_inf: torch.Tensor) -> None:
        name = self._current
        optimizer = self.optimizers[name]
        if self.scaler is not None:
            raise RuntimeError(
                'skip_optimizer_step_if(): under precision="16-mixed" the GradScaler decides on the device itself; '
                "call skip_optimizer_step() to withhold an update"
            )
        if not supports_found_inf(optimizer):
            raise TypeError(
                f"skip_optimizer_step_if(): optimizer {name!r} ({type(optimizer).__name__}) cannot take a skip "
                "decided on the device; the fused optimizers can (torch.optim.Adam, AdamW or SGD with fused=True)"
            )
        if found_inf.shape != () or found_inf.dtype != torch.float32:
            raise ValueError(
                "skip_optimizer_step_if(): found_inf must be a float32 scalar tensor (0 steps, non-zero skips), got "
                f"shape {tuple(found_inf.shape)} dtype {found_inf.dtype}"
            )
        self._found_inf = found_inf

    def _known(self, name: str) -> str:
        if name not in self.optimizers:
            valid = ", ".join(repr(n) for n in self.optimizers)
            raise ValueError(f"no optimizer named {name!r}; this trainer's optimizers are {valid}")
        return name


class OptimizationMethods:
    """The trainer's optimisation helpers and optimizers (a mixin of ``BaseTrainer`` over its :class:`Optimization`).
    ``optimization_step`` itself stays on ``BaseTrainer``: an app overrides it there."""

    _optimization: Optimization

    def backward(self, loss: torch.Tensor, *, optimizer: str | None = None) -> None:
        """From :meth:`optimization_step`: ``loss.backward()`` divided by the accumulation window's length, scaled
        under ``"16-mixed"``; with ``optimizer``, into that optimizer's parameters only (``backward(inputs=...)``)."""
        self._optimization.backward(loss, optimizer)

    def optimizer_step(self, name: str) -> bool:
        """From :meth:`optimization_step`: at an accumulation window's last micro-batch, average the optimizer's
        gradients over the ranks, emit ``step(optimizer=name)``, then step it unless a handler called
        :meth:`skip_optimizer_step`; inside a window do nothing. Returns whether the window ended here."""
        return self._optimization.optimizer_step(name)

    @property
    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]:
        """The optimizers by name, in stepping order (a lone one is named ``"optimizer"``)."""
        return self._optimization.optimizers

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The trainer's lone optimizer (with named optimizers: :attr:`optimizers`)."""
        if list(self.optimizers) != [SINGLE]:  # as checkpoints tell a lone optimizer from named ones
            names = ", ".join(repr(n) for n in self.optimizers)
            raise AttributeError(f"this trainer has named optimizers ({names}): use trainer.optimizers[name]")
        return self._optimization.optimizers[SINGLE]

    def skip_optimizer_step(self) -> None:
        """From a ``step`` handler: do not apply this step's gradients (e.g. they are not finite)."""
        self._optimization.skip()

    def skip_optimizer_step_if(self, found_inf: torch.Tensor) -> None:
        """From a ``step`` handler: withhold this step's update where ``found_inf`` (a float32 scalar tensor on the
        optimizer's device) is non-zero, decided on the device with no host read -- as a GradScaler does. Only for
        optimizers that take it (:func:`supports_found_inf`: Adam, AdamW, SGD with ``fused=True``), else
        ``TypeError``; under ``precision="16-mixed"``, where the scaler decides, ``RuntimeError``."""
        self._optimization.skip_if(found_inf)

    def unscale_gradients(self) -> None:
        """From a ``step`` handler, before reading or clipping gradients: undo the ``"16-mixed"`` loss scale."""
        self._optimization.unscale()

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler of ``precision="16-mixed"`` (checkpointed as ``"grad_scaler"``), else ``None``."""
        return self._optimization.scaler


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` tensor set on it (the fused Adam, AdamW, SGD ...): the
    update, its state and its step count then stay as they were wherever the tensor is non-zero."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def _split(result: Any, trainer: BaseTrainer, method: str) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(result, torch.Tensor):
        return result, {"loss": result}
    if isinstance(result, dict) and isinstance(result.get("loss"), torch.Tensor):
        return result["loss"], result
    raise TypeError(
        f"{type(trainer).__name__}.{method} must return a loss tensor or a dict with a 'loss' tensor; "
        f"got {short(result)} at iteration {trainer.state.iteration}"
    )
