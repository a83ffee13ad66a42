"""``ProgressBar`` in a Jupyter notebook, executed for real: nbclient runs the cells in an IPython kernel of this
environment, and the executed notebook's outputs and the kernel's display messages are checked.

One notebook (one kernel start) trains a small real trainer with ``ProgressBar()`` in a cell, looks at what is left
behind, fails a training inside a cell, steps a trainer from three cells, and interrupts a training with SIGINT (what
the notebook's interrupt button sends): each test below reads its part of that notebook."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from callbacks.progress_notebook import to_html
from tests.notebook_kernel import RAISES, Executed, bar_rows, run_notebook

SETUP = """\
import os, signal, sys, time
sys.modules["ipywidgets"] = None  # the display needs no ipywidgets: importing it fails here
import torch
from torch import nn
from callbacks import Checkpointer, ProgressBar, Validator
from lifecycle import Event
from trainers import BaseTrainer

torch.manual_seed(0)
x = torch.randn(600, 2)
y = x.sum(dim=1, keepdim=True)
data = torch.utils.data.TensorDataset(x, y)

def mse(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])

def tiny(run_dir, max_epochs=2, loss_fn=mse, **options):
    # 150 steps an epoch; plain_every would print a plain line after nearly every step if plain mode were on
    progress = ProgressBar(refresh_per_second=100, plain_every=0.001, **options)
    validator = Validator(lambda t: {"mse": nn.functional.mse_loss(t.pipeline(x), y)})
    callbacks = [validator, progress, Checkpointer()]
    return BaseTrainer(nn.Linear(2, 1), data, max_epochs=max_epochs, batch_size=4, device="cpu",
                       loss_fn=loss_fn, run_dir=run_dir, callbacks=callbacks), progress

def displays_following_cells():
    callbacks = get_ipython().events.callbacks
    hooks = [*callbacks["pre_run_cell"], *callbacks["post_run_cell"]]
    return sum(type(getattr(f, "__self__", None)).__name__ == "NotebookDisplay" for f in hooks)
"""
TRAIN = """\
trainer, progress = tiny("runs/train")
started = time.perf_counter()
status = trainer.train()
elapsed = time.perf_counter() - started
print(status)"""
AFTER = """\
print(progress.refreshes, elapsed, type(sys.stdout).__name__, trainer.iterate(), displays_following_cells())"""
FAIL = f"""{RAISES}\
def explode(model, batch):
    if failing.state.iteration == 40:
        raise RuntimeError("diverged on purpose")
    return mse(model, batch)

failing, _ = tiny("runs/fail", loss_fn=explode)
failing.train()"""
USABLE = """print("still usable", 6 * 7, type(sys.stdout).__name__, displays_following_cells())"""
STEP_A = """\
stepped, _ = tiny("runs/stepped", max_epochs=1)
for _ in range(30):
    stepped.iterate()"""
STEP_B = """\
for _ in range(30):
    stepped.iterate()"""
STEP_C = """\
while stepped.iterate():
    pass"""
INTERRUPT = """\
interrupted, _ = tiny("runs/interrupted")
interrupted.bus.connect(
    Event.POST_STEP, lambda t, **p: os.kill(os.getpid(), signal.SIGINT) if t.state.iteration == 20 else None
)
print(interrupted.train())"""
DROP_A = """\
dropped, _ = tiny("runs/dropped")
for _ in range(5):
    dropped.iterate()
