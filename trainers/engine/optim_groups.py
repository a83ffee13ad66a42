"""Optimizer parameter groups selected by module, for per-group learning rates (Wisp's ``grid_lr_weight``).

Wisp grouped parameters by substring of their names (``'grid' in name``), which silently misfiles a parameter
called ``background_grid_decoder``. Here a group is a module -- an object, or its dotted path -- and every
trainable parameter lands in exactly one group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["param_groups"]


def param_groups(
    model: nn.Module,
    groups: Mapping[str | nn.Module, Mapping[str, Any]],
    *,
    lr: float | None = None,
    rest: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for a torch optimizer, one per selected submodule plus one for everything else.

    ::

        groups = param_groups(field, {field.grid: {"lr_scale": 500}, "decoder": {"weight_decay": 1e-6}}, lr=1e-3)
        optimizer = torch.optim.Adam(groups, lr=1e-3)
        # [{"name": "grid", "params": [...], "lr": 0.5},
        #  {"name": "decoder", "params": [...], "weight_decay": 1e-6},
        #  {"name": "rest", "params": [...]}]      (omitted when empty)

    Args:
        model: the module whose trainable parameters (``requires_grad``) are split.
        groups: submodule (the object, or its dotted path as ``model.get_submodule`` reads it) -> optimizer options
            for its parameters. ``lr_scale`` multiplies ``lr``; any other key (``lr``, ``weight_decay``,
            ``name`` ...) is passed to the optimizer as is. ``name`` defaults to the module's path; LR loggers
            publish ``lr/<name>``.
        lr: the base LR that ``lr_scale`` multiplies (required when a group uses ``lr_scale``).
        rest: options for the parameters no selected module owns.

    A selected module that is not part of ``model``, that has no trainable parameters, or whose parameters another
    selected module also owns (nested selections) is a ``ValueError`` naming it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"param_groups: model must be an nn.Module, got {type(model).__name__}")
    paths = {id(module): path for path, module in model.named_modules()}
    owner: dict[int, str] = {}
    result: list[dict[str, Any]] = []
    for key, options in groups.items():
        module, path = _resolve(model, key, paths)
        if not isinstance(options, Mapping):
            raise TypeError(f"param_groups: options for {path!r} must be a dict such as {{'lr_scale': 10}}")
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"param_groups: module {path!r} ({type(module).__name__}) has no trainable parameters")
        for p in params:
            if id(p) in owner:
                raise ValueError(
                    f"param_groups: a parameter of {path or 'model'!r} is also in group {owner[id(p)]!r}; select "
                    "modules that do not contain each other"
                )
            owner[id(p)] = path or "model"
        group: dict[str, Any] = {"name": path or "model"}
        for option, value in options.items():
            if option == "lr_scale":
                if lr is None:
                    raise ValueError(f"param_groups: group {path!r} has lr_scale but no base lr= was given")
                group["lr"] = float(lr) * float(value)
            elif option == "params":
                raise ValueError(f"param_groups: group {path!r}: 'params' is chosen by module, not given")
            else:
                group[option] = value
        group["params"] = params
        result.append(group)
    leftover = [p for p in model.parameters() if p.requires_grad and id(p) not in owner]
    if leftover:
        result.append({"name": "rest", **dict(rest or {}), "params": leftover})
    return result


def _resolve(model: nn.Module, key: str | nn.Module, paths: dict[int, str]) -> tuple[nn.Module, str]:
    if isinstance(key, nn.Module):
        path = paths.get(id(key))
        if path is None:
            raise ValueError(f"param_groups: the {type(key).__name__} given as a group is not a submodule of the model")
        return key, path
    if isinstance(key, str):
        try:
            return model.get_submodule(key), key
        except AttributeError:
            children = [name for name, _ in model.named_children()]
            raise ValueError(f"param_groups: the model has no submodule {key!r}; its children are {children}") from None
    raise TypeError(f"param_groups: group keys must be modules or dotted paths, got {key!r}")
