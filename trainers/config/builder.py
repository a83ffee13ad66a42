"""``build(config) -> trainer``: what ``stepbus train`` runs, for a notebook or a GUI to build exactly the same.

First the paths the callbacks write to are checked against the run directory (``trainers.config.output_paths``:
inside it unless ``run.allow_outside`` says otherwise, usable, relative ones taken from it). Then the trainer
factory named in ``trainer.name`` builds the trainer (model, data, optimizer); ``trainer.max_time``, which no factory
receives, becomes a ``TimeLimit`` callback added right after it; then each enabled callback block becomes an
instance added with ``trainer.add_callback`` in config order, so a refusal from a callback's ``setup``
(``mode='online'`` without W&B credentials, a pipeline without the ``prune()`` that grid pruning calls) is reported
as a :class:`ConfigError` at that block's key. Building writes nothing: the resolved config becomes
``trainer.config`` (saved in every checkpoint) and is written to ``<run_dir>/config.yaml`` when training starts.
``trainers.config.preflight`` builds the same way and tears it down again, for ``stepbus config validate``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.config.errors import ConfigError, Problem
from trainers.config.output_paths import check_output_paths, located_kwargs
from trainers.config.registry import Registry
from trainers.config.schema import RunConfig, default_config_path, dump_yaml, load_yaml, resolve
from trainers.config.time_budget import MAX_TIME

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["build", "load_config", "new_run_dir"]


def load_config(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    registry: Registry | None = None,
) -> RunConfig:
    """A checked :class:`RunConfig` from a file path, a mapping or ``None`` (the built-in default), with
    ``overrides`` (``"trainer.max_epochs=5"``) applied first."""
    from trainers.config.overrides import apply_overrides

    if isinstance(config, RunConfig):
        if not overrides:
            return config
        data: Mapping[str, Any] = config.data
        source = config.source
    elif config is None or isinstance(config, (str, os.PathLike)):
        path = default_config_path() if config is None else Path(config)
        data, source = load_yaml(path), str(path)
    else:
        data, source = config, "<dict>"
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} with --set"
    return resolve(data, registry or Registry.default(), source)


def new_run_dir(config: RunConfig, *, now: datetime | None = None) -> Path:
    """``<run.dir>/<run.name>-<YYYYmmdd-HHMMSS>``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path(config.run["dir"]) / f"{config.run['name']}-{stamp}"


def build(
    config: RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    overrides: tuple[str, ...] | list[str] = (),
    registry: Registry | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    objects: Mapping[str, Any] | None = None,
) -> BaseTrainer:
    """Build the trainer a config describes (see the module docstring).

    Args:
        config: a :class:`RunConfig`, a config mapping, a YAML file path, or ``None`` for the built-in default.
        overrides: ``KEY=VALUE`` strings applied before checking (``--set``).
        registry: names to resolve; ``Registry.default()`` (built-ins and installed plugins) when ``None``.
        run_dir: where the run writes; ``<run.dir>/<run.name>-<timestamp>`` when ``None``.
        objects: code-only parameters to pass where a callback or the trainer factory accepts them by name
            (e.g. ``{"console": Console()}``).
    """
    resolved = load_config(config, overrides=overrides, registry=registry)
    directory = Path(run_dir) if run_dir is not None else new_run_dir(resolved)
    problems = check_output_paths(resolved, directory)
    if problems:
        raise ConfigError(problems, resolved.source)
    objects = dict(objects or {})
    factory = resolved.trainer.load()
    kwargs = dict(resolved.trainer_kwargs)
    from trainers.config.optimizer import named_optimizer_factory, optimizer_factory

    if "optimizer" in kwargs:
        kwargs["optimizer"] = optimizer_factory(kwargs["optimizer"])
    if "optimizers" in kwargs:
        kwargs["optimizers"] = {name: named_optimizer_factory(b) for name, b in kwargs["optimizers"].items()}
    accepted = inspect.signature(factory).parameters
    extra = {k: v for k, v in objects.items() if k in accepted and k not in kwargs}
    try:
        trainer: BaseTrainer = factory(run_dir=directory, seed=int(resolved.run["seed"]), **kwargs, **extra)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_refusal(resolved, exc), resolved.source) from exc
    _add_time_limit(trainer, resolved)
    for spec in resolved.callbacks:
        if not spec.enabled:
            continue
        cls = spec.entry.load()
        accepted = inspect.signature(cls).parameters
        extra = {k: v for k, v in objects.items() if k in accepted and k not in spec.kwargs}
        try:
            trainer.add_callback(cls(**located_kwargs(spec, directory), **extra))
        except (ValueError, TypeError, ModuleNotFoundError) as exc:
            trainer.close()
            raise ConfigError(Problem(f"callbacks.{spec.key}", str(exc)), resolved.source) from exc
    trainer.config = resolved.data
    _write_config_at_start(trainer, resolved)
    return trainer


def _add_time_limit(trainer: BaseTrainer, resolved: RunConfig) -> None:
    """``trainer.max_time`` (checked by ``resolve``) as a ``TimeLimit``, before the config's callback blocks (which
    ``trainers.config.preflight`` finds as the trainer's last callbacks)."""
    max_time = resolved.data["trainer"].get(MAX_TIME)
    if max_time is None:
        return
    from callbacks.time_limit import TimeLimit

    try:
        trainer.add_callback(TimeLimit(max_time=max_time))
    except (ValueError, TypeError) as exc:
        trainer.close()
        raise ConfigError(Problem(f"trainer.{MAX_TIME}", str(exc)), resolved.source) from exc


def _refusal(resolved: RunConfig, error: Exception) -> Problem:
    """The trainer factory's refusal, at the key its message starts with (``trainer.image: ...``), else at
    ``trainer``."""
    text = str(error)
    key, sep, rest = text.partition(": ")
    if sep and key.startswith("trainer.") and key.removeprefix("trainer.") in resolved.trainer_kwargs:
        return Problem(key, rest)
    return Problem("trainer", f"{resolved.trainer.name!r} refused the config: {text}")


def _write_config_at_start(trainer: BaseTrainer, resolved: RunConfig) -> None:
    """``<run_dir>/config.yaml`` (atomically) at each ``pre_training``: the config this process runs with (by rank 0
    in a distributed run: the ranks run the same config)."""
    from lifecycle import Event
    from trainers.checkpoint.atomic import atomic_write

    def write(t: BaseTrainer, **payload: Any) -> None:
        if t.run_dir is None or not t.is_global_zero:
            return
        t.run_dir.mkdir(parents=True, exist_ok=True)
        text = dump_yaml(t.config or resolved.data).encode("utf-8")
        atomic_write(t.run_dir / "config.yaml", lambda f: f.write(text), durable=True)

    trainer.bus.connect(Event.PRE_TRAINING, write, priority=10_000, name="build.write_config")
