"""Checks of docs/notebooks.md: its Python blocks run, in page order, as the cells of one notebook in a real IPython
kernel (nbclient, see ``tests.notebook_kernel``; a block's ``# %%`` lines start its cells), each after set-up cells
that supply what the page says is there; each check then reads its block's cells from the executed notebook. One
kernel for the page: starting one and importing torch in it costs seconds. ``ipywidgets`` cannot be imported in it,
as the page says none is needed. The install block goes through the shell check, its ``ipykernel`` against the dev
extra that the tests' kernels come from."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.doc_checks import check
from tests.doc_pages import DOCS, ROOT, Block, blocks, load_toml
from tests.doc_shell import check_shell
from tests.notebook_kernel import Executed, bar_rows, run_notebook

PAGE = DOCS / "notebooks.md"
#: the first cell: no ipywidgets, and the demo config of the page's first example
GUARD = """\
import os, sys
sys.modules["ipywidgets"] = None
from importlib.resources import files
from trainers import build
demo = files("trainers.apps") / "configs" / "demo.yaml"
"""
OVERRIDES = '["trainer.max_epochs=2", "callbacks.progress.enabled=true"]'
#: the cells each block needs before it: a trainer not trained yet (the demo, 5 epochs: 640 steps) for the stepping
#: cells; for the resumed run, a run interrupted by SIGINT at step 100 (what the kernel's interrupt button sends), in
#: a folder of its own (the first example trained to the end in ``runs/notebook``)
SETUP = {
    "notebook-stepping": [
        f'trainer = build(demo, run_dir="runs/stepping", overrides={OVERRIDES.replace("=2", "=5")})',
    ],
    "notebook-resume": [
        'os.makedirs("resumed")\nos.chdir("resumed")',
        "import signal\n"
        "from lifecycle import Event\n"
        f'trainer = build(demo, run_dir="runs/notebook", overrides={OVERRIDES})\n'
        "trainer.bus.connect(\n"
        "    Event.POST_STEP, lambda t, **p: t.state.iteration == 100 and os.kill(os.getpid(), signal.SIGINT)\n"
        ")\n"
        "trainer.train()",
    ],
}


@dataclass(frozen=True)
class PageRun:
    executed: Executed
    folder: Path  #: the kernel's working directory
    first: dict[str, int]  #: the index of each block's first cell (its set-up cells come just before)
    count: dict[str, int]  #: how many cells each block has


_RUNS: dict[str, PageRun] = {}


def page_run(block: Block, folder: Path) -> tuple[PageRun, int]:
    """The page executed (once for all its checks, in ``folder`` the first time), and the index of ``block``'s first
    cell, checked to hold the block as the page shows it now."""
    text = PAGE.read_text(encoding="utf-8")
    if text not in _RUNS:
        sources = [GUARD]
        first: dict[str, int] = {}
        count: dict[str, int] = {}
        for found in blocks(PAGE):
            if found.language != "python" or found.marker is None:
                continue
            sources += SETUP.get(found.marker, [])
            first[found.marker] = len(sources)
            count[found.marker] = len(cells(found))
            sources += cells(found)
        _RUNS[text] = PageRun(run_notebook(sources, folder), folder, first, count)
    run = _RUNS[text]
    assert block.marker is not None
    first, count = run.first[block.marker], run.count[block.marker]
    assert [c.source for c in run.executed.notebook.cells[first : first + count]] == cells(block)
    return run, first


def cells(block: Block) -> list[str]:
    """The block's cells: split where a line starts with ``# %%`` (one cell when none does)."""
    found: list[list[str]] = [[]]
    for line in block.text.splitlines():
        if line.startswith("# %%") and any(found[-1]):
            found.append([])
        found[-1].append(line)
    return ["\n".join(lines).strip() for lines in found]


def final_bars(executed: Executed, cell: int) -> list[list[str]]:
    """The rows of the one progress display ``cell`` drew, as it was left."""
    ids = {m.display_id for m in executed.displays(cell)}
    assert len(ids) == 1, ids
    return bar_rows(executed.displays(cell)[-1].text)


def result(executed: Executed, cell: int) -> str:
    """The cell's value as the notebook shows it (``text/plain`` of its ``execute_result``)."""
    (value,) = [o for o in executed.outputs(cell) if o.output_type == "execute_result"]
    return str(value.data["text/plain"])


def summary(executed: Executed, cell: int) -> str:
    (text,) = [t for t in executed.texts(cell) if re.match(r"\s*training (completed|interrupted|failed)\s*\n", t)]
    return text


