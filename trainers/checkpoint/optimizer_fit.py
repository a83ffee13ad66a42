"""Whether a checkpoint's optimizer and GradScaler state fit a trainer, decided before anything is loaded.

torch's ``Optimizer.load_state_dict`` checks only the number of parameter groups and their lengths: an SGD state
loads into Adam and fails at the first step (``KeyError: 'betas'``), and an Adam state loads into AdamW silently,
its hyper-parameters replacing the configured ones. So a checkpoint records, per named optimizer, the optimizer's
class (``"optimizer_types"``: qualified names) and the shape of each parameter of each group (``"optimizer_groups"``)
in its metadata, and a restore refuses, naming what differs:

* another optimizer class (for a checkpoint without ``"optimizer_types"``: saved groups whose hyper-parameter keys
  differ from the trainer optimizer's -- SGD's ``momentum`` against Adam's ``betas`` -- or whose
  ``decoupled_weight_decay`` differs, Adam against AdamW);
* another number of parameter groups, group lengths or (when recorded) parameter shapes;
* a GradScaler state in the checkpoint but none in the trainer, or the other way round (``precision`` changed).

Each refusal says how to go on: :data:`FRESH_HINT`. With the same class, the saved hyper-parameters are loaded (as
torch does); :func:`hyper_parameter_changes` lists those that differ from the configured ones, for a warning.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint.format import CheckpointError

__all__ = [
    "FRESH_HINT",
    "GRAD_SCALER",
    "check_optimizer_fits",
    "check_scaler_fits",
    "hyper_parameter_changes",
    "optimizer_record",
]

#: the tracked-object name under which a ``"16-mixed"`` trainer checkpoints its GradScaler
GRAD_SCALER = "grad_scaler"
#: how to go on when the optimizer state does not fit: keep everything else, start the optimizers anew
FRESH_HINT = (
    "restore with fresh_optimizer=True (stepbus train --resume ... --fresh-optimizer) to keep the model, counters, "
    "callbacks and RNG and start the optimizers and the GradScaler anew with the configured hyper-parameters"
)
#: group keys that say how torch computes a step, not what it computes: never reported as changed
_IMPLEMENTATION = frozenset({"foreach", "fused", "capturable", "differentiable"})


def optimizer_record(optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, Any]:
    """The metadata a restore checks the optimizers against: each one's class and its groups' parameter shapes."""
    return {
        "optimizer_types": {name: _qualified(type(opt)) for name, opt in optimizers.items()},
        "optimizer_groups": {
            name: [[list(p.shape) for p in group["params"]] for group in opt.param_groups]
            for name, opt in optimizers.items()
        },
    }


def check_optimizer_fits(
    path: Path, name: str, optimizer: torch.optim.Optimizer, saved: Any, meta: Mapping[str, Any]
) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` (the state of the checkpoint's optimizer ``name``, whose
    metadata block is ``meta``) is an optimizer state of the same class and parameter layout as ``optimizer``."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(path, "malformed: 'optimizer' has no 'param_groups' list")
    if not isinstance(saved.get("state"), dict):
        raise CheckpointError(path, "malformed: 'optimizer' has no 'state' dict")
    own_type = type(optimizer)
    recorded = _entry(meta.get("optimizer_types"), name)
    if isinstance(recorded, str):
        if recorded != _qualified(own_type):
            theirs, ours = _short_names(recorded, own_type)
            raise CheckpointError(
                path,
                f"optimizer {name!r} was {theirs} in the checkpoint, the trainer has {ours}: {theirs}'s state "
                f"cannot drive {ours}; build the trainer with {theirs} to resume it, or {FRESH_HINT}",
            )
    else:
        _check_hyper_parameter_keys(path, name, optimizer, groups)
    what = f"optimizer {name!r} ({own_type.__name__}) does not fit"
    own = [len(group["params"]) for group in optimizer.param_groups]
    theirs_sizes = [len(group.get("params", ())) for group in groups]
    if own != theirs_sizes:
        raise CheckpointError(
            path,
            f"{what}: the checkpoint has {_groups(theirs_sizes)}, the trainer has {_groups(own)}; {FRESH_HINT}",
        )
    shapes = _entry(meta.get("optimizer_groups"), name)
    if isinstance(shapes, list) and len(shapes) == len(own):
        for g, (group, saved_shapes) in enumerate(zip(optimizer.param_groups, shapes, strict=True)):
            if not isinstance(saved_shapes, list) or len(saved_shapes) != len(group["params"]):
                continue  # not what optimizer_record() writes: the group lengths were checked above
            for i, (param, shape) in enumerate(zip(group["params"], saved_shapes, strict=True)):
                if isinstance(shape, list) and list(param.shape) != shape:
                    raise CheckpointError(
                        path,
                        f"{what}: parameter {i} of group {g} has shape {tuple(shape)} in the checkpoint, "
                        f"{tuple(param.shape)} in the trainer (its parameters are in another order or of other "
                        f"sizes); {FRESH_HINT}",
                    )


def check_scaler_fits(path: Path, *, saved: bool, own: bool, own_scaler: bool) -> None:
    """Raise :class:`CheckpointError` when the checkpoint holds a GradScaler state (``saved``) and the trainer
    tracks none (``own``), or the other way round. ``own_scaler``: the trainer runs ``precision="16-mixed"``."""
    if saved == own:
        return
    if saved:
        raise CheckpointError(
            path,
            "it holds a GradScaler state (it was saved with precision='16-mixed'), the trainer has no GradScaler "
            f"(its precision is '32' or 'bf16-mixed'): build the trainer with precision='16-mixed' to resume it, "
            f"or {FRESH_HINT}",
        )
    now = "runs precision='16-mixed'" if own_scaler else f"tracks a {GRAD_SCALER!r}"
    raise CheckpointError(
        path,
        "it holds no GradScaler state (it was saved with precision '32' or 'bf16-mixed'), the trainer "
        f"{now}: build the trainer with the saved precision to resume it, or {FRESH_HINT}",
    )


def hyper_parameter_changes(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> list[str]:
    """The hyper-parameters of ``saved`` (an optimizer state that fits ``optimizer``) that differ from the
    optimizer's as built, as ``"group 0 weight_decay 0.0 (configured 0.0001)"``; loading the state applies the saved
    ones. ``lr`` is left out (schedules change it as the run goes) unless both groups hold ``initial_lr``."""
    changes: list[str] = []
    for g, (group, theirs) in enumerate(zip(optimizer.param_groups, saved["param_groups"], strict=True)):
        keys = [k for k in optimizer.defaults if k not in _IMPLEMENTATION and k != "lr"]
        if "initial_lr" in group:
            keys.append("initial_lr")
        for key in keys:
            if key in group and key in theirs and not _same(group[key], theirs[key]):
                changes.append(f"group {g} {key} {_show(theirs[key])} (configured {_show(group[key])})")
    return changes


def _check_hyper_parameter_keys(path: Path, name: str, optimizer: torch.optim.Optimizer, groups: list[Any]) -> None:
    """For a checkpoint that did not record its optimizer's class: the saved groups must have the trainer
    optimizer's hyper-parameter keys, no hyper-parameter key of another torch optimizer, and the same
    ``decoupled_weight_decay`` (the one flag that tells Adam from AdamW)."""
    if not groups:
        return  # nothing to tell the optimizer by; the group count is checked next
    own_type = type(optimizer).__name__
    wanted = set(optimizer.defaults)
    keys = set(groups[0]) & _known_hyper_parameters()  # every group of one optimizer has the same keys
    missing, foreign = sorted(wanted - keys), sorted(keys - wanted)
    if missing or foreign:
        like = _classes_with(keys)
        differences = [f"lack {', '.join(missing)}"] if missing else []
        differences += [f"have {', '.join(foreign)}, which {own_type} has not"] if foreign else []
        raise CheckpointError(
            path,
            f"optimizer {name!r} in the checkpoint has the hyper-parameters of another optimizer than the "
            f"trainer's {own_type}{f' (those of {like})' if like else ''}: its parameter groups "
            f"{' and '.join(differences)} (this checkpoint does not record its optimizer's class); build the "
            f"trainer with the saved optimizer to resume it, or {FRESH_HINT}",
        )
    key = "decoupled_weight_decay"
    saved, own = bool(groups[0].get(key)), bool(optimizer.defaults.get(key))
    if key in wanted and saved != own:
        adam = type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
        fix = ("AdamW" if saved else "Adam") if adam else f"{key}={saved}"
        raise CheckpointError(
            path,
            f"optimizer {name!r} in the checkpoint has {key}={saved}{f' (as {fix})' if adam else ''}, the trainer's "
            f"{own_type} has {key}={own}: the weight decay would change its meaning; build the trainer with {fix} to "
            f"resume it, or {FRESH_HINT}",
        )


def _known_hyper_parameters() -> set[str]:
    """Every constructor argument of torch's optimizers (the keys a saved param group can tell them by)."""
    known: set[str] = set()
    for cls in _torch_optimizers():
        known |= _arguments(cls)
    return known


