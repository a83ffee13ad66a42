"""What pydantic's lax checking lets through and a config value must not be: ``true``/``false`` where a number or a
string is wanted (pydantic reads ``True`` as ``1.0``, also inside a list: ``milestones: [true]``), and NaN anywhere
(``.nan``, or the string ``"nan"``, which pydantic reads as a float).

NaN is never a setting: every comparison with it is false, so a bound such as ``gamma > 0`` does not refuse it and
a threshold set to it never triggers. Infinity can be a setting (``norm_type: .inf`` is the max-norm), so which
numbers must be finite is each constructor's own check.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

__all__ = ["holds_nan", "stray_bool"]

_SEQUENCES = (list, tuple, Sequence, typing.Sequence)
_MAPPINGS = (dict, Mapping, typing.Mapping)


def stray_bool(value: Any, annotation: Any, code_only: type) -> bool:
    """Whether ``value`` holds ``True``/``False`` at a place where ``annotation`` admits no boolean. Members of a
    union that only code can provide (``code_only``, e.g. the ``Tensor`` of ``float | Tensor``) admit nothing from a
    config, so they do not make a boolean acceptable."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None) and a is not code_only]
        return bool(members) and all(stray_bool(value, member, code_only) for member in members)
    if isinstance(value, bool):
        return not _admits_bool(annotation)
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if isinstance(value, (list, tuple)) and origin in _SEQUENCES and args:
        if origin is tuple and len(args) == len(value) and len(args) > 1:
            return any(stray_bool(v, a, code_only) for v, a in zip(value, args, strict=True))
        return any(stray_bool(v, args[0], code_only) for v in value)
    if isinstance(value, Mapping) and origin in _MAPPINGS and len(args) == 2:
        return any(stray_bool(v, args[1], code_only) for v in value.values())
    return False


def holds_nan(value: Any) -> bool:
    """Whether ``value`` is NaN or a list or mapping that holds one, at any depth."""
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple)):
        return any(holds_nan(v) for v in value)
    if isinstance(value, Mapping):
        return any(holds_nan(v) for v in value.values())
    return False


def _admits_bool(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in typing.get_args(annotation))
    if annotation is bool or annotation is Any:
        return True
    # a generic (Mapping[str, Any], list[int]) never holds a bare boolean; what we cannot read may
    return not isinstance(annotation, type) and typing.get_origin(annotation) is None
