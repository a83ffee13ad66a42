"""Shared helpers of the tests: the event recorder, tiny real trainers, and the rows an uninterrupted run records.
``tests/conftest.py`` offers the factory and the recorder as fixtures too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from callbacks import Callback
from trainers import BaseTrainer

if TYPE_CHECKING:
    from trainers.apps.image_field import ImageFieldTrainer

#: (event, state.epoch, state.epoch_iteration, state.iteration, selected payload or None)
Row = tuple[str, int, int, int, Any]

#: the lifecycle events in loop order, as the tests expect them (``lifecycle.Event`` must list exactly these)
EVENT_METHODS = (
    "pre_training",
    "pre_epoch",
    "pre_step",
    "step",
    "post_step",
    "post_epoch",
    "post_training",
    "pre_validation",
    "post_validation",
    "exception",
)


class Recorder(Callback):
    """Defines every event method; appends one :data:`Row` per emission to ``log`` and the full payload to
    ``payloads``. The selected payload is ``resumed`` for pre_training, the batch size for pre_step, ``status``
    for post_training and the error object for exception.

    With ``compact=True`` rows leave out an empty selection and show the status and the error as text: ``("step",
    1, 2, 2)``, ``("post_training", 1, 3, 3, "completed")``, ``("exception", 1, 2, 2, "ValueError")``."""

    def __init__(self, log: list[Any] | None = None, *, compact: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log: list[Any] = [] if log is None else log
        self.compact = compact
        self.payloads: list[tuple[str, dict[str, Any]]] = []

    def _add(self, trainer: BaseTrainer, event: str, payload: dict[str, Any], selected: Any = None) -> None:
        s = trainer.state
        row: Row = (event, s.epoch, s.epoch_iteration, s.iteration, selected)
        self.log.append(compact(row) if self.compact else row)
        self.payloads.append((event, payload))

    def names(self) -> list[str]:
        return [row[0] for row in self.log]

    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "pre_training", payload, payload["resumed"])

    def pre_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "pre_epoch", payload)

    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "pre_step", payload, len(payload["batch"][0]))

    def step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "step", payload)

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "post_step", payload)

    def post_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "post_epoch", payload)

    def post_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "post_training", payload, payload["status"])

    def pre_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "pre_validation", payload)

    def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "post_validation", payload)

    def exception(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._add(trainer, "exception", payload, payload["error"])


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def make_dataset(items: int = 6, data_seed: int = 0, offset: float = 0.5) -> TensorDataset:
    """``items`` random rows ``x`` of 3 features (from their own generator) and the target ``x.sum() + offset``."""
    generator = torch.Generator().manual_seed(data_seed)
    x = torch.randn(items, 3, generator=generator)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) + offset)


def make_model(init_seed: int = 0) -> nn.Linear:
    torch.manual_seed(init_seed)
    return nn.Linear(3, 1)


def make_trainer(
    items: int = 6,
    batch_size: int | None = 2,
    max_epochs: int = 2,
    *,
    init_seed: int = 0,
    model: nn.Module | None = None,
    dataset: Dataset[Any] | Any = None,
    cls: type[BaseTrainer] = BaseTrainer,
    **kwargs: Any,
) -> BaseTrainer:
    """A real trainer: ``nn.Linear(3, 1)`` regressing a linear target on ``items`` random rows, on the CPU.

    ``model`` and ``dataset`` replace the linear model (seeded with ``init_seed``) and the rows (``items`` is then
    unused); a plain :class:`BaseTrainer` gets :func:`mse` as its ``loss_fn`` unless one is given."""
    if cls is BaseTrainer:
        kwargs.setdefault("loss_fn", mse)
    return cls(
        make_model(init_seed) if model is None else model,
        make_dataset(items) if dataset is None else dataset,
        max_epochs=max_epochs,
        batch_size=batch_size,
        device="cpu",
        **kwargs,
    )


#: a small image field that trains in seconds on the CPU: a 64x64 image, 8x8 occupancy cells of 8x8 pixels, a small
#: grid and decoder; batches of 512 pixels, 20 per epoch
SMALL_FIELD: dict[str, Any] = {
    "size": 64,
    "batch_size": 512,
    "batches_per_epoch": 20,
    "dense": (8, 16),
    "hashed": (32, 64),
    "table": 2**10,
    "hidden": 16,
    "occupancy_cells": 8,
}


def small_field(**overrides: Any) -> ImageFieldTrainer:
    """The reference app's trainer (``image_field_trainer``) in the :data:`SMALL_FIELD` configuration, with
    ``overrides`` on top."""
    from trainers.apps.image_field import image_field_trainer  # only the tests that train the app pay its import

    return image_field_trainer(**{**SMALL_FIELD, **overrides})


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_params(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def compact(row: Row) -> tuple[Any, ...]:
    """A :class:`Recorder` row in the compact form (see there)."""
    event, epoch, step, iteration, selected = row
    if selected is None:
        return (event, epoch, step, iteration)
    if event == "post_training":
        selected = str(selected)
    elif event == "exception":
        selected = type(selected).__name__
    return (event, epoch, step, iteration, selected)


def full_run(epochs: int, steps: int, sizes: list[int] | None = None, status: str = "completed") -> list[Row]:
    """The exact rows a :class:`Recorder` logs for an uninterrupted run of ``epochs`` x ``steps``."""
    rows: list[Row] = [("pre_training", 0, 0, 0, False)]
    iteration = 0
    for epoch in range(1, epochs + 1):
        rows.append(("pre_epoch", epoch, 0, iteration, None))
        for step in range(1, steps + 1):
            iteration += 1
            size = sizes[step - 1] if sizes is not None else 2
            rows += [
                ("pre_step", epoch, step, iteration, size),
                ("step", epoch, step, iteration, None),
                ("post_step", epoch, step, iteration, None),
            ]
        rows.append(("post_epoch", epoch, steps, iteration, None))
    rows.append(("post_training", epochs, steps, iteration, status))
    return rows
