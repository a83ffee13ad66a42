"""The target image: a built-in one made in code, or a PNG.

The built-in image is meant to be hard enough that PSNR means something: four shapes on an empty (black)
background -- which pruning can discard -- with sharp edges, a 6-pixel stripe pattern, a 12-pixel checkerboard,
and colour noise in four octaves down to 2 pixels inside every shape. A field that must compress it (far fewer
parameters than pixel values) cannot memorise the fine noise, so its PSNR saturates in the low-to-mid 30s dB instead
of climbing to 60.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

__all__ = ["default_image", "load_image"]


def default_image(size: int = 512, seed: int = 0) -> torch.Tensor:
    """The built-in target: ``(3, size, size)`` float32 in [0, 1], the same for the same ``(size, seed)``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"the built-in image needs size >= 32, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")

    def noise(period_px: int, amplitude: float) -> torch.Tensor:
        cells = max(1, size // period_px)
        coarse = torch.rand(1, 3, cells + 1, cells + 1, generator=generator) * 2 - 1
        smooth = functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        return smooth[0] * amplitude

    texture = sum(noise(period, amp) for period, amp in ((64, 0.25), (16, 0.15), (4, 0.12), (2, 0.08)))
    image = torch.zeros(3, size, size)

    def paint(region: torch.Tensor, colour: tuple[float, float, float], textured: bool = True) -> None:
        nonlocal image
        value = torch.tensor(colour).view(3, 1, 1) + (texture if textured else 0.0)
        image = torch.where(region, value, image)

    disk = (xs - 0.3) ** 2 + (ys - 0.32) ** 2 < 0.18**2
    paint(disk, (0.85, 0.35, 0.2))
    ring = (((xs - 0.7) ** 2 + (ys - 0.3) ** 2).sqrt() - 0.15).abs() < 0.03
    paint(ring, (0.2, 0.7, 0.9))
    rect = (xs > 0.55) & (xs < 0.9) & (ys > 0.55) & (ys < 0.85)
    stripes = (xs * size / 6).floor() % 2 == 0
    paint(rect & stripes, (0.9, 0.9, 0.3), textured=False)
    paint(rect & ~stripes, (0.3, 0.2, 0.6))
    triangle = (ys > 0.6) & (ys < 0.92) & ((xs - 0.3).abs() < (ys - 0.6) * 0.7)
    checker = ((xs * size / 12).floor() + (ys * size / 12).floor()) % 2 == 0
    paint(triangle & checker, (0.85, 0.85, 0.85))
    paint(triangle & ~checker, (0.1, 0.5, 0.3))
    return image.clamp(0, 1).contiguous()


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """A PNG (or any format Pillow reads) as ``(3, H, W)`` float32 in [0, 1]; alpha is composited on black."""
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading trainer.image needs Pillow: pip install pillow", name="PIL") from None
    source = Path(path)
    try:
        with Image.open(source) as opened:
            opened.load()
            mode, size = opened.mode, opened.size
            wide = _wide_gray(opened) if mode.startswith(("I", "F")) else None
            rgba = opened.convert("RGBA") if wide is None else None
    except FileNotFoundError:
        raise ValueError(f"trainer.image: {source}: no such file") from None
    except OSError as exc:
        raise ValueError(f"trainer.image: {source}: not an image Pillow can read ({exc})") from None
    width, height = size
    if min(height, width) < 8:
        raise ValueError(f"trainer.image: {source}: {width}x{height} is too small (at least 8x8)")
    if wide is not None:  # 16-bit, 32-bit integer or float greyscale: scaled, not clipped to 8 bits
        return wide.view(1, height, width).expand(3, height, width).contiguous()
    assert rgba is not None
    pixels = torch.frombuffer(bytearray(rgba.tobytes()), dtype=torch.uint8).view(height, width, 4)
    rgb = pixels[..., :3].float() / 255.0 * (pixels[..., 3:].float() / 255.0)
    return rgb.permute(2, 0, 1).contiguous()


def _wide_gray(image: Any) -> torch.Tensor | None:
    """A greyscale image wider than 8 bits as float in [0, 1]: ``I;16*`` and ``I`` scaled by 65535 (how Pillow
    opens 16-bit PNGs), ``F`` clamped; ``None`` for a mode this does not know."""
    mode = image.mode
    raw = bytearray(image.tobytes())
    if mode in ("I;16", "I;16L", "I;16B"):
        values = torch.frombuffer(raw, dtype=torch.int16).view(torch.uint16)
        if (mode == "I;16B") != (sys.byteorder == "big"):  # stored order differs from this machine's
            values = values.view(torch.uint8).view(-1, 2).flip(1).reshape(-1).view(torch.uint16)
        return values.to(torch.float32) / 65535.0
    if mode == "I":
        return torch.frombuffer(raw, dtype=torch.int32).to(torch.float32).div(65535.0).clamp(0, 1)
    if mode == "F":
        return torch.frombuffer(raw, dtype=torch.float32).clone().clamp(0, 1)
    return None
