"""The config, run directory and checkpoint to resume from, as ``train`` and ``gui`` settle them before building."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from trainers.config.registry import Registry
    from trainers.config.schema import RunConfig

__all__ = ["prepare", "resolve_run_dir"]


def resolve_run_dir(
    run_dir: Path | None, resume: str | None, *, runs: Path = Path("runs"), name: str = "demo"
) -> tuple[Path, str | None]:
    """The run directory and what to resume from. A resumed checkpoint file's run is continued in place
    (``<run>/checkpoints/step-N.pt`` -> ``<run>``); ``auto`` without ``--run-dir`` picks the newest
    ``<runs>/<name>-*`` that has checkpoints (or starts a new run when there is none)."""
    if resume is not None and resume != "auto":
        source = Path(resume)
        if run_dir is None:
            folder = source if source.is_dir() else source.parent
            run_dir = folder.parent if folder.name == "checkpoints" else folder
        return run_dir, resume
    if run_dir is None and resume == "auto":
        previous = sorted(p for p in runs.glob(f"{name}-*") if (p / "checkpoints").is_dir())
        if previous:
            return previous[-1], "auto"
    if run_dir is None:
        run_dir = runs / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return run_dir, resume


def prepare(
    config_file: Path | None, overrides: list[str], run_dir: Path | None, resume: str | None, registry: Registry
) -> tuple[RunConfig, Path, str | None]:
    """The checked config, the run directory and what to resume from, for ``train`` and ``gui``."""
    from trainers.config.builder import load_config

    config = load_config(config_file, overrides=overrides, registry=registry)
    run_dir, resume = resolve_run_dir(run_dir, resume, runs=Path(config.run["dir"]), name=str(config.run["name"]))
    if resume is not None and config_file is None:
        saved = _checkpoint_config(resume, run_dir)
        if saved is not None:  # the resumed run's own config, with this command's --set on top
            data, source = saved
            config = _with_source(load_config(data, overrides=overrides, registry=registry), source)
    return config, run_dir, resume


def _checkpoint_config(resume: str, run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """The config saved in the checkpoint ``--resume`` points at (newest first for a directory or ``auto``), or
    None when there is none to read (the resume itself then reports what is wrong)."""
    from trainers.checkpoint.format import CheckpointError, list_checkpoints, read_metadata

    source = Path(resume) if resume != "auto" else run_dir / "checkpoints"
    files = [source] if source.is_file() else [c.path for c in list_checkpoints(source)] if source.is_dir() else []
    for path in files:
        try:
            config = read_metadata(path).get("config")
        except (CheckpointError, OSError):
            continue
        return (config, f"the config saved in {path}") if isinstance(config, dict) else None
    return None


def _with_source(config: RunConfig, source: str) -> RunConfig:
    from dataclasses import replace

    return replace(config, source=source)
