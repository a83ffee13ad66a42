"""The non-finite flag ``GradientGuard`` checks each step on an accelerator: one fused kernel over the gradients and
the loss, and, for a skip decided on the device, the skip counts kept there too.

``torch._amp_foreach_non_finite_check_and_unscale_`` -- the check a GradScaler runs -- sets a float32 scalar to 1
when any element of any tensor it is given is NaN or inf. With an unscale factor of exactly 1 the values stay as they
are, so it is a one-kernel finiteness test of every gradient and the loss. The flag stays at 0 while everything is
finite, so it is only cleared after a failure on the host path. (On the CPU the guard takes the gradients' norms
instead: there this kernel writes every element back and runs multi-threaded, slower than the norms on large
gradients and erratic beside other busy threads.)

On the device path the flag is handed to the optimizer (``trainer.skip_optimizer_step_if``), which withholds the
update in its fused kernel, and the counts of skipped and consecutively skipped steps are updated on the device:
nothing is read back until someone asks for the counts (a publication, a checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from trainers.engine.optimization import supports_found_inf

__all__ = ["FiniteFlag", "device_path"]


def device_path(
    owner: str, on_device: bool | None, optimizers: Mapping[str, torch.optim.Optimizer], device: torch.device | None
) -> bool:
    """Whether a guard whose policy allows it (``"skip"``, no ``max_skips``, no GradScaler) decides on the device,
    given the device of its flag (``None``: no flag -- gradients sharded or on several devices, or no kernel): with
    ``on_device=None`` only where a read would synchronise (on the CPU reading the flag is free and takes fewer
    operations); ``on_device=True`` raises ``ValueError`` saying what stands in the way."""
    unable = [f"{n!r} ({type(o).__name__})" for n, o in optimizers.items() if not supports_found_inf(o)]
    why = (
        "the gradients are sharded or on several devices, or the device has no fused finiteness kernel"
        if device is None
        else f"optimizer {', '.join(unable)} cannot take a decision made on the device (it is not fused)"
        if unable
        else None
    )
    if why is not None and on_device:
        raise ValueError(
            f"{owner}: on_device=True, but {why}; use a fused optimizer (torch.optim.Adam(..., fused=True)) on one "
            "device, or on_device=None"
        )
    return device is not None and why is None and (on_device is True or device.type != "cpu")


class FiniteFlag:
    """The flag and (on the device path) the skip counts of one guard, on ``device``."""

    __slots__ = ("_counts", "_one", "_views", "device", "flag")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        #: 1.0 once a checked tensor held NaN or inf (float32, 0-d: what fused optimizers read as ``found_inf``)
        self.flag = torch.zeros((), dtype=torch.float32, device=device)
        self._one = torch.ones((), dtype=torch.float32, device=device)
        self._counts: torch.Tensor | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def on(cls, device: torch.device) -> FiniteFlag | None:
        """A flag on ``device``, or ``None`` where the kernel does not run there (checked once, on a tiny tensor)."""
        flag = cls(device)
        try:
            flag.check([torch.zeros(1, device=device)])
        except (NotImplementedError, RuntimeError):
            return None
        return flag

    def count_from(self, skipped: int, consecutive: int) -> None:
        """Keep the skip counts on the device from here on, starting at these values."""
        # float64 counts exactly to 2**53 (float32, exact to 2**24, where the device has no float64)
        wide = torch.float32 if self.device.type == "mps" else torch.float64
        self._counts = torch.tensor([skipped, consecutive], dtype=wide, device=self.device)
        self._views = (self._counts[0], self._counts[1])  # made once: no indexing per step

    def check(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Raise the flag if any element of ``tensors`` (all on :attr:`device`) is not finite; returns the flag."""
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, self.flag, self._one)
        return self.flag

    def clear(self) -> None:
        self.flag.zero_()

    def count(self) -> None:
        """Device path: add this step's flag to the counts (no host read)."""
        if self._views is not None:
            skipped, consecutive = self._views
            skipped.add_(self.flag)
            consecutive.mul_(self.flag).add_(self.flag)  # +1 on a skip, back to 0 on an update

    @property
    def counting(self) -> bool:
        """Whether the skip counts are kept here (the device path, since :meth:`count_from`)."""
        return self._counts is not None

    def counts(self) -> tuple[int, int]:
        """(skipped, consecutive) read back: one host copy."""
        if self._counts is None:
            return 0, 0
        skipped, consecutive = self._counts.tolist()
        return int(skipped), int(consecutive)

    def read_with(self, value: torch.Tensor) -> tuple[float, int, int]:
        """``value`` (a 0-d tensor on :attr:`device`, e.g. the norm a guard publishes) and the counts, read back
        in one host copy."""
        if self._counts is None:
            return float(value.item()), 0, 0
        number, skipped, consecutive = torch.cat([value.reshape(1).to(self._counts.dtype), self._counts]).tolist()
        return float(number), int(skipped), int(consecutive)

    def set_counts(self, skipped: int, consecutive: int) -> None:
        if self._counts is not None:
            self._counts.copy_(torch.tensor([skipped, consecutive], dtype=self._counts.dtype))
