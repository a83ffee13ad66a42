"""``ModelSummary``: the parameters of the trained model, module by module, as a table at the start of a run.

Events used: ``pre_training`` only (a resumed run prints it again: each process says what it trains). The table
goes to the console (a rich table; off a terminal it is printed whole, never wrapped: ``callbacks.console_width``)
and to the loggers as text, ``trainer.log("model_summary", text)`` -- a Markdown table, which TensorBoard renders as
a table and which reads as one in plain text. Its handler runs after the loggers' ``pre_training`` (they open their
files there) and before the progress display starts. Rank 0 only.

One row per module of ``trainer.pipeline`` down to ``max_depth`` levels (1: the top-level children, as Lightning's
``ModelSummary``), in definition order, then a ``total`` row for the whole pipeline. Columns: the module's dotted
name, its type, its trainable parameters (``requires_grad``), its frozen parameters, its buffers' elements (a column
only when the pipeline has buffers), its size in MB (10^6 bytes of parameters and buffers, each at its dtype's
size), and, for a trainer with named optimizers (a GAN's ``generator`` and ``discriminator``), which optimizers
update the module's parameters. A parameter shared by several modules is counted once in each of them and once in
the total; a row's counts include its submodules'.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from torch import nn

from callbacks.console_width import console_for, print_whole
from lifecycle import Callback, Priority

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from trainers.engine.trainer import BaseTrainer

__all__ = ["ModelSummary", "Row", "summarize"]

_MB = 1_000_000


@dataclass(frozen=True)
class Row:
    """One line of the summary: a module (or the ``total``) and what it holds."""

    name: str
    type: str
    trainable: int
    frozen: int
    buffers: int
    bytes: int
    optimizers: tuple[str, ...]

    @property
    def megabytes(self) -> float:
        return self.bytes / _MB


def _unique(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    kept = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            kept.append(tensor)
    return kept


def _row(name: str, module: nn.Module, owners: Mapping[int, tuple[str, ...]], order: Sequence[str]) -> Row:
    params = _unique(module.parameters())
    buffers = _unique(module.buffers())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    size = sum(t.numel() * t.element_size() for t in (*params, *buffers))
    found = {label for p in params for label in owners.get(id(p), ())}
    named = tuple(label for label in order if label in found)
    return Row(name, type(module).__name__, trainable, frozen, sum(b.numel() for b in buffers), size, named)


def summarize(
    pipeline: nn.Module, max_depth: int = 1, optimizers: Mapping[str, torch.optim.Optimizer] | None = None
) -> list[Row]:
    """The rows of the summary of ``pipeline``: its modules down to ``max_depth`` (-1: every depth), then the
    total (named ``total``). ``optimizers``: which optimizer holds which parameter, for the ``optimizer`` column."""
    owners: dict[int, tuple[str, ...]] = {}
    order = list(optimizers or {})
    for label, optimizer in (optimizers or {}).items():
        for group in optimizer.param_groups:
            for param in group["params"]:
                owners[id(param)] = (*owners.get(id(param), ()), label)
    rows = []
    for name, module in pipeline.named_modules():
        depth = name.count(".") + 1 if name else 0
        if depth == 0 or (max_depth != -1 and depth > max_depth):
            continue
        rows.append(_row(name, module, owners, order))
    return [*rows, _row("total", pipeline, owners, order)]


def _columns(rows: Sequence[Row], named: bool) -> list[str]:
    columns = ["name", "type", "trainable", "frozen"]
    if rows[-1].buffers:
        columns.append("buffers")
    columns.append("size (MB)")
    if named:
        columns.append("optimizer")
    return columns


def _cells(row: Row, columns: Sequence[str]) -> list[str]:
    values = {
        "name": row.name,
        "type": row.type,
        "trainable": f"{row.trainable:,}",
        "frozen": f"{row.frozen:,}",
        "buffers": f"{row.buffers:,}",
        "size (MB)": "<0.001" if 0 < row.megabytes < 0.0005 else f"{row.megabytes:,.3f}",
        "optimizer": ", ".join(row.optimizers) or "-",
    }
    return [values[column] for column in columns]


_RIGHT = frozenset({"trainable", "frozen", "buffers", "size (MB)"})


def as_table(rows: Sequence[Row], named: bool) -> Table:
    """The rows as a rich table (the total last, after a line)."""
    columns = _columns(rows, named)
    table = Table(title="model summary", title_justify="left", show_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in _RIGHT else "left", no_wrap=True)
    for index, row in enumerate(rows):
        table.add_row(*_cells(row, columns), end_section=index == len(rows) - 2)
    return table


def as_markdown(rows: Sequence[Row], named: bool) -> str:
    """The rows as a Markdown table with padded columns: a table in TensorBoard, aligned in plain text."""
    columns = _columns(rows, named)
    body = [_cells(row, columns) for row in rows]
    widths = [max(len(column), *(len(cells[i]) for cells in body)) for i, column in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if column in _RIGHT else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if column in _RIGHT else "-" * (width + 2)
            for width, column in zip(widths, columns, strict=True)
        )
        + "|"
    )
    return "\n".join([line(columns), rule, *(line(cells) for cells in body)])


class ModelSummary(Callback):
    """Print the parameters of ``trainer.pipeline`` per module (trainable, frozen, buffers, size, and the named
    optimizers that update them) as a table when training starts, and send it to the loggers as text
    (``model_summary``).

    Args:
        max_depth: how many levels of submodules get a row: 1 for the top-level children (default), 2 for their
            children too, ...; -1 for every level. (``enabled: false`` leaves the summary out.)
        console: where to print; stdout by default (``callbacks.console_width.console_for()``).
    """

    priority = Priority.LOGGING - 50  # after the loggers open their files in pre_training, before the progress bars
    rank_zero_only = True  # one summary: rank 0 of a distributed job

    def __init__(
        self,
        max_depth: int = 1,
        *,
        console: Console | None = None,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or (max_depth < 1 and max_depth != -1):
            raise ValueError(
                f"ModelSummary {self.state_key!r}: max_depth must be an int >= 1 (levels of submodules) or -1 (every "
                f"level), got {max_depth!r}; to leave the summary out, remove the callback (enabled: false)"
            )
        self.max_depth = max_depth
        self.console = console or console_for()
        #: the rows of the latest summary (``None`` before ``pre_training``)
        self.rows: list[Row] | None = None
        #: the latest summary as the loggers received it
        self.text: str | None = None

    def pre_training(self, trainer: BaseTrainer, **_: Any) -> None:
        optimizers = dict(trainer.optimizers)
        named = len(optimizers) > 1
        self.rows = summarize(trainer.pipeline, self.max_depth, optimizers)
        self.text = as_markdown(self.rows, named)
        print_whole(self.console, as_table(self.rows, named))
        trainer.log("model_summary", self.text)

    def __repr__(self) -> str:
        return f"<ModelSummary state_key={self.state_key!r} max_depth={self.max_depth}>"
