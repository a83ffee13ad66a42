"""The hand-written PyTorch loops the overhead benchmark (:mod:`benchmarks.overhead`) measures the frameworks against:
the same model, optimizer and batches as :mod:`benchmarks.workload`, with no framework around them.

* :func:`raw`: the plain loop (zero_grad, forward, loss, backward, step).
* :func:`raw_default_work`, :func:`raw_scheduled`: the plain loop doing by hand what a set of stepbus callbacks does;
  :func:`raw_default_essentials`: less than the default set, for context.
* :func:`raw_accumulate`: gradient accumulation by hand -- each loss divided by its window's length, the optimizer
  stepped (and the gradients cleared) once per ``n`` batches and at the last batch of each epoch.
* :func:`raw_autocast`: the plain loop with the forward pass and the loss under ``torch.autocast("cpu", dtype)``.
* :func:`raw_null`: no model at all, the loop over the batches (the floor for the engines alone).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from benchmarks.workload import Batch, Discard, Timing, make_model, timed

__all__ = [
    "atomic_saver",
    "no_prune",
    "raw",
    "raw_accumulate",
    "raw_autocast",
    "raw_default_essentials",
    "raw_default_work",
    "raw_null",
    "raw_scheduled",
    "window_lengths",
]


def raw(batches: list[Batch], epochs: int) -> Timing:
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def loop() -> None:
        for _ in range(epochs):
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()

    return timed(loop)


def atomic_saver(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[int, int], None]:
    """``save(epoch, iteration)``: a checkpoint of ``model`` and ``optimizer`` written atomically under ``directory``
    (temporary file, fsync, rename), keeping the last 3 -- what the by-hand loops do for the Checkpointer's work."""
    saved: list[Path] = []

    def save(epoch: int, iteration: int) -> None:
        path = directory / f"step-{iteration:08d}.pt"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        saved.append(path)
        while len(saved) > 3:
            saved.pop(0).unlink()

    return save


def raw_default_work(batches: list[Batch], epochs: int, tmp: Path) -> Timing:
    """The raw loop doing by hand what the full default set does, written as a careful user would: the same rows
    and display, with no tensor op per step beyond the finite check's and no host copy between log points.

    * a finite check of the loss and gradients every step (one fused norm call, one value read back) that withholds
      the update when it fails;
    * Wisp's LR milestones;
    * every 50 iterations a TensorBoard row of the window's mean loss, ms per iteration, samples per second, the LR
      and the gradient norm; at each epoch's end its mean loss and duration;
    * a rich display of the run's and the epoch's progress (count, rate, ETA, the window's mean loss), redrawn at
      most 10 times a second;
    * a checkpoint per epoch written atomically (temporary file, fsync, rename; keep 3).

    The fair baseline for the default set's row: the same work without a framework."""
    from torch.utils.tensorboard import SummaryWriter

    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(batches)
    milestones = [round(m * total) for m in (0.5, 0.75, 0.9)]
    params = list(model.parameters())
    directory = Path(tempfile.mkdtemp(dir=tmp))
    writer = SummaryWriter(str(directory / "tb"))
    console = Console(file=Discard(), force_terminal=True, width=120, color_system=None)
    save = atomic_saver(directory, model, optimizer)

    def loop() -> None:
        iteration, next_draw, shown = 0, 0.0, ""
        losses: list[torch.Tensor] = []  # the window's losses, kept as they are (no op per step)
        window_start = drawn_at = time.perf_counter()
        window_samples = drawn_iteration = 0
        counted = 0  # of `losses`, those already in the epoch's sum (a window can span an epoch's end)
        epoch_sum = torch.zeros((), dtype=torch.float64)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            auto_refresh=False,
        ) as progress:
            overall = progress.add_task("training", total=total, rate="", info="")
            bar = progress.add_task("epoch", total=len(batches), rate="", info="")
            for epoch in range(1, epochs + 1):
                epoch_start, epoch_sum, epoch_steps = time.perf_counter(), epoch_sum.zero_(), 0
                progress.reset(bar, description=f"epoch {epoch}/{epochs}", total=len(batches))
                for step, (x, y) in enumerate(batches, 1):
                    iteration += 1
                    if iteration - 1 in milestones:
                        for group in optimizer.param_groups:
                            group["lr"] *= 0.333
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.mse_loss(model(x), y)
                    loss.backward()  # type: ignore[no-untyped-call]
                    detached = loss.detach()
                    norms = torch.stack(
                        torch._foreach_norm([*(p.grad for p in params if p.grad is not None), detached])
                    )
                    if math.isfinite(norms.sum().item()):
                        optimizer.step()
                    losses.append(detached)
                    window_samples += x.shape[0]
                    if iteration % 50 == 0:
                        now = time.perf_counter()
                        window = torch.stack(losses).double()
                        epoch_sum += window[counted:].sum()
                        epoch_steps += len(losses) - counted
                        writer.add_scalar("train/loss", window.mean().item(), iteration)
                        writer.add_scalar("time/iter_ms", (now - window_start) * 1000 / len(losses), iteration)
                        writer.add_scalar("time/samples_per_s", window_samples / (now - window_start), iteration)
                        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], iteration)
                        writer.add_scalar("grad_norm", torch.linalg.vector_norm(norms[:-1]).item(), iteration)
                        losses.clear()
                        window_start, window_samples, counted = now, 0, 0
                    now = time.perf_counter()
                    if now >= next_draw:
                        if losses:
                            shown = f"loss {torch.stack(losses).double().mean().item():.5g}"
                        rate = (iteration - drawn_iteration) / (now - drawn_at)
                        drawn_at, drawn_iteration = now, iteration
                        progress.update(overall, completed=iteration, rate=f"{rate:,.0f} it/s", info=shown)
                        progress.update(bar, completed=step)
                        progress.refresh()
                        next_draw = now + 0.1
                if len(losses) > counted:  # the open window's losses of this epoch
                    epoch_sum += torch.stack(losses[counted:]).double().sum()
                    epoch_steps += len(losses) - counted
                    counted = len(losses)
                writer.add_scalar("epoch/loss", (epoch_sum / epoch_steps).item(), iteration)
                writer.add_scalar("time/epoch_s", time.perf_counter() - epoch_start, iteration)
                writer.flush()
                save(epoch, iteration)
        writer.close()

    return timed(loop)


