"""``GradientGuard``: clip gradients, refuse non-finite updates, and publish the gradient norm.

Events used: ``step`` -- gradients are ready and the optimizer has not stepped, the one moment at which an update
can still be clipped or withheld. Publishes ``grad_norm`` (total norm before clipping) on its own schedule, and
``grad/nonfinite_steps`` (steps whose update was withheld) whenever that count changes, in
``trainer.state.metrics``.

Host syncs: publishing reads the norm once per scheduled step. The non-finite check must know, before the optimizer
steps, whether the loss and gradients are finite. On the CPU, where a read costs no synchronisation, the test is the
sum of the per-gradient norms and the loss's (NaN or inf when any of them is; a norm that overflows counts too): five
tensor operations, the loss's norm taken in the gradients' fused norm call. On an accelerator the test is the one
fused kernel a GradScaler runs over every gradient and the loss (:mod:`callbacks.finite_flag`), and its flag is read
before the update: a host sync. With a fused optimizer (``fused=True`` Adam, AdamW, SGD ...) the guard decides on the
device instead (``on_device``, on by default there): the flag goes to the optimizer, which withholds the update in
its kernel, the counts of skipped steps stay on the device, and nothing is read back between publications. Where the
norm is taken anyway (publishing, clipping by norm) it is also the test, so an overflowing norm is refused there too.
With ``on_nonfinite=None`` and clipping alone nothing is read back between publications.

Under ``precision="16-mixed"`` the guard unscales the gradients first (``trainer.unscale_gradients()``), so clipping
and ``grad_norm`` see the true values, and leaves the non-finite decision to the GradScaler, which skips the update
and lowers its scale when the gradients are not finite -- with no extra host sync; ``on_nonfinite`` then applies
to nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch

from callbacks.finite_flag import FiniteFlag, device_path
from callbacks.helpers import parse_schedule
from lifecycle import Callback, Event, HandlerSpec, Priority, ScheduleSpec
from trainers.engine.optimizers import parameters_of

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from torch import nn

    from trainers.engine.trainer import BaseTrainer

__all__ = ["GradientGuard", "NonFiniteError"]

Policy = Literal["skip", "stop", "raise"]


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient under ``on_nonfinite="raise"``; the message names the iteration and the
    parameters whose gradients are not finite."""


