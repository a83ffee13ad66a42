"""``--set KEY=VALUE`` overrides on a config's data: one parsed (a dotted key and a YAML value), and a list applied
to a copy of the data, every problem reported at once as a :class:`~trainers.config.errors.ConfigError`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainers.config.errors import TOO_DEEP, ConfigError, Problem, show_value

__all__ = ["apply_overrides", "parse_override"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"callbacks.checkpointer.keep_last=5"`` -> (``["callbacks", "checkpointer", "keep_last"]``, ``5``); the value
    is read as a YAML scalar or flow collection (``true``, ``0.5``, ``[1, 2]``, ``{every: 2ep}``, ``null``); text
    that is not valid YAML stays a string."""
    import yaml

    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or any(not p.strip() for p in parts):
        raise ConfigError(
            Problem("", f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. trainer.max_epochs=5"), "--set"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or an int beyond the digit limit): text
        value = raw
    return [p.strip() for p in parts], value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` of ``overrides`` applied in order (missing mappings created)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the config must be a mapping to apply --set to, got {show_value(data)}", "--set")
    try:
        result: dict[str, Any] = _copy(data)
    except RecursionError:
        raise ConfigError(TOO_DEEP, "--set") from None
    problems: list[Problem] = []
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None or child is True:  # `wandb:` (null) or `wandb: true` -> a block to set keys in
                child = node[part] = {}
            elif child is False:
                child = node[part] = {"enabled": False}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(
                    Problem(where, f"--set {text!r}: {where} is {show_value(child)}, not a mapping to set keys in")
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return result


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
