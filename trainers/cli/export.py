"""``stepbus export CHECKPOINT OUT``: the model alone, as a plain ``state_dict`` file, from any checkpoint.

A checkpoint is a whole training state; a sharded one (``strategy="fsdp"``) is a directory of per-rank shards that
only DCP can read. The export is the model's whole ``state_dict`` -- the shards read into whole tensors in this one
process, whatever world size wrote them -- saved atomically as a file that loads anywhere with
``torch.load(OUT, weights_only=True)`` and then ``model.load_state_dict(...)``. ``CHECKPOINT`` may be a checkpoint
file, a sharded checkpoint directory, a link such as ``last.pt``, or a directory of checkpoints (its newest). A
checkpoint that cannot be used, or an ``OUT`` that cannot be written, exits 2 with a message naming it.
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from callbacks.console_width import console_for

__all__ = ["export_command"]


def export_command(args: argparse.Namespace) -> int:
    """Write the model of ``args.checkpoint`` to ``args.out``; 0 when written, 2 when refused."""
    import torch

    from trainers.checkpoint.atomic import atomic_write
    from trainers.checkpoint.format import CheckpointError, list_checkpoints
    from trainers.checkpoint.shard_files import is_sharded
    from trainers.checkpoint.sharded import export_model

    console, errors = console_for(), console_for(stderr=True)
    source = args.checkpoint
    if source.is_dir() and not is_sharded(source):
        newest = list_checkpoints(source)
        if not newest:
            errors.print(f"[red]error[/red]: {escape(str(source))}: no checkpoint in this directory", highlight=False)
            return 2
        source = newest[0].path
    try:
        state = export_model(source.resolve())
    except CheckpointError as exc:
        errors.print(f"[red]error[/red]: {escape(str(exc))}", highlight=False)
        return 2
    out = args.out
    if out.exists() and out.is_dir():
        errors.print(f"[red]error[/red]: {escape(str(out))} is a directory; give a file name", highlight=False)
        return 2
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda handle: torch.save(state, handle), durable=True)
    except OSError as exc:
        errors.print(f"[red]error[/red]: {escape(str(out))}: could not be written: {escape(str(exc))}", highlight=False)
        return 2
    count = sum(value.numel() for value in state.values() if isinstance(value, torch.Tensor))
    console.print(
        f"{escape(str(out))}: the model of {escape(str(source))} ({len(state)} entries, {count:,} values)",
        highlight=False,
    )
    return 0
