"""The checks and defaults behind ``BaseTrainer``'s constructor arguments: each bad argument is a clear error at
construction, naming the argument and what would be valid."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

__all__ = [
    "LossFn",
    "check_arguments",
    "check_int",
    "check_step_options",
    "dataset_size",
    "short",
]

#: ``compute_loss`` without subclassing: ``loss_fn(pipeline, batch) -> Tensor | dict`` (a dict has ``"loss"``).
LossFn = Callable[[nn.Module, Any], "torch.Tensor | dict[str, Any]"]


def check_arguments(
    trainer: object,
    pipeline: object,
    max_epochs: int,
    batch_size: int | None,
    seed: int,
    num_workers: int,
    vote_every: int,
    loss_fn: object,
    overrides_loss: bool,
) -> None:
    """The constructor's checks of its plain arguments (``overrides_loss``: the class defines ``compute_loss``)."""
    if not isinstance(pipeline, nn.Module):
        raise TypeError(f"pipeline must be a torch.nn.Module, got {type(pipeline).__name__}")
    check_int("max_epochs", max_epochs, minimum=1)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    check_int("seed", seed, minimum=None)
    check_int("num_workers", num_workers, minimum=0)
    check_int("vote_every", vote_every, minimum=1)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(pipeline, batch), got {loss_fn!r}")
    if loss_fn is None and not overrides_loss:
        raise TypeError(
            f"{type(trainer).__name__} has no loss: override compute_loss(self, batch) in a subclass, or pass "
            "loss_fn=lambda pipeline, batch: ... to BaseTrainer"
        )


def check_step_options(accumulate: object, compile: object) -> None:
    """``accumulate`` an int >= 1; ``compile`` a bool or a mapping of ``torch.compile`` options."""
    check_int("accumulate", accumulate, minimum=1)
    if not isinstance(compile, (bool, Mapping)):
        raise TypeError(f"compile must be True, False or a mapping of torch.compile options, got {compile!r}")
    if isinstance(compile, Mapping):
        unknown = sorted(set(compile) - {"fullgraph", "dynamic", "backend", "mode", "options", "disable"})
        if unknown:
            raise ValueError(
                f"compile options {unknown} are not torch.compile arguments; valid: fullgraph, dynamic, backend, mode, "
                "options, disable"
            )


def check_int(name: str, value: object, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def dataset_size(dataset: Dataset[Any] | Sequence[Any]) -> int:
    """``len(dataset)``, or a ``TypeError`` saying that the trainer needs a map-style dataset."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"dataset must be map-style (define __len__ and __getitem__); got {type(dataset).__name__}"
        ) from None


def short(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_strategy(strategy: object, ddp: object, fsdp: object) -> None:
    """``strategy`` is ``"ddp"`` or ``"fsdp"``, and only its own options are given (checked in every process, so a
    config error shows before a job is launched)."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(
            f"strategy must be 'ddp' (each rank holds the whole model; gradients all-reduced) or 'fsdp' (parameters, "
            f"gradients and optimizer state sharded over the ranks), got {strategy!r}"
        )
    if strategy == "fsdp" and ddp is not None:
        raise ValueError("ddp options are given but strategy='fsdp': give fsdp options instead, or strategy='ddp'")
    if strategy == "ddp" and fsdp is not None:
        raise ValueError("fsdp options are given but strategy='ddp': set strategy='fsdp' to shard the model")
    if fsdp is not None and not isinstance(fsdp, Mapping):
        raise TypeError(f"fsdp options must be a mapping (e.g. {{'units': 'children'}}), got {short(fsdp)}")