class GradientGuard(Callback):
    """Clip gradients by value and/or norm, and act on a non-finite loss or gradient.

    On a non-finite loss or total gradient norm (NaN or inf), per ``on_nonfinite``:

    * ``"skip"``: withhold this step's optimizer update (weights and optimizer state stay bit-identical), count it,
      go on; ``max_skips`` consecutive skips raise :class:`NonFiniteError` instead of skipping forever;
    * ``"stop"``: withhold the update and stop training (``post_training(status="stopped")``);
    * ``"raise"``: raise :class:`NonFiniteError` naming the iteration and the offending parameters;
    * ``None``: do not check (no per-step host sync).

    Args:
        clip_norm: clip the total gradient norm to this value (``torch.nn.utils.clip_grad_norm_`` semantics).
        clip_value: clamp every gradient element to ``[-clip_value, clip_value]`` (applied before ``clip_norm``).
        norm_type: the p of the p-norm (2.0; ``inf`` for the max-norm).
        check_loss: also treat a non-finite loss as non-finite.
        every: when to publish ``grad_norm`` (``None``: never).
        on_device: decide ``"skip"`` on the device, with no host read per step (see the module docstring):
            ``None`` (default) does so where it saves a synchronisation -- parameters on one accelerator, optimizers
            that take the decision (``fused=True``), no ``max_skips``, no ``"16-mixed"``; ``True`` insists (a
            ``ValueError`` says what stands in the way); ``False`` reads the check each step. On the device path
            ``grad/nonfinite_steps`` is published on ``every``'s schedule (``skipped`` reads the count at any
            time) and a skipped step is not described (nothing is read back to describe it). The withheld update
            leaves weights, state and step count as they were, except that an optimizer's state is created at its
            first step even then.
    """

    priority = Priority.STATE

    def __init__(
        self,
        *,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        norm_type: float = 2.0,
        on_nonfinite: Policy | None = "skip",
        check_loss: bool = True,
        max_skips: int | None = None,
        every: ScheduleSpec = "50it",
        on_device: bool | None = None,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        owner = f"GradientGuard {self.state_key!r}"
        for label, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
            ):
                raise ValueError(
                    f"{owner}: {label} must be a finite number > 0, or None for no clipping, got {value!r}"
                )
        if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not norm_type > 0:
            raise ValueError(f"{owner}: norm_type must be a number > 0 (2.0, 1.0, float('inf')), got {norm_type!r}")
        if on_nonfinite not in ("skip", "stop", "raise", None):
            raise ValueError(f"{owner}: on_nonfinite must be 'skip', 'stop', 'raise' or None, got {on_nonfinite!r}")
        if max_skips is not None and (isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1):
            raise ValueError(f"{owner}: max_skips must be an int >= 1 or None, got {max_skips!r}")
        if on_device not in (None, True, False):
            raise ValueError(f"{owner}: on_device must be True, False or None (decide per device), got {on_device!r}")
        if on_device and (on_nonfinite != "skip" or max_skips is not None):
            raise ValueError(
                f"{owner}: on_device=True decides on_nonfinite='skip' on the device, where no step is seen from the "
                f"host; on_nonfinite={on_nonfinite!r} with max_skips={max_skips!r} needs each step read back "
                "(use on_nonfinite='skip' without max_skips, or on_device=None)"
            )
        self._schedule = None if every is None else parse_schedule(every, owner)
        if self._schedule is not None:
            try:
                self._schedule.check_event(Event.STEP, owner)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.norm_type = float(norm_type)
        self.on_nonfinite: Policy | None = on_nonfinite
        self.check_loss = bool(check_loss)
        self.max_skips = max_skips
        self.every = every
        self.on_device = on_device
        self._skipped = 0
        self._consecutive = 0
        #: why training was stopped (``on_nonfinite="stop"``), else ``None``
        self.reason: str | None = None
        self._params: list[nn.Parameter] = []
        self._names: dict[int, str] = {}
        self._uniform = False
        self._kind: tuple[int, torch.dtype] | None = None
        self._scaled = False
        self._flag: FiniteFlag | None = None  # on the parameters' one device; counted there on the device path
        self._due: Callable[[], bool] | None = None
        self._per_optimizer: dict[str, list[nn.Parameter]] | None = None  # with named optimizers: whose step it is

    # ------------------------------------------------------------------ wiring
    def handlers(self) -> Iterator[HandlerSpec]:
        if self.on_nonfinite is None and self.clip_norm is None and self.clip_value is None:
            if self._schedule is not None:  # only publishing: run on the schedule alone, free in between
                yield Event.STEP, self._publish_only, self._schedule
            return
        yield Event.STEP, self._on_step, None

    def setup(self, trainer: BaseTrainer) -> None:
        named = [(name, p) for name, p in trainer.pipeline.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                f"GradientGuard {self.state_key!r}: {type(trainer.pipeline).__name__} has no trainable parameters"
            )
        self._params = [p for _, p in named]
        self._names = {id(p): name for name, p in named}
        kinds = {(p.device, p.dtype) for p in self._params}
        self._uniform = len(kinds) == 1
        # where a loss can share the gradients' one fused norm call: their device (get_device(): -1 for the CPU) and
        # dtype; None when the parameters differ among themselves
        self._kind = (self._params[0].get_device(), self._params[0].dtype) if self._uniform else None
        self._scaled = trainer.scaler is not None
        self._due = self._schedule.bind(trainer.state, Event.STEP) if self._schedule is not None else None
        if len(trainer.optimizers) > 1:  # each step event is one optimizer's: guard the parameters it steps
            held = {name: {id(p) for p in parameters_of(o)} for name, o in trainer.optimizers.items()}
            self._per_optimizer = {name: [p for p in self._params if id(p) in ids] for name, ids in held.items()}
        owner = f"GradientGuard {self.state_key!r}"
        if self.on_device and self._scaled:
            raise ValueError(f'{owner}: on_device=True, but under precision="16-mixed" the GradScaler decides')
        # the fused flag: plain tensors on one accelerator (sharded gradients are checked through their norms, on
        # which every rank agrees) with a kernel for it. Not on the CPU unless on_device=True: there the kernel
        # writes every gradient back and runs multi-threaded, slower than the norms on large gradients and erratic
        # beside other busy threads, and a read costs no synchronisation
        devices = {p.device for p in self._params}
        device = next(iter(devices))
        plain = len(devices) == 1 and all(type(p.detach()) is torch.Tensor for p in self._params)
        wanted = self.on_nonfinite is not None and not self._scaled and (device.type != "cpu" or bool(self.on_device))
        flag = FiniteFlag.on(device) if plain and wanted else None
        on_device = (
            self.on_nonfinite == "skip"
            and self.max_skips is None
            and not self._scaled
            and self.on_device is not False
            and device_path(owner, self.on_device, trainer.optimizers, None if flag is None else flag.device)
        )
        if flag is not None and on_device:
            flag.count_from(self._skipped, self._consecutive)  # from here on the counts live on the device
        self._flag = flag

    def teardown(self, trainer: BaseTrainer) -> None:
        self._skipped, self._consecutive = self.skipped, self.consecutive
        self._params, self._names, self._due, self._per_optimizer, self._kind = [], {}, None, None, None
        self._flag = None

    # ------------------------------------------------------------------ the counts
    @property
    def skipped(self) -> int:
        """Steps whose update was withheld (on the device path: read back now, one host copy)."""
        return self._flag.counts()[0] if self._flag is not None and self._flag.counting else self._skipped

    @property
    def consecutive(self) -> int:
        """Steps in a row whose update was withheld, up to the latest one."""
        return self._flag.counts()[1] if self._flag is not None and self._flag.counting else self._consecutive

    def _set_counts(self, skipped: int, consecutive: int) -> None:
        self._skipped, self._consecutive = skipped, consecutive
        if self._flag is not None:
            self._flag.set_counts(skipped, consecutive)  # kept there on the device path, else a no-op

    def _publish_counts(self, trainer: BaseTrainer, skipped: int) -> None:
        if skipped or "grad/nonfinite_steps" in trainer.state.metrics:
            trainer.state.metrics["grad/nonfinite_steps"] = skipped

    # ------------------------------------------------------------------ the step
    def _stepped(self, optimizer: str | None) -> tuple[list[nn.Parameter], str]:
        """The parameters the stepping optimizer updates, and the metric name of their norm."""
        if self._per_optimizer is None or optimizer is None:
            return self._params, "grad_norm"
        return self._per_optimizer[optimizer], f"grad_norm/{optimizer}"

    @staticmethod
    def _grads(params: list[nn.Parameter]) -> list[torch.Tensor]:
        return [p.grad for p in params if p.grad is not None]

    def _norms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The per-gradient norms, stacked (one tensor): what ``get_total_norm`` computes before its last step,
        in one fused call when every gradient is on one device with one dtype."""
        if self._uniform:
            return torch.stack(torch._foreach_norm(grads, self.norm_type))
        device = grads[0].device
        return torch.stack([torch.linalg.vector_norm(g, self.norm_type).to(device) for g in grads])

    def _norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The total norm (``torch.nn.utils.get_total_norm``)."""
        total: torch.Tensor = torch.linalg.vector_norm(self._norms(grads), self.norm_type)
        return total

    def _publish_only(self, trainer: BaseTrainer, *, optimizer: str | None = None, **_: Any) -> None:
        trainer.unscale_gradients()
        params, key = self._stepped(optimizer)
        grads = self._grads(params)
        if grads:
            trainer.state.metrics[key] = float(self._norm(grads).item())

    def _on_step(self, trainer: BaseTrainer, *, loss: torch.Tensor, optimizer: str | None = None, **_: Any) -> None:
        # Every step runs this between the backward pass and the optimizer step, where each tensor op costs
        # microseconds: on the CPU five (the fused norms with the loss's, stack, sum, the read), on an accelerator
        # two (the fused finiteness kernel and its flag read) or, deciding on the device, none read back.
        if self._scaled:
            trainer.unscale_gradients()  # under "16-mixed": clip and measure the true gradients
        params, key = self._stepped(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        due = self._due
        publish = due is not None and due()
        wants_norm = publish or (self.clip_norm is not None and self.clip_value is None)
        check = self.on_nonfinite is not None and not self._scaled  # a scaler decides on its own (no extra sync)
        norm: torch.Tensor | None = None
        flag = self._flag
        if flag is not None and flag.counting:  # the device path
            norm = self._check_on_device(trainer, loss, grads, wants_norm)
        elif check and not wants_norm and flag is not None:
            checked = [*grads, loss.detach()] if self.check_loss and loss.device == flag.device else grads
            if flag.check(checked).item() or (self.check_loss and checked is grads and not _finite(loss)):
                flag.clear()  # the one per-step read; the flag stays 0 while all is finite
                self._nonfinite(trainer, loss, self._norm(grads), params)
                return
            self._consecutive = 0
        elif check or wants_norm:
            norms, probe = self._norms_and_probe(grads, loss if check and self.check_loss else None, wants_norm)
            norm = torch.linalg.vector_norm(norms, self.norm_type) if wants_norm else None
            # NaN and inf survive a sum: one value read covers every gradient and the loss (norms that overflow
            # float32 count as non-finite too, as a total norm that overflows would)
            if check and not math.isfinite(probe.item()):
                grad_norms = norms[: len(grads)]  # without the loss's entry, if it rode along
                self._nonfinite(trainer, loss, torch.linalg.vector_norm(grad_norms, self.norm_type), params)
                return
            if check:
                self._consecutive = 0
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        if self.clip_norm is not None:
            if self.clip_value is None and norm is not None:
                torch.nn.utils.clip_grads_with_norm_(params, self.clip_norm, norm)
            else:  # value clipping changed the norm: measure it again
                torch.nn.utils.clip_grad_norm_(params, self.clip_norm, self.norm_type)
        if publish and norm is not None:
            if flag is not None and flag.counting:  # the norm and the counts in one read
                value, skipped, _consecutive = flag.read_with(norm)
                trainer.state.metrics[key] = value
                self._publish_counts(trainer, skipped)
            else:
                trainer.state.metrics[key] = float(norm.item())

    def _norms_and_probe(
        self, grads: list[torch.Tensor], loss: torch.Tensor | None, trim: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-gradient norms and their sum, the loss added when given. When the loss has the gradients' device
        and dtype its norm rides along as the last entry of the one fused call, sliced off again only with ``trim``
        (a norm is wanted): on the other steps that slice would be a sixth tensor operation."""
        if loss is None:
            norms = self._norms(grads)
            return norms, norms.sum()
        detached, kind = loss.detach(), self._kind
        if kind is not None and detached.dtype is kind[1] and detached.get_device() == kind[0]:
            with_loss = torch.stack(torch._foreach_norm([*grads, detached], self.norm_type))
            return (with_loss[:-1] if trim else with_loss), with_loss.sum()
        norms = self._norms(grads)
        return norms, norms.sum() + (detached if detached.ndim == 0 else detached.sum())

    def _check_on_device(
        self, trainer: BaseTrainer, loss: torch.Tensor, grads: list[torch.Tensor], wants_norm: bool
    ) -> torch.Tensor | None:
        """The device path: flag, count and hand the decision to the optimizer, with nothing read back. Returns the
        total norm when one is wanted (a norm that overflows raises the flag too, as on the host path)."""
        flag = self._flag
        assert flag is not None  # set up with the device path
        flag.clear()
        checked = [*grads, loss.detach().to(flag.device)] if self.check_loss else grads
        flag.check(checked)
        norm = None
        if wants_norm:
            norm = torch.linalg.vector_norm(self._norms(grads), self.norm_type)
            flag.flag.masked_fill_(~torch.isfinite(norm), 1.0)
        flag.count()
        trainer.skip_optimizer_step_if(flag.flag)
        return norm

    def _nonfinite(
        self, trainer: BaseTrainer, loss: torch.Tensor, norm: torch.Tensor, params: list[nn.Parameter]
    ) -> None:
        iteration = trainer.state.iteration
        what = self._describe(loss, norm, params)
        if self.on_nonfinite == "raise":
            raise NonFiniteError(f"non-finite values at iteration {iteration} ({trainer.state}): {what}")
        trainer.skip_optimizer_step()
        self._skipped += 1
        self._consecutive += 1
        trainer.state.metrics["grad/nonfinite_steps"] = self._skipped
        if self.on_nonfinite == "stop":
            self.reason = f"non-finite values at iteration {iteration}: {what}"
            trainer.stop(f"{self.state_key}: {self.reason}")
        elif self.max_skips is not None and self._consecutive >= self.max_skips:
            raise NonFiniteError(
                f"{self._consecutive} consecutive steps with non-finite values (max_skips={self.max_skips}), the "
                f"last at iteration {iteration}: {what}"
            )

    def _describe(self, loss: torch.Tensor, norm: torch.Tensor, params: list[nn.Parameter]) -> str:
        """What is not finite, for the error message (only on the failure path: syncs freely)."""
        parts = []
        loss_value = float(loss.detach().float().sum().item()) if loss.numel() else math.nan
        if not math.isfinite(loss_value):
            parts.append(f"loss = {loss_value}")
        bad = [
            self._names.get(id(p), "?") for p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            parts.append(f"gradients of {shown}")
        elif not math.isfinite(float(norm.item())):
            parts.append(f"total gradient norm = {float(norm.item())} (elements finite, the norm overflowed)")
        return "; ".join(parts) or "non-finite values"

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            skipped, consecutive = int(state["skipped"]), int(state["consecutive"])
            reason = None if state["reason"] is None else str(state["reason"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"GradientGuard {self.state_key!r}: not a GradientGuard state dict (expected keys skipped, "
                f"consecutive, reason): {type(exc).__name__}: {exc}"
            ) from None
        self._set_counts(skipped, consecutive)
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"<GradientGuard state_key={self.state_key!r} clip_norm={self.clip_norm} clip_value={self.clip_value} "
            f"on_nonfinite={self.on_nonfinite!r} skipped={self.skipped}>"
        )


def _finite(loss: torch.Tensor) -> bool:
    """Whether every element of a loss kept on another device than the gradients is finite (one read)."""
    return bool(torch.isfinite(loss.detach()).all())
