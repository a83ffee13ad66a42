"""DDP and FSDP side by side: real 2-rank gloo jobs on the CPU, one process as context.

Each variant is one job of fresh processes (ranks started by hand with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT``, one torch thread each, as ``torchrun`` would start them: this module runs itself as the worker,
``python -m benchmarks.strategies --worker SPEC.json``). Each rank measures memory first, in a process that has
built nothing yet, then time:

* **memory** on an MLP large enough to matter (Adam: parameters, gradients and two moments, 16 bytes a parameter):
  the bytes of parameters, gradients and optimizer state this rank holds (a ``DTensor`` counts its local shard;
  exact), and the peak RSS growth over the RSS after import, per rank (the larger of the two ranks): while the
  trainer is built -- every rank builds the whole model before FSDP shards it, so that peak is the same for all --
  and while it steps. The peak is the kernel's ``VmHWM`` (``/proc/self/status``), reset to the current RSS through
  ``/proc/self/clear_refs`` after import and again after the build; where the reset is refused, ``ru_maxrss``
  (never reset: both columns are then the whole run's peak);
* **time** on the reference app (``image_field_trainer``, no callbacks): microseconds per iteration in steady
  state (after a warm-up, the median of several windows, as rank 0 sees it: every step's collectives keep the ranks
  in lockstep), then ``save_checkpoint`` a few times (the median; DDP and one process: one ``.pt`` file written by
  rank 0; FSDP: the sharded DCP directory every rank writes its part of) and the size on disk.

Variants: one process (context), DDP on 2 ranks, FSDP on 2 ranks with the default units (every child of the
pipeline that holds parameters) and with ``units: "root"`` (the pipeline as one unit).

Run: ``python -m benchmarks.strategies`` (``--quick`` for a smoke run). Prints a markdown table and writes it to
``benchmarks/results-strategies.md`` unless ``--out`` says otherwise. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import TensorDataset

from trainers.apps.image_field.trainer import image_field_trainer
from trainers.engine.trainer import BaseTrainer

__all__ = ["FULL", "QUICK", "VARIANTS", "Sizes", "Variant", "main", "model_parameters"]

RESULTS = Path(__file__).with_name("results-strategies.md")
ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


@dataclass(frozen=True)
class Variant:
    """One row: how many ranks, which strategy, which FSDP units (``None``: not FSDP)."""

    label: str
    world: int
    strategy: str
    units: str | None = None


VARIANTS = (
    Variant("one process (context)", 1, "ddp"),
    Variant("DDP, 2 ranks", 2, "ddp"),
    Variant("FSDP, 2 ranks, units 'children' (default)", 2, "fsdp", "children"),
    Variant("FSDP, 2 ranks, units 'root'", 2, "fsdp", "root"),
)


@dataclass(frozen=True)
class Sizes:
    """The image field's side and global batch, the timing windows, the saves; the MLP's width, depth and batch."""

    size: int
    batch: int
    warmup: int
    windows: int
    window: int
    saves: int
    width: int
    depth: int
    mlp_batch: int
    mlp_steps: int


FULL = Sizes(
    size=256, batch=4096, warmup=25, windows=9, window=25, saves=3, width=4096, depth=6, mlp_batch=32, mlp_steps=3
)
QUICK = Sizes(size=32, batch=256, warmup=2, windows=3, window=3, saves=1, width=256, depth=4, mlp_batch=8, mlp_steps=2)


def model_parameters(sizes: Sizes) -> int:
    """The MLP's parameter count: ``depth`` square linear layers with biases."""
    return sizes.depth * (sizes.width * sizes.width + sizes.width)