print(displays_following_cells())"""
DROP_B = """\
import gc
del dropped
collected = gc.collect()"""
LAST = """print(displays_following_cells(), type(sys.stdout).__name__, sys.executable)"""
CELLS = [SETUP, TRAIN, AFTER, FAIL, USABLE, STEP_A, STEP_B, STEP_C, INTERRUPT, DROP_A, DROP_B, LAST]
(C_TRAIN, C_AFTER, C_FAIL, C_USABLE, C_STEP_A, C_STEP_B, C_STEP_C, C_INTERRUPT, C_DROP_A, C_DROP_B, C_LAST) = range(
    1, len(CELLS)
)

#: a plain-mode line (``epoch 1/2  iteration 37/300  1,234 it/s  loss 0.1``): must never appear in a notebook
PLAIN_LINE = re.compile(r"iteration\s+\d+/\d+|it/s")


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Executed:
    folder = tmp_path_factory.mktemp("notebook")
    return run_notebook(CELLS, folder)


def test_train_in_a_cell_shows_one_live_display_then_the_results(notebook: Executed) -> None:
    outputs = notebook.outputs(C_TRAIN)
    texts = notebook.texts(C_TRAIN)
    # the bars: one display, first in the cell, replaced in place; its final state is what the notebook keeps
    assert outputs[0].output_type == "display_data"
    assert set(outputs[0].data) == {"text/plain", "text/html"}
    rows = bar_rows(texts[0])
    assert rows[0][:3] == ["training", "300/300", "0:00:00"]  # the count and the ETA
    assert rows[0][-2] == "loss"
    assert 0 < float(rows[0][-1]) < 1
    assert rows[1] == ["epoch", "2/2", "150/150", "0:00:00"]
    html = outputs[0].data["text/html"]
    assert html.startswith('<pre style="white-space:pre;')
    assert '<span style="font-weight: bold">training</span>' in html
    assert "300/300" in html
    assert "━" in html
    # below it, rich's own HTML output: each validation's table and an epoch line, then the summary
    assert all(o.output_type == "display_data" and o.data["text/html"].startswith("<pre") for o in outputs[1:-1])
    assert [t.splitlines()[0].split()[:5] for t in texts[1:7]] == [
        ["validation", "at", "iteration", "150"],
        ["metric", "┃", "value", "┃", "best"],
        ["epoch", "1/2", "done", "at", "iteration"],
        ["validation", "at", "iteration", "300"],
        ["metric", "┃", "value", "┃", "best"],
        ["epoch", "2/2", "done", "at", "iteration"],
    ]
    (name1, _, v1, _, best1), (name2, _, v2, _, best2) = (t.splitlines()[2].split() for t in (texts[2], texts[5]))
    assert (name1, name2) == ("val/mse", "val/mse")
    assert (best1, float(best2)) == (v1, min(float(v1), float(v2)))  # the best so far, mse going down
    assert [t.split()[:7] for t in (texts[3], texts[6])] == [
        ["epoch", "1/2", "done", "at", "iteration", "150", "epoch/loss"],
        ["epoch", "2/2", "done", "at", "iteration", "300", "epoch/loss"],
    ]
    summary = texts[7]
    assert summary.splitlines()[0].strip() == "training completed"
    assert re.search(r"iterations\s+│\s+300/300", summary)
    assert re.search(r"checkpoint/last\s+│\s+runs/train/checkpoints/step-00000300\.pt", summary)
    assert texts[8:] == ["completed\n"]
    assert outputs[8].output_type == "stream"
    # and no plain-mode line anywhere but the bars
    assert [t for t in texts[1:] if PLAIN_LINE.search(t)] == []


def test_the_display_is_refreshed_in_place_at_most_refresh_per_second(notebook: Executed) -> None:
    messages = notebook.displays(C_TRAIN)
    assert messages[0].kind == "display_data"
    assert {m.kind for m in messages[1:]} == {"update_display_data"}
    assert len({m.display_id for m in messages}) == 1
    refreshes, elapsed = notebook.texts(C_AFTER)[0].split()[:2]
    # the first drawing at pre_training, then one message per refresh: nothing else redraws it
    assert len(messages) == int(refreshes) + 1
    # throttled, epoch ends included: at most one refresh per 1/100 s of training, plus the final one
    assert 2 <= int(refreshes) <= int(float(elapsed) * 100) + 2
    assert [bar_rows(m.text)[0][1] for m in messages][-1] == "300/300"


def test_the_display_ends_with_the_training(notebook: Executed) -> None:
    # stdout is the kernel's own again, iterate() after the end does nothing, and no display follows the cells
    assert notebook.texts(C_AFTER)[0].split()[2:] == ["OutStream", "False", "0"]
    assert notebook.outputs(C_AFTER)[0].output_type == "stream"
    assert len(notebook.outputs(C_AFTER)) == 1
    trained = notebook.displays(C_TRAIN)[0].display_id
    assert [m for m in notebook.messages if m.display_id == trained and m.cell != C_TRAIN] == []


def test_an_exception_in_a_cell_ends_the_display_and_leaves_the_notebook_usable(notebook: Executed) -> None:
    outputs, texts = notebook.outputs(C_FAIL), notebook.texts(C_FAIL)
    assert bar_rows(texts[0])[0][:2] == ["training", "40/300"]  # the display's last state: where it failed
    assert texts[1].splitlines()[0].strip() == "training failed"
    assert re.search(r"iterations\s+│\s+40/300", texts[1])
    assert outputs[-1].output_type == "error"
    assert texts[-1] == "RuntimeError: diverged on purpose"
    assert len(outputs) == 3
    assert notebook.texts(C_USABLE) == ["still usable 42 OutStream 0\n"]


def test_each_cell_that_steps_the_trainer_shows_where_its_steps_left_the_run(notebook: Executed) -> None:
    a, b, c = (notebook.texts(cell) for cell in (C_STEP_A, C_STEP_B, C_STEP_C))
    assert len(a) == len(b) == 1  # a display each, nothing else
    assert bar_rows(a[0])[0][:2] == ["training", "30/150"]  # the earlier cell keeps its own state
    assert bar_rows(b[0])[0][:2] == ["training", "60/150"]
    assert bar_rows(c[0])[0][:2] == ["training", "150/150"]
    assert [t.splitlines()[0].split() for t in c[1:]] == [
        ["validation", "at", "iteration", "150"],
        ["metric", "┃", "value", "┃", "best"],
        c[3].split(),
        ["training", "completed"],
    ]
    assert c[3].startswith("epoch 1/1 done at iteration 150  epoch/loss ")
    ids = [{m.display_id for m in notebook.displays(cell)} for cell in (C_STEP_A, C_STEP_B, C_STEP_C)]
    assert all(len(found) == 1 for found in ids)
    assert len(set.union(*ids)) == 3


def test_an_interrupt_ends_the_display_with_the_interrupted_run(notebook: Executed) -> None:
    texts = notebook.texts(C_INTERRUPT)
    assert bar_rows(texts[0])[0][:2] == ["training", "20/300"]
    summary = next(t for t in texts if t.strip().startswith("training interrupted"))
    assert re.search(r"checkpoint/last\s+│\s+runs/interrupted/checkpoints/step-00000020\.pt", summary)
    assert texts[-1] == "interrupted\n"
    assert [t for t in texts[1:] if PLAIN_LINE.search(t)] == []


def test_a_trainer_dropped_before_its_end_leaves_no_display_following_the_cells(notebook: Executed) -> None:
    texts = notebook.texts(C_DROP_A)
    assert bar_rows(texts[0])[0][:2] == ["training", "5/300"]
    assert texts[1:] == ["2\n"]  # its display follows the cells: when they start and when they end
    assert notebook.outputs(C_DROP_B) == []
    assert notebook.texts(C_LAST) == [f"0 OutStream {sys.executable}\n"]  # and the kernel ran this Python


def test_to_html_escapes_the_text_and_keeps_the_styles(tmp_path: Path) -> None:
    console = Console(width=40, color_system="truecolor", force_jupyter=False, force_terminal=False)
    text, code = to_html(console, Text.assemble(("a < b", "bold red"), " & c"))
    assert text == "a < b & c\n"
    assert code.startswith("<pre ")
    assert code.endswith("</pre>\n")
    assert '<span style="color: #800000; text-decoration-color: #800000; font-weight: bold">a &lt; b</span>' in code
    assert " &amp; c\n</pre>" in code
