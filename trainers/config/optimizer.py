"""The ``optimizer:`` block of a trainer config -- ``{name: adam, lr: 0.01, weight_decay: 1e-4}`` -- checked
against the named ``torch.optim`` class's own signature, and turned into the trainer's optimizer factory."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainers.config.errors import ConfigError, Problem, did_you_mean, show_value

__all__ = ["check_optimizer", "optimizer_classes", "optimizer_factory"]


def optimizer_classes() -> dict[str, type]:
    """``torch.optim`` optimizers by lower-case name (``adam``, ``adamw``, ``sgd``, ...)."""
    import torch

    found: dict[str, type] = {}
    for attribute in dir(torch.optim):
        value = getattr(torch.optim, attribute)
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer:
            found[attribute.lower()] = value
    return found


def check_optimizer(block: Any, path: str) -> dict[str, Any]:
    """``block`` checked: a known ``name`` and keyword arguments that the optimizer accepts, with valid values.
    Returns ``{"name": <lower-case name>, **kwargs}`` (values normalised, e.g. ``betas`` a list)."""
    from trainers.config.params import check_values, params_of

    if isinstance(block, str):
        block = {"name": block}
    if not isinstance(block, Mapping):
        raise ConfigError(Problem(path, f"expected a mapping like {{name: adam, lr: 0.01}}, got {show_value(block)}"))
    classes = optimizer_classes()
    name = block.get("name")
    if not isinstance(name, str) or name.lower() not in classes:
        hint = did_you_mean(str(name).lower(), classes) if isinstance(name, str) else ""
        raise ConfigError(
            Problem(f"{path}.name", f"got {show_value(name)}{hint}; expected one of {', '.join(sorted(classes))}")
        )
    cls = classes[name.lower()]
    values = {k: v for k, v in block.items() if k != "name"}
    checked, problems = check_values(params_of(cls, skip=("params",)), values, path, f"torch.optim.{cls.__name__}")
    if problems:
        raise ConfigError(problems)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}
    return {"name": name.lower(), **plain}


def optimizer_factory(block: Mapping[str, Any]) -> Callable[[Iterable[Any]], Any]:
    """``params -> optimizer`` for a block that :func:`check_optimizer` accepted."""
    cls = optimizer_classes()[str(block["name"])]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in block.items() if k != "name"}

    def make(params: Iterable[Any]) -> Any:
        return cls(params, **kwargs)

    make.__qualname__ = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return make