# ---------------------------------------------------------------------------------------------- the worker (a rank)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) to the current RSS; ``False`` where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_kib(resettable: bool) -> int:
    return _status_kib("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _fsdp(variant: Variant) -> dict[str, Any] | None:
    return {"units": variant.units} if variant.units is not None else None


def _time_worker(variant: Variant, sizes: Sizes, folder: Path) -> dict[str, Any]:
    steps = sizes.warmup + sizes.windows * sizes.window
    trainer = image_field_trainer(
        run_dir=folder / "time-run",
        size=sizes.size,
        batch_size=sizes.batch,
        batches_per_epoch=steps + 1,  # no epoch boundary inside the measurement
        max_epochs=1,
        threads=1,
        strategy="fsdp" if variant.strategy == "fsdp" else "ddp",
        fsdp=_fsdp(variant),
    )
    for _ in range(sizes.warmup):
        trainer.iterate()
    windows = []
    for _ in range(sizes.windows):
        start = time.perf_counter()
        for _ in range(sizes.window):
            trainer.iterate()
        windows.append((time.perf_counter() - start) / sizes.window * 1e6)
    saves, size = [], 0
    for index in range(sizes.saves):
        start = time.perf_counter()
        path = trainer.save_checkpoint(folder / f"checkpoint-{index}.pt")
        saves.append((time.perf_counter() - start) * 1e3)
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
    parameters = sum(p.numel() for p in trainer.pipeline.parameters())  # a DTensor's numel is the whole one's
    result = {"us_per_it": windows, "save_ms": saves, "checkpoint_bytes": size, "field_parameters": parameters}
    trainer.close()
    return result


def _memory_worker(variant: Variant, sizes: Sizes, folder: Path) -> dict[str, Any]:
    baseline = _status_kib("VmRSS")  # after import: torch and stepbus loaded, nothing built
    resettable = _reset_peak()
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for index in range(sizes.depth):
        layers += [nn.Linear(sizes.width, sizes.width)] + ([nn.ReLU()] if index < sizes.depth - 1 else [])
    items = sizes.mlp_batch * sizes.mlp_steps
    x = torch.randn(items, sizes.width)
    trainer = BaseTrainer(
        nn.Sequential(*layers),
        TensorDataset(x, x.flip(1)),
        max_epochs=1,
        batch_size=sizes.mlp_batch,
        device="cpu",
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
        loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
        run_dir=folder / "memory-run",
        strategy="fsdp" if variant.strategy == "fsdp" else "ddp",
        fsdp=_fsdp(variant),
    )
    build_peak = _peak_kib(resettable)
    if resettable:
        _reset_peak()
    for _ in range(sizes.mlp_steps):
        trainer.iterate()
    step_peak = _peak_kib(resettable)
    parameters = list(trainer.pipeline.parameters())
    state = sum(_local_bytes(p) for p in parameters)
    state += sum(_local_bytes(p.grad) for p in parameters if p.grad is not None)
    for moments in trainer.optimizer.state.values():
        state += sum(_local_bytes(v) for v in moments.values() if isinstance(v, torch.Tensor))
    result = {
        "state_bytes": state,
        "build_growth_kib": build_peak - baseline,
        "step_growth_kib": step_peak - baseline,
        "peak": "VmHWM" if resettable else "ru_maxrss",
    }
    trainer.close()
    return result


def _worker(spec_file: Path) -> int:
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    variant, sizes, folder = Variant(**spec["variant"]), Sizes(**spec["sizes"]), Path(spec["folder"])
    torch.set_num_threads(1)
    result = _memory_worker(variant, sizes, folder)  # first: nothing built in this process yet
    result.update(_time_worker(variant, sizes, folder))
    rank = os.environ.get("RANK", "0")
    (folder / f"result-{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------------------- the launcher (the parent)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(variant: Variant, sizes: Sizes, folder: Path, timeout: float) -> list[dict[str, Any]]:
    """Run the worker as every rank of one job (by hand, as on separate machines: no agent in between); each
    rank's result, rank 0 first. A ``RuntimeError`` with a rank's output when one fails."""
    folder.mkdir(parents=True)
    spec = folder / "spec.json"
    spec.write_text(
        json.dumps({"variant": asdict(variant), "sizes": asdict(sizes), "folder": str(folder)}),
        encoding="utf-8",
    )
    ignored = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    base = {k: v for k, v in os.environ.items() if k not in ignored and k != "STEPBUS_DIST_TIMEOUT"}
    base.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    port = _free_port()
    processes = []
    for rank in range(variant.world):
        env = dict(base)
        if variant.world > 1:
            env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(variant.world),
                LOCAL_WORLD_SIZE=str(variant.world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
        log = (folder / f"output-{rank}.txt").open("w", encoding="utf-8")
        command = [sys.executable, "-m", "benchmarks.strategies", "--worker", str(spec)]
        processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        codes = [-1]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    if any(code != 0 for code in codes):
        outputs = "\n".join(p.read_text(encoding="utf-8")[-3000:] for p in sorted(folder.glob("output-*.txt")))
        raise RuntimeError(f"the job of {variant.label!r} failed (exit codes {codes}):\n{outputs}")
    return [json.loads((folder / f"result-{rank}.json").read_text()) for rank in range(variant.world)]


@dataclass(frozen=True)
class Row:
    """What one variant measured."""

    variant: Variant
    us_per_it: float
    save_ms: float
    checkpoint_bytes: int
    state_bytes: int
    build_mib: float
    step_mib: float
    peak: str
    field_parameters: int


def run(sizes: Sizes, folder: Path, timeout: float = 600.0) -> list[Row]:
    """One job per variant, one after the other; what each measured (timings as rank 0 saw them, memory the
    larger of the ranks)."""
    rows = []
    for index, variant in enumerate(VARIANTS):
        ranks = _launch(variant, sizes, folder / f"job-{index}", timeout)
        rows.append(
            Row(
                variant,
                us_per_it=statistics.median(ranks[0]["us_per_it"]),
                save_ms=statistics.median(ranks[0]["save_ms"]),
                checkpoint_bytes=ranks[0]["checkpoint_bytes"],
                state_bytes=max(rank["state_bytes"] for rank in ranks),
                build_mib=max(rank["build_growth_kib"] for rank in ranks) / 1024,
                step_mib=max(rank["step_growth_kib"] for rank in ranks) / 1024,
                peak=ranks[0]["peak"],
                field_parameters=ranks[0]["field_parameters"],
            )
        )
    return rows


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "n/a"


def report(rows: Sequence[Row], sizes: Sizes, load: tuple[float, float]) -> str:
    ddp = next(row for row in rows if row.variant.label == "DDP, 2 ranks")
    params = model_parameters(sizes)
    lines = [
        "# DDP and FSDP (benchmarks/strategies.py)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"torch {torch.__version__}; gloo, one torch thread per process. Load average (1 min) {load[0]:.2f} before, "
        f"{load[1]:.2f} after.",
        f"Time: the image field at {sizes.size}x{sizes.size} ({rows[0].field_parameters:,} parameters), global "
        f"batch {sizes.batch}, no callbacks; median of "
        f"{sizes.windows} windows of {sizes.window} iterations after {sizes.warmup} warm-up ones, on rank 0; "
        f"checkpoint save: median of {sizes.saves}. Memory: an MLP of {sizes.depth} linear layers "
        f"{sizes.width}x{sizes.width} ({params:,} parameters) with Adam, global batch {sizes.mlp_batch}, "
        f"{sizes.mlp_steps} steps; model state = parameters + gradients + Adam state held by one rank (exact); "
        f"peak RSS growth over the RSS after import ({rows[0].peak}), the larger of the ranks, while building the "
        "trainer (the whole model on every rank) and while stepping. Ratios against DDP.",
        "",
        "| variant | µs/it | vs DDP | save ms | checkpoint | model state per rank | bytes | vs DDP "
        "| peak RSS growth, build | peak RSS growth, steps | vs DDP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.variant.label} | {row.us_per_it:.0f} | {_ratio(row.us_per_it, ddp.us_per_it)} "
            f"| {row.save_ms:.1f} | {row.checkpoint_bytes / MiB:.2f} MiB | {row.state_bytes / MiB:.1f} MiB "
            f"| {row.state_bytes} | {_ratio(row.state_bytes, ddp.state_bytes)} | {row.build_mib:.0f} MiB "
            f"| {row.step_mib:.0f} MiB | {_ratio(row.step_mib, ddp.step_mib)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strategies", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few iterations (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown report (default {RESULTS.name} here)")
    parser.add_argument("--dir", type=Path, default=None, help="where the jobs work (default: a temporary directory)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return _worker(args.worker)
    sizes = QUICK if args.quick else FULL
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = run(sizes, Path(tmp))
    text = report(rows, sizes, (before, os.getloadavg()[0]))
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
