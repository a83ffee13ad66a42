"""Running a notebook for real: cells executed by nbclient in an IPython kernel of this environment's Python, with
every display message the kernel sent kept beside the executed notebook.

The kernel is started from a kernelspec written into a temporary folder (its ``argv`` is ``sys.executable -m
ipykernel_launcher``), and Jupyter's and IPython's folders (``JUPYTER_*``, ``IPYTHONDIR``: connection files, history,
config) point into that folder too, for the kernel and for this process while the notebook runs, so nothing of the
user's own Jupyter set-up is read or written."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "stepbus-tests"
#: a cell whose source starts with this line may raise: the notebook goes on (nbclient's ``raises-exception`` tag)
RAISES = "# raises\n"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Message:
    """One display message of the kernel: in which cell, ``display_data`` or ``update_display_data``, for which
    ``display_id`` (``None`` for an output that is never replaced) and its plain text (colour codes removed)."""

    cell: int
    kind: str
    display_id: str | None
    text: str


@dataclass
class Executed:
    notebook: NotebookNode
    messages: list[Message] = field(default_factory=list)

    def outputs(self, cell: int) -> list[NotebookNode]:
        return list(self.notebook.cells[cell].outputs)

    def displays(self, cell: int) -> list[Message]:
        """The messages of ``cell`` that drew or replaced an output with a ``display_id`` (the progress bars)."""
        return [m for m in self.messages if m.cell == cell and m.display_id is not None]

    def texts(self, cell: int) -> list[str]:
        """Each output of ``cell`` as plain text: a stream's text, a display's ``text/plain`` (colour codes removed),
        an error's ``ename: evalue``."""
        return [plain(output) for output in self.outputs(cell)]


def bar_rows(text: str) -> list[list[str]]:
    """The words of each row of the progress display's text (``training 40/300 0:00:01 loss 3.7``), the bars'
    own characters and the rate left out: ``989 it/s`` is there or not depending on whether the last refresh fell
    inside the rate's window, which is a matter of timing."""
    rows = []
    for line in text.splitlines():
        words = [word for word in line.split() if not set(word) <= set("━╺╸")]
        rows.append([w for i, w in enumerate(words) if w != "it/s" and words[i + 1 : i + 2] != ["it/s"]])
    return rows


def plain(output: NotebookNode) -> str:
    if output.output_type == "stream":
        return str(output.text)
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    return _ANSI.sub("", str(output.data.get("text/plain", "")))


class _RecordingClient(NotebookClient):
    """nbclient's own client; it also keeps each display message before handling it as usual."""

    def __init__(self, notebook: NotebookNode, messages: list[Message], **options: Any) -> None:
        super().__init__(notebook, **options)
        self._messages = messages

    def process_message(self, msg: dict[str, Any], cell: NotebookNode, cell_index: int) -> NotebookNode | None:
        kind = msg["msg_type"]
        if kind in ("display_data", "update_display_data"):
            content = msg["content"]
            display_id = (content.get("transient") or {}).get("display_id")
            text = _ANSI.sub("", str(content["data"].get("text/plain", "")))
            self._messages.append(Message(cell_index, kind, display_id, text))
        return super().process_message(msg, cell, cell_index)


@contextmanager
def isolated_jupyter(folder: Path) -> Iterator[dict[str, str]]:
    """Jupyter's and IPython's folders inside ``folder`` (in ``os.environ`` until the block ends); yields the
    environment a kernel gets. Colour settings are dropped: the kernel's rich output is as a user sees it."""
    for name in ("config", "data", "runtime", "ipython", "kernels"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    spec = folder / "kernels" / KERNEL
    spec.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "stepbus tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    changes = {
        "JUPYTER_CONFIG_DIR": str(folder / "config"),
        "JUPYTER_DATA_DIR": str(folder / "data"),
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
        "JUPYTER_PATH": str(folder / "data"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(folder / "ipython"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    dropped = ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "COLUMNS", "JUPYTER_COLUMNS", "TERM")
    saved = {name: os.environ.get(name) for name in (*changes, *dropped)}
    os.environ.update(changes)
    for name in dropped:
        os.environ.pop(name, None)
    try:
        yield dict(os.environ)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_notebook(cells: Sequence[str], folder: Path, *, cwd: Path | None = None, timeout: float = 120) -> Executed:
    """Execute ``cells`` (code; one starting with :data:`RAISES` may fail) in a fresh kernel of this Python, its
    working directory ``cwd`` (``folder`` by default). A cell that fails otherwise raises nbclient's
    ``CellExecutionError``, with the cell and its traceback."""
    notebook = nbformat.v4.new_notebook()
    for source in cells:
        cell = nbformat.v4.new_code_cell(source)
        if source.startswith(RAISES):
            cell.metadata["tags"] = ["raises-exception"]
        notebook.cells.append(cell)
    executed = Executed(notebook)
    with isolated_jupyter(folder / "jupyter") as env:
        specs = KernelSpecManager(kernel_dirs=[str(folder / "jupyter" / "kernels")])
        manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
        client = _RecordingClient(
            notebook,
            executed.messages,
            km=manager,
            timeout=int(timeout),
            resources={"metadata": {"path": str(cwd or folder)}},
        )
        client.execute(env=env)
    nbformat.validate(notebook)
    return executed
