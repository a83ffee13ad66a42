"""The GPU path: host synchronisations per step and throughput on CUDA, for a machine that has one (nothing else in
stepbus depends on it; CI never has one).

    python -m benchmarks.gpu                       # on a CUDA machine: writes benchmarks/results-gpu.md
    python -m benchmarks.gpu --device cpu --quick --out x.md   # the same script on the CPU, tiny (the smoke test)

* **Host syncs.** The tiny MLP of :mod:`benchmarks.workload` (its batches on the device) and the reference image
  field train with the full default set under ``torch.cuda.set_sync_debug_mode("warn")``: every operation that makes
  the host wait for the device warns, and a pair of handlers (the first of ``pre_step``, the last of ``post_step``)
  counts the warnings of each step. The report lists how many steps synchronised and whether all of them were steps
  at which a callback was due (a row every 50 iterations: the logger's read and the published ``grad_norm``).
  With a plain optimizer ``GradientGuard``'s non-finite check reads one value before every optimizer step (it must
  know whether to withhold the update); with Adam's fused kernel it hands that decision to the optimizer on the
  device and reads nothing. So the default set runs with both, with ``GradientGuard(on_nonfinite=None)``, and under
  ``"16-mixed"``, where the GradScaler takes that decision (with its own read in ``scaler.step``).
* **Throughput.** Iterations per second of the tiny MLP on the device in fp32, ``bf16-mixed`` and ``16-mixed``: a raw
  loop (autocast, a GradScaler for fp16), stepbus with no callback and with the default set, and Lightning's
  ``Trainer`` (extras off) with the same precision -- one run each, interleaved ``repeats`` times, medians.
* **Several GPUs**: DDP and FSDP over NCCL are not measured here (``benchmarks/strategies.py`` measures them over gloo
  on the CPU); the report says how many devices the machine had.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.peers import lightning_run, versions
from benchmarks.workload import Batch, default_set, make_batches, make_model, run_stepbus
from callbacks import Callback, GradientGuard
from trainers.engine.trainer import BaseTrainer

__all__ = ["main"]

RESULTS = Path(__file__).with_name("results-gpu.md")
LOG_EVERY = 50  # the default set's row (TensorBoardLogger every 50 it) and GradientGuard's grad_norm
SYNC_WARNING = "called a synchronizing CUDA operation"


class _SyncCounter(Callback):
    """Counts, per step, the host synchronisations the sync debug mode warned about between the first ``pre_step``
    handler and the last ``post_step`` one."""

    def __init__(self, caught: list[warnings.WarningMessage]) -> None:
        super().__init__(state_key="SyncCounter")
        self.caught = caught
        self.per_step: dict[int, int] = {}
        self._start = 0

    def priority_of(self, event: Any) -> int:
        return 10**9 if str(event) == "pre_step" else -(10**9)

    def pre_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        self._start = len(self.caught)

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        found = sum(1 for w in self.caught[self._start :] if SYNC_WARNING in str(w.message))
        if found:
            self.per_step[trainer.state.iteration] = found


def _sync_row(name: str, device: torch.device, run: Callable[[Callback], None], iterations: int) -> dict[str, Any]:
    if device.type != "cuda":
        return {"variant": name, "checked": False, "iterations": iterations}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counter = _SyncCounter(caught)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(counter)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synced = sorted(counter.per_step)
    stray = [i for i in synced if i % LOG_EVERY != 0]
    return {"variant": name, "checked": True, "iterations": iterations, "synced": synced, "stray": stray}


def sync_rows(device: torch.device, iterations: int, tmp: Path) -> list[dict[str, Any]]:
    batches = [(x.to(device), y.to(device)) for x, y in make_batches(min(iterations, 1000))]
    epochs = max(1, iterations // len(batches))

    def mlp(callbacks: Callable[[], list[Callback]], **options: Any) -> Callable[[Callback], None]:
        def run(counter: Callback) -> None:
            _run(batches, epochs, lambda: [*callbacks(), counter], tmp, device, **options)

        return run

    def unguarded() -> list[Callback]:
        return [c for c in default_set() if not isinstance(c, GradientGuard)] + [GradientGuard(on_nonfinite=None)]

    total = epochs * len(batches)
    rows = [
        _sync_row("tiny MLP, no callback", device, mlp(list), total),
        _sync_row("tiny MLP, default set", device, mlp(default_set), total),
        _sync_row("tiny MLP, default set, Adam(fused=True)", device, mlp(default_set, fused=True), total),
        _sync_row("tiny MLP, default set, GradientGuard(on_nonfinite=None)", device, mlp(unguarded), total),
        _sync_row('tiny MLP, default set, precision="16-mixed"', device, mlp(default_set, precision="16-mixed"), total),
        _sync_row(
            'tiny MLP, default set, precision="bf16-mixed"', device, mlp(unguarded, precision="bf16-mixed"), total
        ),
    ]
    field_steps = min(iterations, 300)
    rows.append(
        _sync_row("image field, its default config", device, _image_field(device, field_steps, tmp), field_steps)
    )
    return rows


def _run(
    batches: list[Batch],
    epochs: int,
    callbacks: Callable[[], list[Callback]],
    tmp: Path,
    device: torch.device,
    **options: Any,
) -> float:
    timing = run_stepbus(batches, epochs, callbacks, run_dir=tmp, device=str(device), **options)
    return timing.steady / (epochs * len(batches))


def _image_field(device: torch.device, steps: int, tmp: Path) -> Callable[[Callback], None]:
    from trainers.config.builder import build

    def run(counter: Callback) -> None:
        config = {
            "run": {"name": "gpu", "seed": 0},
            "trainer": {
                "name": "image_field",
                "size": 256,
                "max_epochs": 1,
                "batches_per_epoch": steps,
                "device": str(device),
                "threads": None,
            },
            "callbacks": {
                "tensorboard": {"every": f"{LOG_EVERY}it"},
                "checkpointer": {"every": "1ep"},
                "validator": {"every": "1ep"},
                "grid_pruning": {"every": "100it", "start": 100},
            },
        }
        trainer = build(config, run_dir=Path(tempfile.mkdtemp(dir=tmp)))
        trainer.add_callback(counter)
        trainer.train()
        trainer.close()

    return run


def _raw(batches: list[Batch], epochs: int, device: torch.device, precision: str) -> float:
    model = make_model(0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    _synchronize(device)
    start = time.perf_counter_ns()
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.mse_loss(model(x), y)
            if scaler is None:
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            else:
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.step(optimizer)
                scaler.update()
    _synchronize(device)
    return (time.perf_counter_ns() - start) / 1e3 / (epochs * len(batches))


def _lightning(batches: list[Batch], epochs: int, options: dict[str, Any]) -> float:
    return lightning_run(batches, epochs, options=options).steady / (epochs * len(batches))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_rows(device: torch.device, iterations: int, repeats: int, tmp: Path) -> list[dict[str, Any]]:
    batches = [(x.to(device), y.to(device)) for x, y in make_batches(min(iterations, 1000))]
    epochs = max(1, iterations // len(batches))
    lightning = versions().get("lightning") is not None
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for precision in ("32", "bf16-mixed", "16-mixed"):
            if precision == "16-mixed" and device.type != "cuda":
                continue  # fp16 autocast with a GradScaler is a CUDA path
            runs: dict[str, Callable[[], float]] = {
                "raw PyTorch loop": partial(_raw, batches, epochs, device, precision),
                "stepbus, 0 callbacks": partial(_run, batches, epochs, list, tmp, device, precision=precision),
                "stepbus, full default set": partial(
                    _run, batches, epochs, default_set, tmp, device, precision=precision
                ),
            }
            if lightning:
                options = {"accelerator": accelerator, "precision": "32-true" if precision == "32" else precision}
                runs["Lightning Trainer, extras off"] = partial(_lightning, batches, epochs, options)
            for name, go in runs.items():
                samples.setdefault((precision, name), []).append(go())
    return [
        {"precision": precision, "variant": name, "us": statistics.median(values)}
        for (precision, name), values in samples.items()
    ]


def report(device: torch.device, sync: list[dict[str, Any]], speed: list[dict[str, Any]], repeats: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU (no CUDA: syncs not checked)"
    lines = [
        "# stepbus on a GPU (`python -m benchmarks.gpu`)",
        "",
        f"Device: {name}; torch {torch.__version__}; CUDA devices: {torch.cuda.device_count()}.",
        "",
        "## Host synchronisations per step",
        "",
        f'`torch.cuda.set_sync_debug_mode("warn")`; a step is due when its iteration is a multiple of {LOG_EVERY}.',
        "",
        "| variant | iterations | steps with a host sync | of them not due | first ones not due |",
        "|---|---:|---:|---:|---|",
    ]
    for row in sync:
        if not row["checked"]:
            lines.append(f"| {row['variant']} | {row['iterations']} | not checked | | |")
            continue
        stray = row["stray"]
        lines.append(
            f"| {row['variant']} | {row['iterations']} | {len(row['synced'])} | {len(stray)} | "
            f"{', '.join(map(str, stray[:5]))} |"
        )
    lines += ["", f"## Throughput (tiny MLP, µs per iteration, median of {repeats})", ""]
    lines += ["| precision | variant | µs/it | ratio to raw |", "|---|---|---:|---:|"]
    raw = {r["precision"]: r["us"] for r in speed if r["variant"] == "raw PyTorch loop"}
    for row in speed:
        ratio = row["us"] / raw[row["precision"]]
        lines.append(f"| {row['precision']} | {row['variant']} | {row['us']:.1f} | {ratio:.2f}x |")
    several = torch.cuda.device_count() > 1
    lines += ["", "## Several GPUs", ""]
    count = torch.cuda.device_count()
    lines.append(
        f"{count} devices: DDP and FSDP over NCCL are not measured by this script."
        if several
        else "Fewer than two: not measured."
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the smoke test)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown report (default {RESULTS})")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu runs the script's CPU path")
    iterations, repeats = (100, 1) if args.quick else (3000, 5)
    with tempfile.TemporaryDirectory(prefix="stepbus-gpu-") as scratch:
        tmp = Path(scratch)
        text = report(
            device, sync_rows(device, iterations, tmp), throughput_rows(device, iterations, repeats, tmp), repeats
        )
    print(text)
    if args.out is not None or not args.quick:  # a smoke run leaves the real results alone
        (args.out or RESULTS).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
