"""Sums and counts as a validation's results: values that the ranks add up before anything is divided.

A validation split over ranks (``Validator(ranks="all")``) must not publish a mean of each rank's mean: shards
differ in size (7 items on 2 ranks are 4 and 3), and a mean of means weighs the items of the smaller shard more.
So ``validate()`` (or a validator's ``fn``) returns what adds up -- ``Mean(total, count)``, ``Sum(value)`` -- and
the validator adds every rank's parts with one ``all_reduce`` before it divides: the mean of the whole set, exactly
as one process would count it. A value computed from a mean (PSNR from the MSE) is computed from the combined mean,
never averaged itself: ``Mean(squared_error, count).then(to_psnr)``.

torch only; no optional package. With ``ranks="zero"`` and in a single process the same values work, combined over
one process. torchmetrics metrics do the same job with their own states (``callbacks.validation_torchmetrics``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from callbacks.metrics import as_scalar

__all__ = ["Mean", "Reduction", "Sum", "pack", "sum_over_ranks", "unpack"]

#: what a part may be: a Python number or a one-element tensor (kept on its device until the one transfer)
Part = int | float | torch.Tensor


def _part(value: object, what: str) -> Part:
    """``value`` when it is a real number or a one-element real tensor; a ``TypeError`` saying ``what`` it was
    for otherwise. Tensors are only checked for their shape and dtype (reading one would sync the device)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(
                f"{what} must be a number or a one-element real tensor, got a {value.dtype} tensor of shape "
                f"{tuple(value.shape)}"
            )
        return value.detach()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise TypeError(f"{what} must be a number or a one-element real tensor, got {type(value).__name__}")


class Reduction:
    """A value the ranks combine by adding its ``parts``; ``finish`` turns the sums into the published number.

    Build one with :class:`Sum` or :class:`Mean`, and derive others with :meth:`then`. ``float(value)`` is the value
    over this process's parts alone (what a direct call of ``validate()`` in one process means by it).
    """

    __slots__ = ("_finish", "kind", "parts")

    def __init__(self, parts: Sequence[Part], finish: Callable[[Sequence[float]], float], kind: str) -> None:
        #: the numbers every rank adds up, in order
        self.parts: tuple[Part, ...] = tuple(parts)
        self._finish = finish
        #: what it is, for messages and for the ranks' check that they return the same values: ``Mean``,
        #: ``Mean.then(to_psnr)``
        self.kind = kind

    def then(self, fn: Callable[[float], Any]) -> Reduction:
        """A value computed by ``fn`` from this one once the ranks combined it (``fn(mean) -> number or one-element
        tensor``): ``mse.then(lambda m: -10 * math.log10(m))`` is the PSNR of the whole set's MSE. It carries the
        same parts, so returning both ``mse`` and the derived value adds the parts twice -- a few numbers."""
        if not callable(fn):
            raise TypeError(f"{self.kind}.then(fn): fn must be callable as fn(value) -> number, got {fn!r}")
        name = getattr(fn, "__name__", type(fn).__name__)
        finish = self._finish

        def derived(sums: Sequence[float]) -> float:
            result = fn(finish(sums))
            number = as_scalar(result)
            if number is None:
                raise TypeError(
                    f"{self.kind}.then({name}) must return a number or a one-element tensor, got "
                    f"{type(result).__name__}"
                )
            return number

        return Reduction(self.parts, derived, f"{self.kind}.then({name})")

    def value(self, sums: Sequence[float]) -> float:
        """The published number, from every rank's parts added up (``sums``, one per part)."""
        if len(sums) != len(self.parts):
            raise ValueError(f"{self.kind}: expected {len(self.parts)} sums, got {len(sums)}")
        return self._finish(sums)

    def local(self) -> float:
        """The value over this process's parts alone (one device sync per tensor part)."""
        return self.value([float(part) for part in self.parts])

    def __float__(self) -> float:
        return self.local()

    def __repr__(self) -> str:
        shown = ", ".join(f"tensor({float(p)!r})" if isinstance(p, torch.Tensor) else repr(p) for p in self.parts)
        return f"<{self.kind} of ({shown})>"


def _only(sums: Sequence[float]) -> float:
    return float(sums[0])


def _ratio(sums: Sequence[float]) -> float:
    total, count = sums
    if count == 0:
        raise ValueError("Mean: the count is 0 over every rank (nothing was measured), so there is no mean")
    return float(total) / float(count)


class Sum(Reduction):
    """A sum over the validation set: every rank's ``value`` added up (a count of errors, a total loss)."""

    __slots__ = ()

    def __init__(self, value: Part) -> None:
        super().__init__((_part(value, "Sum: value"),), _only, "Sum")


class Mean(Reduction):
    """A mean over the validation set: ``sum of totals / sum of counts`` over every rank -- each item weighs the
    same, however unevenly the ranks' shards are cut. ``count`` is the number of items ``total`` adds up (pixels,
    samples, elements); a count of 0 over every rank is an error when the mean is published."""

    __slots__ = ()

    def __init__(self, total: Part, count: Part) -> None:
        counted = _part(count, "Mean: count")
        if not isinstance(counted, torch.Tensor) and not (counted >= 0 and math.isfinite(counted)):
            raise ValueError(f"Mean: count must be a finite number >= 0, got {count!r}")
        super().__init__((_part(total, "Mean: total"), counted), _ratio, "Mean")

    @classmethod
    def of(cls, values: torch.Tensor) -> Mean:
        """The mean of every element of ``values``: their sum in float64 (kept on the device) and their number."""
        if not isinstance(values, torch.Tensor) or values.is_complex():
            raise TypeError(f"Mean.of: values must be a real tensor, got {type(values).__name__}")
        return cls(values.detach().double().sum(), values.numel())


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def pack(reductions: Mapping[str, Reduction], device: torch.device) -> torch.Tensor:
    """Every part of ``reductions``, in order, as one float64 vector on ``device`` (no device sync: tensors are
    stacked where they are, numbers copied over)."""
    dtype = _dtype(device)
    parts = [part for reduction in reductions.values() for part in reduction.parts]
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.stack([torch.as_tensor(p).to(device=device, dtype=dtype).reshape(()) for p in parts])


def sum_over_ranks(packed: torch.Tensor, world_size: int) -> torch.Tensor:
    """``packed`` added up over every rank of the default process group, in place: one ``all_reduce`` (``SUM``); a
    collective that every rank calls with a vector of the same length. Nothing to do in a single process."""
    if world_size > 1 and packed.numel():
        import torch.distributed as dist

        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed


def unpack(reductions: Mapping[str, Reduction], summed: torch.Tensor, owner: str) -> dict[str, float]:
    """The published value of each of ``reductions`` from ``summed`` (what :func:`pack` built, added over the
    ranks): one transfer to the host. An error of a value (a count of 0, a ``then`` that failed) is raised with
    ``owner`` and the value's name."""
    sums = [float(x) for x in summed.tolist()]
    values: dict[str, float] = {}
    offset = 0
    for name, reduction in reductions.items():
        width = len(reduction.parts)
        try:
            values[name] = reduction.value(sums[offset : offset + width])
        except (TypeError, ValueError, ArithmeticError) as exc:
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"{owner}: metric {name!r}: {exc}") from None
        offset += width
    return values
