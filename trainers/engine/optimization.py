"""The optimisation step around ``compute_loss``: precision, gradient accumulation, the ``step`` event, the update.

One iteration (``BaseTrainer.step``) runs, in order:

1. at the first micro-batch of an accumulation window: ``zero_grad`` on the optimizer;
2. ``compute_loss(batch)`` -- under ``torch.autocast`` in a mixed precision, through DDP in a job, compiled with
   ``compile=`` -- and ``backward`` of the loss divided by the window's number of micro-batches (so that
   ``accumulate=N`` with batch ``B`` computes the gradient of batch ``N*B`` for a mean-reduced loss), scaled by the
   GradScaler under ``"16-mixed"``; in a job the micro-batches before the window's last run under DDP's ``no_sync``;
3. at the window's last micro-batch: the ``step`` event (gradients complete, optimizer not stepped), then the
   optimizer step -- through the scaler, which skips it when the scaled gradients are not finite -- unless a handler
   called ``skip_optimizer_step()``, then ``state.optimizer_step += 1``.

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

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["PRECISIONS", "Optimization", "Precision", "check_precision"]

#: the precisions a trainer runs in
Precision = Literal["32", "bf16-mixed", "16-mixed"]

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
        "_ranks",
        "_skip",
        "_trainer",
        "_unscaled",
        "forward",
        "precision",
        "scaler",
    )

    def __init__(
        self,
        trainer: BaseTrainer,
        ranks: Ranks,
        channel: Channel,
        *,
        precision: str,
        compile: bool | Mapping[str, Any],
        ddp: Mapping[str, Any] | None,
    ) -> None:
        device = trainer.device
        dtype = check_precision(precision, device)
        self._trainer, self._ranks, self._channel = trainer, ranks, channel
        self.precision = precision
        self._autocast: Callable[[], AbstractContextManager[Any]] = (
            nullcontext if dtype is None else (lambda: torch.autocast(device.type, dtype=dtype))
        )
        #: the loss scaler of ``"16-mixed"`` (checkpointed as the tracked object ``"grad_scaler"``), else ``None``
        self.scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
        self._skip = False
        self._unscaled = False
        forward = ranks.forward(trainer.pipeline, trainer.compute_loss, device, ddp)
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
            trainer.optimizer.zero_grad(set_to_none=True)
        with nullcontext() if last else self._ranks.no_sync():
            with self._autocast():
                result = self.forward(batch)
            loss, outputs = _split(result, trainer)
            self.backward(loss if length == 1 else loss / length)
        if last:
            self.finish(loss, outputs)
        return outputs

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under ``"16-mixed"``."""
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        scaled.backward()  # type: ignore[no-untyped-call]

    def finish(self, loss: torch.Tensor, outputs: dict[str, Any]) -> None:
        """The window is complete: the ``step`` event, then the optimizer step (unless skipped)."""
        trainer = self._trainer
        if self._channel.active:
            self._channel.emit(trainer, loss=loss, outputs=outputs)
        optimizer, scaler = trainer.optimizer, self.scaler
        if self._skip:
            self._skip = False
            if scaler is not None:  # the scaler still closes its step: unscaled or not, it must see update()
                if not self._unscaled:
                    scaler.unscale_(optimizer)
                scaler.update()
        elif scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)  # skips the update itself when the unscaled gradients are not finite
            scaler.update()
        self._unscaled = False
        trainer.state.optimizer_step += 1

    def unscale(self) -> None:
        """Divide the gradients by the loss scale, once per optimizer step (a no-op without a scaler)."""
        if self.scaler is not None and not self._unscaled:
            self.scaler.unscale_(self._trainer.optimizer)
            self._unscaled = True

    def skip(self) -> None:
        self._skip = True


def _split(result: Any, trainer: BaseTrainer) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(result, torch.Tensor):
        return result, {"loss": result}
    if isinstance(result, dict) and isinstance(result.get("loss"), torch.Tensor):
        return result["loss"], result
    raise TypeError(
        f"{type(trainer).__name__}.compute_loss must return a loss tensor or a dict with a 'loss' tensor; "
        f"got {short(result)} at iteration {trainer.state.iteration}"
    )
