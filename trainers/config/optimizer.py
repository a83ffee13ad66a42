"""The ``optimizer:`` block of a trainer config -- ``{name: adam, lr: 0.01, weight_decay: 1e-4}`` -- checked
against the named ``torch.optim`` class's own signature, and turned into the trainer's optimizer factory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trainers.config.errors import ConfigError, Problem, did_you_mean, show_value

__all__ = ["check_optimizer", "check_optimizers", "named_optimizer_factory", "optimizer_classes", "optimizer_factory"]


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
    problems += [
        Problem(
            f"{path}.{key}",
            f"got {show_value(values[key])}; expected finite numbers (no optimizer setting takes infinity)",
        )
        for key, value in checked.items()
        if _infinite(value)
    ]
    if problems:
        raise ConfigError(problems)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in checked.items()}
    return {"name": name.lower(), **plain}


def _infinite(value: Any) -> bool:
    """Whether ``value`` is an infinite number or a list (``betas``) that holds one."""
    if isinstance(value, (list, tuple)):
        return any(_infinite(v) for v in value)
    return isinstance(value, float) and math.isinf(value)


def optimizer_factory(block: Mapping[str, Any]) -> Callable[[Iterable[Any]], Any]:
    """``params -> optimizer`` for a block that :func:`check_optimizer` accepted."""
    cls = optimizer_classes()[str(block["name"])]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in block.items() if k != "name"}

    def make(params: Iterable[Any]) -> Any:
        return cls(params, **kwargs)

    make.__qualname__ = f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return make


#: keys of a named optimizer block that choose its parameters (the rest are the optimizer's own arguments)
SELECTION_KEYS = ("params", "groups")


def check_optimizers(section: Any, path: str) -> dict[str, dict[str, Any]]:
    """The ``optimizers:`` mapping of named optimizer blocks, each checked like an ``optimizer:`` block plus
    ``params`` (the submodule path, or list of paths, whose trainable parameters it holds; the whole pipeline when
    absent) and ``groups`` (submodule path -> options such as ``{lr_scale: 10}``, see ``param_groups``)."""
    if not isinstance(section, Mapping) or not section:
        raise ConfigError(
            Problem(
                path,
                "expected names mapped to optimizer blocks, e.g. {generator: {name: adam, params: generator}}, "
                f"got {show_value(section)}",
            )
        )
    checked: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for name, block in section.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(Problem(where, "an optimizer name must be an identifier such as generator"))
            continue
        if not isinstance(block, Mapping):
            problems.append(Problem(where, f"expected a mapping like {{name: adam, lr: 0.001, params: {name}}}"))
            continue
        selection = {k: block[k] for k in SELECTION_KEYS if k in block}
        try:
            found = check_optimizer({k: v for k, v in block.items() if k not in SELECTION_KEYS}, where)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        params = selection.get("params")
        if params is not None:
            listed = [params] if isinstance(params, str) else params
            if not isinstance(listed, list) or not listed or not all(isinstance(p, str) and p for p in listed):
                problems.append(
                    Problem(f"{where}.params", f"expected a submodule path or a list of them, got {show_value(params)}")
                )
                continue
            found["params"] = listed
        groups = selection.get("groups")
        if groups is not None:
            if not isinstance(groups, Mapping) or not all(
                isinstance(k, str) and isinstance(v, Mapping) for k, v in groups.items()
            ):
                problems.append(
                    Problem(
                        f"{where}.groups",
                        "expected submodule paths mapped to options, e.g. {decoder: {lr_scale: 0.1}}, "
                        f"got {show_value(groups)}",
                    )
                )
                continue
            found["groups"] = {k: dict(v) for k, v in groups.items()}
        checked[name] = found
    if problems:
        raise ConfigError(problems)
    return checked


def named_optimizer_factory(block: Mapping[str, Any]) -> Callable[[Any], Any]:
    """``pipeline -> optimizer`` for a block that :func:`check_optimizers` accepted: the optimizer over the
    trainable parameters of the ``params`` submodules, split into ``groups``."""
    from trainers.engine.optim_groups import param_groups

    make = optimizer_factory({k: v for k, v in block.items() if k not in SELECTION_KEYS})
    paths: list[str] | None = block.get("params")
    groups: Mapping[str | Any, Mapping[str, Any]] | None = block.get("groups")

    def build(pipeline: Any) -> Any:
        modules = [_submodule(pipeline, p) for p in paths] if paths else [pipeline]
        chosen = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
        if not groups:
            return make(chosen)
        ids = {id(p) for p in chosen}
        split = param_groups(pipeline, groups, lr=block.get("lr"))
        for group in split:
            outside = [p for p in group["params"] if id(p) not in ids]
            if outside and group["name"] != "rest":
                raise ValueError(f"optimizer group {group['name']!r} is not part of the optimizer's params {paths}")
            group["params"] = [p for p in group["params"] if id(p) in ids]
        return make([g for g in split if g["params"]])

    build.__qualname__ = f"{make.__qualname__} over {paths or 'the pipeline'}"
    return build


def _submodule(pipeline: Any, path: str) -> Any:
    try:
        return pipeline.get_submodule(path)
    except AttributeError:
        children = [name for name, _ in pipeline.named_children()]
        raise ValueError(
            f"optimizer params: the pipeline has no submodule {path!r}; its children are {children}"
        ) from None
