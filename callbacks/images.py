"""Writing images as PNG without an imaging library (not a callback; the ``Validator`` uses it).

A PNG is a signature and three chunks (IHDR, IDAT with zlib-compressed scanlines, IEND); with filter type 0 per
row that is all a valid 8-bit file needs, so stepbus does not depend on Pillow for its validation images.
"""

from __future__ import annotations

import ctypes
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainers.checkpoint.atomic import atomic_write

__all__ = ["checked_images", "encode_png", "tensor_bytes", "to_uint8_hwc", "write_png"]

_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey+alpha, RGB, RGBA


def to_uint8_hwc(image: torch.Tensor, *, name: str = "image") -> torch.Tensor:
    """``image`` as a contiguous CPU ``uint8`` tensor of shape ``(H, W, C)`` with C in 1..4.

    Accepts ``(H, W)`` or ``(H, W, C)``; floating-point values are read as [0, 1] (clamped, rounded), ``uint8`` as
    is. Anything else is a ``ValueError`` naming ``name``, its shape and dtype.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name}: expected an HxWxC tensor, got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    if image.dim() != 3 or image.shape[-1] not in _COLOR_TYPE or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(
            f"{name}: expected shape (H, W) or (H, W, C) with C in 1..4 (channels last), got {tuple(image.shape)}"
        )
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image.contiguous()
    if not image.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor in [0, 1] or uint8, got dtype {image.dtype}")
    return (image.float().nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).contiguous()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A contiguous CPU uint8 tensor's bytes in one copy (``bytes(storage)`` goes element by element in Python:
    2 s for a 512x512 RGB image, against ~1 ms here; and numpy is not a dependency)."""
    if not (tensor.is_contiguous() and tensor.dtype == torch.uint8 and tensor.device.type == "cpu"):
        raise ValueError(f"expected a contiguous CPU uint8 tensor, got {tensor.dtype} on {tensor.device}")
    return ctypes.string_at(tensor.data_ptr(), tensor.numel())


def encode_png(image: torch.Tensor, *, name: str = "image") -> bytes:
    """The bytes of a PNG file holding ``image`` (see :func:`to_uint8_hwc` for what is accepted)."""
    pixels = to_uint8_hwc(image, name=name)
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1)  # filter byte 0 before each row
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(tensor_bytes(raw), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], image: torch.Tensor, *, name: str = "image") -> Path:
    """Write ``image`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``), creating
    the folder if needed; returns the path."""
    target = Path(path)
    data = encode_png(image, name=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda handle: handle.write(data), durable=False)
    return target


def checked_images(images: Any, *, owner: str, source: str) -> dict[str, torch.Tensor]:
    """A validation's ``images`` (``None``: none) as ``uint8`` HxWxC tensors by plain file name, or a
    ``TypeError``/``ValueError`` naming ``owner`` (``"Validator 'Validator'"``) and where they came from."""
    if images is None:
        return {}
    if not isinstance(images, Mapping):
        raise TypeError(f"{owner}: 'images' from {source} must map names to HxWxC tensors, got {type(images).__name__}")
    out: dict[str, torch.Tensor] = {}
    for name, image in images.items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{owner}: image name {name!r} is not a plain file name")
        try:
            out[name] = to_uint8_hwc(image, name=f"image {name!r}")
        except ValueError as exc:
            raise ValueError(f"{owner}: {exc}") from None
    return out