def _classes_with(keys: set[str]) -> str:
    """The torch optimizers whose constructor arguments are exactly ``keys``, as ``"SGD"`` or ``"Adam or NAdam"``."""
    names = sorted(cls.__name__ for cls in _torch_optimizers() if _arguments(cls) == keys)
    return " or ".join(names)


def _torch_optimizers() -> list[type[torch.optim.Optimizer]]:
    found = []
    for attribute in dir(torch.optim):
        value = getattr(torch.optim, attribute)
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer:
            found.append(value)
    return found


def _arguments(cls: type) -> set[str]:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return set()
    keep = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p for p, spec in parameters.items() if spec.kind in keep} - {"self", "params"}


def _entry(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, dict) else None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short_names(recorded: str, own: type) -> tuple[str, str]:
    """The two classes as ``SGD`` and ``Adam``; fully qualified when their short names are the same."""
    short = recorded.rsplit(".", 1)[-1]
    return (short, own.__name__) if short != own.__name__ else (recorded, _qualified(own))


def _groups(sizes: list[int]) -> str:
    return f"{len(sizes)} parameter group{'s' if len(sizes) != 1 else ''} of {sizes} parameters"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            x, y = (torch.as_tensor(v, dtype=torch.float64, device="cpu") for v in (a, b))
        except (TypeError, ValueError, RuntimeError):  # a tensor against something that is not a number
            return False
        return x.shape == y.shape and bool(torch.equal(x, y))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return repr(value.item())
    if isinstance(value, tuple | list):
        return f"({', '.join(_show(v) for v in value)})"
    return repr(value)
