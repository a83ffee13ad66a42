"""Capturing and restoring every random-number generator a training step may draw from.

The state is kept to tensors and plain containers so that it survives ``torch.load(..., weights_only=True)``:
torch's CPU generator and each CUDA device's generator as ``uint8`` tensors, Python's ``random`` state as nested
tuples of ints, and numpy's legacy global generator (only when numpy is loaded in this process) with its key as an
``int64`` tensor. The trainer never seeds these generators itself (data order has its own, see
``trainers.data.feeder``); it only carries them across a resume so that dropout, augmentation or sampling in the model
repeat bit for bit.
"""

from __future__ import annotations

import random
import sys
from importlib import import_module
from typing import Any

import torch

__all__ = ["capture_rng", "check_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """The state of torch (CPU, and CUDA when it is initialised), ``random`` and numpy (when imported)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, key, pos, has_gauss, cached = numpy.random.get_state(legacy=True)
        state["numpy"] = {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def check_rng(state: Any) -> None:
    """Raise ``ValueError`` saying what is wrong when ``state`` is not what :func:`capture_rng` returns."""
    if not isinstance(state, dict):
        raise ValueError(f"the RNG state is a {type(state).__name__}, expected a dict")
    generator = state.get("torch")
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8 or generator.dim() != 1:
        raise ValueError("the RNG state has no torch generator state (a 1-D uint8 tensor under 'torch')")
    python = state.get("python")
    if not isinstance(python, tuple) or len(python) != 3 or not isinstance(python[1], tuple):
        raise ValueError("the RNG state has no Python 'random' state (a 3-tuple under 'python')")
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(t, torch.Tensor) for t in cuda):
        raise ValueError("the RNG state's 'cuda' entry is not a list of tensors")
    saved_numpy = state.get("numpy")
    if saved_numpy is not None and (
        not isinstance(saved_numpy, dict) or not isinstance(saved_numpy.get("key"), torch.Tensor)
    ):
        raise ValueError("the RNG state's 'numpy' entry is malformed")


def restore_rng(state: dict[str, Any]) -> list[str]:
    """Restore what :func:`capture_rng` returned; returns notes about generators that could not be restored
    (a CUDA state on a machine without that many GPUs, a numpy state without numpy), which the caller reports."""
    notes: list[str] = []
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            notes.append(f"the checkpoint holds RNG states of {len(cuda)} CUDA device(s), which this machine lacks")
    saved_numpy = state.get("numpy")
    if saved_numpy is not None:
        try:
            numpy = import_module("numpy")
        except ImportError:
            notes.append("the checkpoint holds numpy's RNG state, but numpy is not installed")
        else:
            key = saved_numpy["key"].numpy().astype(numpy.uint32)
            numpy.random.set_state(
                (
                    saved_numpy["kind"],
                    key,
                    saved_numpy["pos"],
                    saved_numpy["has_gauss"],
                    saved_numpy["cached_gaussian"],
                )
            )
    return notes