@check("notebook-install")
def _install(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ipykernel`` is in the dev extra (the tests' kernels run it); the rest is checked as any ``pip install``."""
    dev = load_toml((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["dev"]
    assert "ipykernel" in {re.split(r"[<>=!~\[; ]", requirement)[0] for requirement in dev}
    lines = [shlex.split(line, comments=True) for line in block.text.splitlines()]
    assert sum(words.count("ipykernel") for words in lines) == 1
    check_shell("\n".join(shlex.join(w for w in words if w != "ipykernel") for words in lines))


@check("notebook-build")
def _build(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo config's 2 epochs (256 steps): bars ending at 256/256, the summary with the checkpoint, the status."""
    run, cell = page_run(block, tmp_path)
    executed = run.executed
    assert final_bars(executed, cell)[0][:2] == ["training", "256/256"]
    assert re.search(r"checkpoint/last\s+│\s+runs/notebook/checkpoints/step-00000256\.pt", summary(executed, cell))
    assert result(executed, cell) == "<Status.COMPLETED: 'completed'>"
    assert (run.folder / "runs" / "notebook" / "checkpoints" / "step-00000256.pt").is_file()


@check("notebook-code")
def _code(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 epochs of 64 steps: the bars, a validation table and an epoch line per epoch, the summary, the status."""
    run, cell = page_run(block, tmp_path)
    executed = run.executed
    rows = final_bars(executed, cell)
    assert rows[0][:2] == ["training", "192/192"]
    assert rows[1][:3] == ["epoch", "3/3", "64/64"]
    texts = executed.texts(cell)
    assert [t.split("\n")[0] for t in texts if t.startswith("validation at")] == [
        f"validation at iteration {it}" for it in (64, 128, 192)
    ]
    assert [" ".join(t.split()[:6]) for t in texts if " done at iteration " in t] == [
        f"epoch {e}/3 done at iteration {it}" for e, it in ((1, 64), (2, 128), (3, 192))
    ]
    assert re.search(r"iterations\s+│\s+192/192", summary(executed, cell))
    assert result(executed, cell) == "<Status.COMPLETED: 'completed'>"


@check("notebook-stepping")
def _stepping(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four cells on a trainer not yet trained (640 steps): each cell that steps has its own display, left where
    its steps ended; the cell that only looks has none."""
    run, first = page_run(block, tmp_path)
    executed = run.executed
    assert run.count["notebook-stepping"] == 4
    second, look, last = first + 1, first + 2, first + 3
    assert len(executed.outputs(first)) == 1  # the display, nothing else
    assert final_bars(executed, first)[0][:2] == ["training", "100/640"]  # kept, whatever later cells did
    reached = int(final_bars(executed, second)[0][1].split("/")[0])
    goes_on = result(executed, second)
    assert goes_on in ("True", "False")
    assert reached > 100
    assert (goes_on == "False") == (reached == 640)
    assert executed.displays(look) == []
    assert len(executed.outputs(look)) == 1
    assert result(executed, look).startswith(f"({reached}, ")
    assert bar_rows(executed.texts(second)[0])[0][0] == "training"  # the display first, at the cell's first step
    if goes_on == "True":
        assert final_bars(executed, last)[0][:2] == ["training", "640/640"]
        assert bar_rows(executed.texts(last)[0])[0][:2] == ["training", "640/640"]
        ids = {m.display_id for cell in (first, second, last) for m in executed.displays(cell)}
        assert len(ids) == 3
        assert "training completed" in summary(executed, last)
    else:  # the half second was enough for the whole run: the last cell has nothing left to do
        assert executed.outputs(last) == []
        assert "training completed" in summary(executed, second)


@check("notebook-resume")
def _resume(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interrupted run (its set-up cell) stopped at 100/256 with a checkpoint; the page's cell restores it in a
    new trainer and trains to 256/256, its display starting at 100."""
    run, cell = page_run(block, tmp_path)
    executed = run.executed
    interrupted = cell - 1
    assert final_bars(executed, interrupted)[0][:2] == ["training", "100/256"]
    assert summary(executed, interrupted).strip().startswith("training interrupted")
    assert "runs/notebook/checkpoints/step-00000100.pt" in summary(executed, interrupted)
    assert result(executed, interrupted) == "<Status.INTERRUPTED: 'interrupted'>"
    assert bar_rows(executed.displays(cell)[0].text)[0][:2] == ["training", "100/256"]
    assert final_bars(executed, cell)[0][:2] == ["training", "256/256"]
    assert re.search(r"iterations\s+│\s+256/256", summary(executed, cell))
    assert result(executed, cell) == "<Status.COMPLETED: 'completed'>"
    assert (run.folder / "resumed" / "runs" / "notebook" / "checkpoints" / "step-00000256.pt").is_file()
