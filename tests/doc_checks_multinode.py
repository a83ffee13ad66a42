"""The check of docs/distributed.md's command for several nodes: a shell line that may begin with environment
variables (``NAME=value torchrun ...``). Each variable must be one that the program reading it knows -- a
``TORCH_*`` name in torch's elastic launcher, a ``STEPBUS_*`` name in this project's sources -- and a node's
``torchrun --nnodes`` line must set exactly what the simulated nodes of tests/trainers/distributed/test_multinode.py
set; the command itself goes through the shell check (torchrun's own parser, then stepbus's)."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest

from tests.doc_checks import check
from tests.doc_pages import ROOT, Block
from tests.doc_shell import check_shell
from tests.trainers.distributed.test_multinode import NODE_ENV

_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*)$")


@check("node-shell")
def _node_shell(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = 0
    for raw in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(raw, comments=True)
        env: dict[str, str] = {}
        while words and (match := _ASSIGNMENT.match(words[0])):
            env[match.group(1)] = match.group(2)
            words.pop(0)
        if not words:
            continue
        for name in env:
            assert name in _sources(name.split("_", 1)[0]), f"{name} is read by nothing that the page runs: {raw}"
        if words[0] == "torchrun" and any(word.startswith("--nnodes") for word in words):
            assert env == NODE_ENV, f"a node's command sets {env}; the tested nodes set {NODE_ENV}"
        check_shell(shlex.join(words))
        commands += 1
    assert commands, "a shell block with no command"


@functools.cache
def _sources(prefix: str) -> str:
    """The text of the sources that would read a ``<prefix>_*`` variable."""
    if prefix == "TORCH":
        import torch.distributed.elastic

        folder = Path(torch.distributed.elastic.__file__).parent
    elif prefix == "STEPBUS":
        folder = ROOT / "trainers"
    else:
        pytest.fail(f"an environment variable {prefix}_* that no check knows")
    return "".join(path.read_text(encoding="utf-8") for path in sorted(folder.rglob("*.py")))
