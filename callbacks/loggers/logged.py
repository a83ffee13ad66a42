"""What ``trainer.log(name, value)`` may send to the TensorBoard and W&B loggers, and how each kind is read (not a
callback).

A logged value is classified the moment it arrives from its Python type and, for a tensor, its shape and dtype --
metadata only, no host read -- so a value a logger cannot write is a ``TypeError`` at the ``trainer.log`` call,
naming the value and what is accepted. The tensor itself is read on the host only when the logger writes it
(:func:`scalar`, :func:`pixels`), inside its ``on_error`` policy, and not at all while the logger has nothing open.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from callbacks.images import to_uint8_hwc

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["ACCEPTED", "Kind", "kind_of", "pixels", "scalar", "table_rows"]

Kind = Literal["scalar", "image", "text", "table"]

#: what the loggers write, in words (the end of every refusal)
ACCEPTED = (
    "numbers and one-element tensors (scalars), HxWxC or HxW tensors with C in 1..4, float in [0, 1] or uint8 "
    "(images), and strings (text)"
)
_TABLES = "; lists of dicts become tables"
_CHANNELS = (1, 2, 3, 4)


def kind_of(name: str, value: Any, owner: str, *, tables: bool = False) -> Kind:
    """How ``value`` is written, or a ``TypeError`` naming ``owner``, ``name``, what ``value`` is and what is
    accepted. ``tables``: a non-empty list of dicts is a ``"table"`` (W&B) instead of an error."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return "scalar"
    accepted = ACCEPTED + (_TABLES if tables else "")
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            what = f"a {value.dtype} tensor"
        elif value.numel() == 1:
            return "scalar"
        elif _is_image(value):
            return "image"
        else:
            what = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
        raise TypeError(f"{owner}: trainer.log({name!r}, ...) got {what}; it writes {accepted}")
    if tables and table_rows(value) is not None:
        return "table"
    raise TypeError(f"{owner}: trainer.log({name!r}, ...) got a {type(value).__name__}; it writes {accepted}")


def _is_image(value: torch.Tensor) -> bool:
    if value.dtype != torch.uint8 and not value.is_floating_point():
        return False
    if value.dim() == 2:
        return value.shape[0] > 0 and value.shape[1] > 0
    return value.dim() == 3 and value.shape[0] > 0 and value.shape[1] > 0 and value.shape[2] in _CHANNELS


def scalar(value: Any) -> float:
    """A ``"scalar"`` value as a float (a tensor: one host read, here and nowhere earlier)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().reshape(()).item())
    return float(value)


def pixels(value: torch.Tensor, name: str) -> np.ndarray[Any, Any]:
    """An ``"image"`` value as a ``uint8`` HxWxC array (a float image is clamped to [0, 1] and scaled); grey with
    alpha (C = 2) becomes RGBA, which every backend reads (``wandb.Image`` refuses two channels)."""
    image = to_uint8_hwc(value, name=name)
    if image.shape[-1] == 2:
        image = torch.cat([image[..., :1].expand(-1, -1, 3), image[..., 1:]], dim=-1)
    return image.numpy()


def table_rows(value: Any) -> tuple[list[str], list[list[Any]]] | None:
    """``(columns, rows)`` of a non-empty list (or tuple) of dicts with string keys -- the columns in the order
    they first appear, a missing cell ``None`` -- else ``None``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        return None
    if not all(isinstance(row, Mapping) and all(isinstance(k, str) for k in row) for row in value):
        return None
    columns = list(dict.fromkeys(key for row in value for key in row))
    return columns, [[row.get(column) for column in columns] for row in value]
