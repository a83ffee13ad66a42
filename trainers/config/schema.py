"""Configuration files: read YAML, check everything, and resolve defaults (``--set KEY=VALUE`` overrides:
:mod:`trainers.config.overrides`).

The shape::

    run: {name: demo, dir: runs, seed: 0}                  # allow_outside: [/data/exports] (see output_paths)
    trainer: {name: demo, max_epochs: 5, optimizer: {name: adam, lr: 0.01}, max_time: 2h}
    callbacks:
      checkpointer: {every: 1ep, keep_last: 3, monitor: val/mse}
      validator@holdout: {every: 2ep, prefix: holdout}     # a second instance: <name>@<tag>
      wandb: {enabled: false}                                # present but off

A callback block present means enabled unless ``enabled: false`` (``null``/``{}`` take the defaults; ``false`` alone
disables); its keys are exactly the callback's constructor keywords. The ``trainer:`` block's keys are the factory's
keyword parameters plus, for every trainer, ``max_time``: a budget (``2h``; ``null``: none) that the builder makes a
``TimeLimit``, never passed to the factory, and that excludes an enabled ``time_limit`` block. :func:`resolve`
checks the whole config before anything is built and reports every problem at once as a :class:`ConfigError` naming
the file, the key path, the bad value and what is valid (with a did-you-mean for unknown names). The resolved config
is plain YAML-able data with every default filled in: what is saved to ``<run_dir>/config.yaml`` and into
checkpoints, so a run can be reproduced from either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from trainers.config.errors import TOO_DEEP, ConfigError, Problem, did_you_mean, show_value
from trainers.config.output_paths import check_allow_outside
from trainers.config.params import REQUIRED, check_values
from trainers.config.registry import Entry, Registry
from trainers.config.time_budget import MAX_TIME, TIME_LIMIT, budget_clash, check_max_time, max_time_param

__all__ = [
    "CallbackSpec",
    "RunConfig",
    "default_config_path",
    "dump_yaml",
    "load_yaml",
    "resolve",
]

_SECTIONS = ("run", "trainer", "callbacks")
_RUN_KEYS = {"name": "a string", "dir": "a path", "seed": "an integer", "allow_outside": "a list of absolute paths"}


@dataclass(frozen=True)
class CallbackSpec:
    """One callback block after checking: ``key`` as written (``validator@holdout``), its registry entry, the
    checked keyword arguments (explicit ones only) and whether it is enabled."""

    key: str
    entry: Entry
    kwargs: dict[str, Any]
    enabled: bool

    @property
    def tag(self) -> str | None:
        return self.key.partition("@")[2] or None


@dataclass(frozen=True)
class RunConfig:
    """A checked configuration: ``data`` is the resolved config (plain data, defaults filled in)."""

    data: dict[str, Any]
    source: str
    trainer: Entry
    trainer_kwargs: dict[str, Any]
    callbacks: tuple[CallbackSpec, ...]

    @property
    def run(self) -> dict[str, Any]:
        return dict(self.data["run"])


def default_config_path() -> Path:
    """The built-in default config: ``trainers/apps/configs/image_field.yaml``, the reference app (a neural field fit to
    an image, see :mod:`trainers.apps.image_field`). It is what ``stepbus train`` runs with no ``--config`` and what
    ``stepbus config show`` prints with no file. The small, fast MLP demo is ``trainers/apps/configs/demo.yaml``
    (``stepbus train --config trainers/apps/configs/demo.yaml``)."""
    return Path(__file__).parents[1] / "apps" / "configs" / "image_field.yaml"


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in the YAML file at ``path``; a :class:`ConfigError` naming the file (and the line, for a
    syntax error) when it cannot be read or is not a mapping."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}not valid YAML: {problem}", source) from None
    except RecursionError:
        raise ConfigError(TOO_DEEP, source) from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise ConfigError(f"not a usable YAML value: {exc}", source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping (run:, trainer:, callbacks:), got {show_value(data)}", source
        )
    return data


def resolve(data: Mapping[str, Any], registry: Registry, source: str = "<config>") -> RunConfig:
    """Check ``data`` against the registry and fill in the defaults (see the module docstring)."""
    try:
        return _resolve(data, registry, source)
    except RecursionError:
        raise ConfigError(TOO_DEEP, source) from None


def _resolve(data: Mapping[str, Any], registry: Registry, source: str) -> RunConfig:
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping, got {show_value(data)}", source)
    for key in data:
        if key not in _SECTIONS:
            hint = did_you_mean(str(key), _SECTIONS)
            problems.append(Problem(str(key), f"unknown section{hint}; valid: {', '.join(_SECTIONS)}"))
    run = _run_section(data.get("run"), problems)
    trainer_entry, trainer_kwargs, trainer_data = _trainer_section(data.get("trainer"), registry, problems)
    specs, callbacks_data = _callbacks_section(data.get("callbacks"), registry, problems)
    if trainer_data.get(MAX_TIME) is not None:
        problems.extend(budget_clash(s.key) for s in specs if s.enabled and s.entry.target == TIME_LIMIT)
    if problems:
        raise ConfigError(problems, source)
    if trainer_data.get("name") is not None and "name" not in run:
        run["name"] = trainer_data["name"]
    run.setdefault("name", "run")
    run.setdefault("dir", "runs")
    run.setdefault("seed", 0)
    resolved = {"run": run, "trainer": trainer_data, "callbacks": callbacks_data}
    assert trainer_entry is not None  # no problems: the trainer section named a registered trainer
    return RunConfig(resolved, source, trainer_entry, trainer_kwargs, tuple(specs))


# ---------------------------------------------------------------------------------------------------- sections
def _run_section(section: Any, problems: list[Problem]) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problems.append(Problem("run", f"expected a mapping ({', '.join(_RUN_KEYS)}), got {show_value(section)}"))
        return {}
    run: dict[str, Any] = {}
    for key, value in section.items():
        where = f"run.{key}"
        if key not in _RUN_KEYS:
            problems.append(
                Problem(where, f"unknown key{did_you_mean(str(key), _RUN_KEYS)}; valid keys: {', '.join(_RUN_KEYS)}")
            )
        elif key == "seed" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(Problem(where, f"got {show_value(value)}; expected {_RUN_KEYS[key]} >= 0"))
        elif key == "name" and (not isinstance(value, str) or not value.strip() or "/" in value or "\\" in value):
            problems.append(Problem(where, f"got {show_value(value)}; expected a non-empty name without / or \\"))
        elif key == "dir" and not isinstance(value, (str, PurePath)):
            problems.append(Problem(where, f"got {show_value(value)}; expected {_RUN_KEYS[key]}"))
        elif key == "allow_outside" and (refused := check_allow_outside(value)) is not None:
            problems.append(refused)
        elif key == "allow_outside":
            run[key] = [os.fspath(entry) for entry in value]
        else:
            run[key] = str(value) if key == "dir" else value
    return run


def _trainer_section(
    section: Any, registry: Registry, problems: list[Problem]
) -> tuple[Entry | None, dict[str, Any], dict[str, Any]]:
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        problems.append(Problem("trainer", f"expected a mapping with a name, got {show_value(section)}"))
        return None, {}, {}
    name = section.get("name")
    if not isinstance(name, str):
        known = ", ".join(registry.names("trainer"))
        problems.append(Problem("trainer.name", f"got {show_value(name)}; expected a trainer name: {known}"))
        return None, {}, {}
    try:
        entry = registry.entry("trainer", name, "trainer.name")
        params = entry.params()
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None, {}, {}
    values = {k: v for k, v in section.items() if k != "name"}
    max_time_given = MAX_TIME in values
    max_time = check_max_time(values.pop(MAX_TIME, None), problems)
    params = {**params, MAX_TIME: max_time_param()}  # listed among the valid keys of every trainer
    from trainers.config.optimizer import check_optimizer, check_optimizers

    # the optimizer blocks are checked against torch.optim's signatures, not the factory's annotation
    handled = tuple(key for key in ("optimizer", "optimizers") if key in params)
    kwargs: dict[str, Any] = {}
    for key in handled:
        block = values.pop(key, None)
        if block is None:
            continue
        try:
            check = check_optimizer if key == "optimizer" else check_optimizers
            kwargs[key] = check(block, f"trainer.{key}")
        except ConfigError as exc:
            problems.extend(exc.problems)
    plain = {k: p for k, p in params.items() if k not in handled and k != MAX_TIME}
    checked, found = check_values(params, values, "trainer", f"trainer {name!r}", handled=(*handled, MAX_TIME))
    problems.extend(found)
    data: dict[str, Any] = {"name": name}
    data.update(_with_defaults(plain, checked))
    data.update(kwargs)
    if max_time_given:
        data[MAX_TIME] = _plain(max_time)
    kwargs.update(checked)
    return entry, kwargs, data


def _callbacks_section(
    section: Any, registry: Registry, problems: list[Problem]
) -> tuple[list[CallbackSpec], dict[str, Any]]:
    if section is None:
        return [], {}
    if not isinstance(section, Mapping):
        problems.append(
            Problem("callbacks", f"expected a mapping of callback names to their settings, got {show_value(section)}")
        )
        return [], {}
    specs: list[CallbackSpec] = []
    data: dict[str, Any] = {}
    for key, block in section.items():
        where = f"callbacks.{key}"
        if not isinstance(key, str):
            problems.append(Problem(where, f"a callback name must be a string, got {show_value(key)}"))
            continue
        name, at, tag = key.partition("@")
        if at and (not tag or not tag.replace("_", "").replace("-", "").isalnum()):
            problems.append(Problem(where, "a tag after @ must be letters, digits, _ or - (e.g. validator@holdout)"))
            continue
        try:
            entry = registry.entry("callback", name, where)
            params = entry.params()
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if block is None or block is True:
            block = {}
        elif block is False:
            block = {"enabled": False}
        if not isinstance(block, Mapping):
            problems.append(
                Problem(where, f"expected a mapping of settings, null, true or false, got {show_value(block)}")
            )
            continue
        values = dict(block)
        enabled = values.pop("enabled", True)
        if not isinstance(enabled, bool):
            problems.append(Problem(f"{where}.enabled", f"got {show_value(enabled)}; expected true or false"))
            continue
        checked, found = check_values(params, values, where, f"{entry.name} ({_class_name(entry)})")
        problems.extend(found)
        if found:
            continue
        if tag and "state_key" not in checked and "state_key" in params:
            checked["state_key"] = f"{_class_name(entry)}@{tag}"
        if enabled:
            construct_problem = _try_construct(entry, checked, where)
            if construct_problem is not None:
                problems.append(construct_problem)
                continue
        specs.append(CallbackSpec(key, entry, checked, enabled))
        data[key] = {"enabled": enabled, **_with_defaults(params, checked)}
    return specs, data


# ---------------------------------------------------------------------------------------------------- helpers
def _try_construct(entry: Entry, kwargs: Mapping[str, Any], where: str) -> Problem | None:
    """Build the callback once to run its own checks (a bound such as ``start: 0it``, a mode that contradicts the
    monitor ...): constructors have no side effects, and their messages name the parameter. A schedule error names
    the bad value (``invalid schedule '0it'``), so it is reported at the key that holds that value."""
    try:
        entry.load()(**kwargs)
    except ValueError as exc:
        text = str(exc)
        keys = [key for key, value in kwargs.items() if f"invalid schedule {value!r}:" in text]
        return Problem(f"{where}.{keys[0]}" if len(keys) == 1 else where, text)
    except Exception as exc:  # noqa: BLE001 - whatever a (plugin) constructor raises, the config block is named
        return Problem(where, f"{type(exc).__name__}: {exc}")
    return None


def _with_defaults(params: Mapping[str, Any], checked: Mapping[str, Any]) -> dict[str, Any]:
    """The configurable parameters with their value: given, else the default -- as plain YAML-able data."""
    out: dict[str, Any] = {}
    for name, param in params.items():
        if param.code_only:
            continue
        value = checked.get(name, param.default)
        if value is REQUIRED or (value is None and name in ("priority", "state_key")):
            continue  # the class's own priority band and key: nothing to say
        out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (PurePath, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _class_name(entry: Entry) -> str:
    return str(getattr(entry.load(), "__name__", entry.name))


def dump_yaml(data: Mapping[str, Any]) -> str:
    """``data`` as block-style YAML, keys in their order."""
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, allow_unicode=True)