def raw_default_essentials(batches: list[Batch], epochs: int, tmp: Path) -> Timing:
    """Less than the default set does, for context: one bar with rich's default columns redrawn at most 10 times a
    second, the latest loss (not the window's mean) alone to TensorBoard every 50 iterations, nothing at an epoch's
    end but the checkpoint, Wisp's LR milestones, and the finite check written plainly: the gradients' norms stacked
    and summed, the detached loss added, the value read back (six tensor operations)."""
    from torch.utils.tensorboard import SummaryWriter

    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(batches)
    milestones = [round(m * total) for m in (0.5, 0.75, 0.9)]
    params = list(model.parameters())
    directory = Path(tempfile.mkdtemp(dir=tmp))
    writer = SummaryWriter(str(directory / "tb"))
    console = Console(file=Discard(), force_terminal=True, width=120, color_system=None)
    save = atomic_saver(directory, model, optimizer)

    def loop() -> None:
        iteration, next_draw = 0, 0.0
        with Progress(console=console, auto_refresh=False) as progress:
            task = progress.add_task("train", total=total)
            for epoch in range(1, epochs + 1):
                for x, y in batches:
                    iteration += 1
                    if iteration - 1 in milestones:
                        for group in optimizer.param_groups:
                            group["lr"] *= 0.333
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.mse_loss(model(x), y)
                    loss.backward()  # type: ignore[no-untyped-call]
                    norms = torch.stack(torch._foreach_norm([p.grad for p in params if p.grad is not None]))
                    if math.isfinite((norms.sum() + loss.detach()).item()):
                        optimizer.step()
                    if iteration % 50 == 0:
                        writer.add_scalar("train/loss", loss.item(), iteration)
                    now = time.monotonic()
                    if now >= next_draw:
                        progress.update(task, completed=iteration)
                        progress.refresh()
                        next_draw = now + 0.1
                save(epoch, iteration)
        writer.close()

    return timed(loop)


def raw_scheduled(batches: list[Batch], epochs: int) -> Timing:
    """The raw loop doing by hand what the scheduled callbacks do."""
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[round(m * total) for m in (0.5, 0.75, 0.9)], gamma=0.333
    )
    params = list(model.parameters())
    val_x, val_y = batches[0]

    def loop() -> None:
        best, wait, iteration = float("inf"), 0, 0
        model.train()
        for _ in range(epochs):
            for x, y in batches:
                iteration += 1
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                if bool(torch.isfinite(norm) & torch.isfinite(loss)):
                    optimizer.step()
                scheduler.step()
                if iteration % 100 == 0:
                    no_prune(model)
            model.eval()
            with torch.no_grad():
                value = nn.functional.mse_loss(model(val_x), val_y).item()
            model.train()
            best, wait = (value, 0) if value < best else (best, wait + 1)

    return timed(loop)


def raw_null(batches: list[Batch], epochs: int) -> Timing:
    def loop() -> None:
        sink = None
        for _ in range(epochs):
            for batch in batches:
                sink = batch
        del sink

    return timed(loop)


def no_prune(pipeline: nn.Module) -> None:
    """The benchmark's stand-in for a grid's ``prune()``: the cost of the call, not of pruning."""


def window_lengths(per_epoch: int, n: int) -> list[int]:
    """For each batch of an epoch, the length of its accumulation window: ``n``, or less for a last window that the
    end of the epoch cuts short (windows never cross an epoch)."""
    return [min(n, per_epoch - i // n * n) for i in range(per_epoch)]


def raw_accumulate(batches: list[Batch], epochs: int, n: int, model: nn.Module | None = None) -> Timing:
    """Gradient accumulation by hand: ``loss / n`` (a cut-short last window: its own length), backward, and every
    ``n``-th batch and at the last of each epoch ``step`` then ``zero_grad``. ``model`` is trained in place when
    given (a test compares its weights with a stepbus run's)."""
    net = make_model(0) if model is None else model
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    lengths = window_lengths(len(batches), n)  # all n when n divides the epoch, as in the benchmark
    last = len(batches) - 1
    net.train()

    def loop() -> None:
        for _ in range(epochs):
            for i, (x, y) in enumerate(batches):
                loss = nn.functional.mse_loss(net(x), y) / lengths[i]
                loss.backward()  # type: ignore[no-untyped-call]
                if (i + 1) % n == 0 or i == last:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

    return timed(loop)


def raw_autocast(
    batches: list[Batch], epochs: int, dtype: torch.dtype = torch.bfloat16, model: nn.Module | None = None
) -> Timing:
    """The plain loop with the forward pass and the loss under ``torch.autocast("cpu", dtype=dtype)`` (backward and
    the optimizer step outside it, as the autocast docs prescribe)."""
    net = make_model(0) if model is None else model
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()

    def loop() -> None:
        for _ in range(epochs):
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=dtype):
                    loss = nn.functional.mse_loss(net(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()

    return timed(loop)
