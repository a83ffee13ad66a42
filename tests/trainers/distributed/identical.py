"""Exact comparison of nested training states (weights, optimizer states, whole checkpoints) for the distributed
tests: every leaf the same, tensors with ``torch.equal``, and a failure names the path of the first difference."""

from __future__ import annotations

import torch

__all__ = ["assert_identical", "same_state"]


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """``{"/model/0.weight": tensor, ...}``: every leaf of nested dicts, lists and tuples by its path."""
    if isinstance(tree, dict):
        flat: dict[str, object] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}/{key}"))
        return flat
    if isinstance(tree, list | tuple):
        return flatten(dict(enumerate(tree)), prefix)
    return {prefix: tree}


def assert_identical(one: object, other: object, what: str = "") -> None:
    """The same paths and, at each, the same tensor (``torch.equal``) or an equal value."""
    flat_one, flat_other = flatten(one), flatten(other)
    assert flat_one.keys() == flat_other.keys(), what
    for name, value in flat_one.items():
        other_value = flat_other[name]
        if isinstance(value, torch.Tensor):
            assert isinstance(other_value, torch.Tensor), f"{what}{name}"
            assert torch.equal(value, other_value), f"{what}{name} differs"
        else:
            assert value == other_value, f"{what}{name} differs"


def same_state(one: dict[str, object], other: dict[str, object]) -> None:
    """The model's parameters and the optimizer's state of two checkpoints (or weight files), exactly."""
    for key in ("model", "optimizer"):
        assert_identical(one[key], other[key], key)
