"""Rows of the overhead benchmark (:mod:`benchmarks.overhead`) for two options of the optimisation step, each group
with a hand-written PyTorch loop doing the same as its baseline:

* ``accumulate``: gradient accumulation over 4 batches -- the raw loop doing it by hand (each loss divided by 4,
  ``step`` and ``zero_grad`` every 4th batch and at an epoch's last), stepbus ``BaseTrainer(accumulate=4)``,
  Ignite's ``create_supervised_trainer(gradient_accumulation_steps=4)``, Lightning's
  ``Trainer(barebones=True, accumulate_grad_batches=4)``.
* ``bf16``: bfloat16 mixed precision on the CPU -- the raw loop with its forward pass and loss under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, stepbus ``BaseTrainer(precision="bf16-mixed")``, Ignite's bare
  ``Engine`` with that autocast in its update function (``create_supervised_trainer(amp_mode="amp")`` autocasts for
  CUDA only), Lightning's ``Trainer(barebones=True, precision="bf16-mixed")``.

stepbus runs with no callbacks and the peers with nothing attached, so each row is the engine doing the option. With
1000 batches per epoch every window is 4 batches long: the windows are the same in all four.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.peers import ignite_run, ignite_supervised_run, lightning_run
from benchmarks.raw_loops import raw_accumulate, raw_autocast
from benchmarks.workload import Batch, Timing, run_stepbus

__all__ = ["ACCUMULATE", "RAW_ACCUMULATE", "STEPBUS_ACCUMULATE", "variants"]

#: micro-batches per optimizer step in the ``accumulate`` group
ACCUMULATE = 4
RAW_ACCUMULATE = f"raw loop accumulating by hand (loss / {ACCUMULATE}, a step every {ACCUMULATE} batches)"
STEPBUS_ACCUMULATE = f"stepbus, 0 callbacks, accumulate={ACCUMULATE}"

Runner = Callable[[], Timing] | None


def variants(batches: list[Batch], epochs: int, ignite: bool, lightning: bool) -> list[tuple[str, str, Runner]]:
    """The rows of the ``accumulate`` and ``bf16`` groups: (group, name, runner), the runner ``None`` where the peer
    is not installed; each group's first row is its baseline."""

    def peer(available: bool, fn: Callable[[], Timing]) -> Runner:
        return fn if available else None

    bf16 = torch.bfloat16
    return [
        ("accumulate", RAW_ACCUMULATE, lambda: raw_accumulate(batches, epochs, ACCUMULATE)),
        (
            "accumulate",
            STEPBUS_ACCUMULATE,
            lambda: run_stepbus(batches, epochs, list, accumulate=ACCUMULATE),
        ),
        (
            "accumulate",
            f"Ignite create_supervised_trainer, gradient_accumulation_steps={ACCUMULATE}",
            peer(ignite, lambda: ignite_supervised_run(batches, epochs, gradient_accumulation_steps=ACCUMULATE)),
        ),
        (
            "accumulate",
            f"Lightning Trainer, extras off, accumulate_grad_batches={ACCUMULATE}",
            peer(lightning, lambda: lightning_run(batches, epochs, options={"accumulate_grad_batches": ACCUMULATE})),
        ),
        (
            "bf16",
            "raw loop, forward and loss under torch.autocast(cpu, bfloat16)",
            lambda: raw_autocast(batches, epochs),
        ),
        (
            "bf16",
            'stepbus, 0 callbacks, precision="bf16-mixed"',
            lambda: run_stepbus(batches, epochs, list, precision="bf16-mixed"),
        ),
        (
            "bf16",
            "Ignite Engine, bare, its update under torch.autocast(cpu, bfloat16)",
            peer(ignite, lambda: ignite_run(batches, epochs, autocast=bf16)),
        ),
        (
            "bf16",
            'Lightning Trainer, extras off, precision="bf16-mixed"',
            peer(lightning, lambda: lightning_run(batches, epochs, options={"precision": "bf16-mixed"})),
        ),
    ]
