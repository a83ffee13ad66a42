"""The command line's output where it is not a terminal (a pipe, ``| tee``, a log, CI): every line whole, whatever
``$COLUMNS`` says -- the summary's checkpoint paths, the progress lines, the ``--dry-run`` table's rows -- and a hint
that names the command the way it was started, on one line that runs as printed.

Each command runs for real, as ``python -m trainers`` or as the console script ``stepbus`` of this environment, with
stdout and stderr piped, ``$COLUMNS`` unset or 80, in a run directory whose path alone is longer than 80 columns."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from callbacks.console_width import PLAIN_WIDTH, console_for, print_whole
from lifecycle import Event
from tests.trainers.engine.live_process import default_signals
from trainers.checkpoint.format import list_checkpoints
from trainers.cli.invocation import COMMAND_ENV, runnable, words_for
from trainers.config.builder import load_config
from trainers.config.preflight import preflight_trainer

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "trainers" / "apps" / "configs" / "demo.yaml"
BIN = Path(sys.executable).parent  # this environment's scripts (not resolved: a venv's python links elsewhere)
PYTHON = BIN / "python"
SCRIPT = BIN / "stepbus"
#: longer than 80 columns on its own, with spaces that a printed command must quote
LONG = "a run directory whose name alone is longer than eighty columns, so no line of it fits a narrow log"
COLUMNS = [None, "80"]
HOW = ["module", "script"]


def _search_path(*, with_bin: bool) -> str:
    """``PATH`` without this environment's scripts, or with them first."""
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not _is_bin(p)]
    return os.pathsep.join([str(BIN), *rest] if with_bin else rest)


def _is_bin(folder: str) -> bool:
    try:
        return Path(folder).samefile(BIN)
    except OSError:
        return False


def _env(columns: str | None, *, with_bin: bool) -> dict[str, str]:
    drop = ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS", "TTY_COMPATIBLE", "COLUMNS", COMMAND_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"NO_COLOR": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = _search_path(with_bin=with_bin)
    if columns is not None:
        env["COLUMNS"] = columns
    return env


def _start(how: str, cwd: Path) -> list[str]:
    """The command's first words as typed: the interpreter with ``-m trainers``, or the console script by its
    path from the working directory (as ``.venv/bin/stepbus`` is typed in a checkout)."""
    return [str(PYTHON), "-m", "trainers"] if how == "module" else [os.path.relpath(SCRIPT, cwd)]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def _cells(line: str) -> list[str]:
    """A table row's cells: between rich's column separators, and inside its edges where it has them."""
    cells = [cell.strip() for cell in re.split("[│┃]", line)]
    return cells[1:-1] if line.startswith(("│", "┃")) else cells


# ------------------------------------------------------------------------------------------- a run, piped


#: a ProgressBar plain line, one after every step (plain_every is tiny): the loss and the metrics asked for, the
#: validation's once the first validation published them
PROGRESS = re.compile(
    r"^epoch ([12])/2  iteration (\d+)/256  [\d,]+ it/s  loss \S+  lr \S+(  val/mse \S+  best/mse \S+)?$"
)


@pytest.mark.parametrize("columns", COLUMNS)
@pytest.mark.parametrize("how", HOW)
def test_a_piped_run_prints_whole_paths_and_unwrapped_progress(tmp_path: Path, how: str, columns: str | None) -> None:
    run_dir = tmp_path / LONG
    progress = ["--set", "callbacks.progress.enabled=true", "--set", "callbacks.progress.plain_every=1e-9"]
    progress += ["--set", "callbacks.progress.metrics=[lr, val/mse, best/mse]"]
    args = ["train", "--config", str(DEMO), "--epochs", "2", "--run-dir", str(run_dir), *progress]
    result = _run([*_start(how, tmp_path), *args], tmp_path, _env(columns, with_bin=False))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"stepbus demo run in {run_dir}"

    # the progress lines: one per step, none wrapped; those with the validation's metrics are past 80 columns
    steps = [PROGRESS.match(line) for line in lines if " it/s  loss " in line]
    assert all(step is not None for step in steps), "\n".join(lines)
    shown = [step for step in steps if step is not None]
    assert [(int(step[2]), step[3] is not None) for step in shown] == [(i, i > 128) for i in range(1, 257)]
    assert min(len(step[0]) for step in shown if step[3] is not None) > 80

    # the demo's own report of each validation, whole
    reports = [line for line in lines if line.startswith("validation at iteration ") and ": " in line]
    assert [re.sub(r"\d\.\d+(e-\d+)?", "X", line) for line in reports] == [
        f"validation at iteration {iteration}: val/mse X  best/mse X  lr X" for iteration in (128, 256)
    ]

    # the summary: the checkpoints' whole paths, each on the line of its role
    summary = lines[lines.index("training completed: 256 iterations") :]
    rows = {cells[0]: cells[1] for cells in map(_cells, summary) if len(cells) == 2}
    assert rows["iterations"] == "256/256"
    assert rows["epochs"] == "2/2"
    folder = run_dir / "checkpoints"
    assert rows["checkpoint/last"] == str(folder / "step-00000256.pt")
    assert Path(rows["checkpoint/best"]) in [c.path for c in list_checkpoints(folder)]
    assert len(rows["checkpoint/last"]) > 80


# ------------------------------------------------------------------------------------------- --dry-run


def _handler_rows(run_dir: Path) -> list[list[str]]:
    """What ``train --dry-run`` lists for the demo, from the trainer built here: (event, handler, priority,
    schedule, enabled) for each handler, in the order the events call them."""
    config = load_config(DEMO, overrides=["trainer.max_epochs=2"])
    rows: list[list[str]] = []
    with preflight_trainer(config, run_dir, objects={"console": Console(file=io.StringIO())}) as trainer:
        for event in Event:
            for handle in trainer.bus.handles(event):
                schedule = "every time" if handle.schedule is None else str(handle.schedule)
                rows.append(
                    [event.value, handle.name, str(int(handle.priority)), schedule, "yes" if handle.enabled else "no"]
                )
    return rows


@pytest.mark.parametrize("columns", COLUMNS)
def test_the_dry_run_table_has_each_handler_on_one_line(tmp_path: Path, columns: str | None) -> None:
    run_dir = tmp_path / LONG
    args = ["train", "--config", str(DEMO), "--epochs", "2", "--run-dir", str(run_dir), "--dry-run"]
    result = _run([*_start("script", tmp_path), *args], tmp_path, _env(columns, with_bin=False))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0] == f"# resolved config ({DEMO} with --set); run directory {run_dir}"
    table = lines[lines.index("handlers, in the order each event calls them") + 1 : -1]
    assert set(table[0]) == {"┏", "━", "┳", "┓"}
    assert _cells(table[1]) == ["event", "handler", "priority", "schedule", "enabled"]
    assert set(table[2]) == {"┡", "━", "╇", "┩"}
    assert [_cells(line) for line in table[3:-1]] == _handler_rows(run_dir)
    assert set(table[-1]) == {"└", "─", "┴", "┘"}
    assert max(len(line) for line in table) > 80  # wider than the narrow log: rich alone would fold it
    assert lines[-1] == "dry run: nothing was trained"
    assert not run_dir.exists()


# ------------------------------------------------------------------------------------------- the resume hint

INTERRUPTED = re.compile(
    r"^interrupted by SIGINT at epoch 1/2, step (\d+)/1024, iteration (\d+); continue with: (.+)$", re.MULTILINE
)


@pytest.mark.parametrize(
    ("how", "with_bin", "expected"),
    [
        ("module", True, ["python", "-m", "trainers"]),  # the interpreter PATH finds: its name
        ("script", False, None),  # not on PATH: the script's path as it was typed
        ("script", True, ["stepbus"]),
    ],
)
def test_an_interrupt_prints_one_line_that_resumes_the_run_as_printed(
    tmp_path: Path, how: str, with_bin: bool, expected: list[str] | None
) -> None:
    run_dir = tmp_path / LONG
    env = _env("80", with_bin=with_bin)
    start = _start(how, tmp_path)
    # 1024 steps an epoch (65536 samples): the signal lands long before the end
    args = [
        "train",
        "--config",
        str(DEMO),
        "--epochs",
        "2",
        "--run-dir",
        str(run_dir),
        "--set",
        "trainer.samples=65536",
    ]
    process = subprocess.Popen(
        [*start, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
        preexec_fn=default_signals,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the demo's first report, at iteration 128
            if line.startswith("epoch 1/2  iteration"):
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, out + err
    assert "Traceback" not in err
    found = INTERRUPTED.fullmatch(err.rstrip("\n"))
    assert found is not None, err
    step, iteration, hint = int(found[1]), int(found[2]), found[3]
    assert step == iteration >= 128
    assert "epoch 1 done" not in out  # the demo's own line names the epoch the signal cut short
    assert re.search(rf"^epoch 1 cut short at step {step}/1024 in ", out, re.MULTILINE), out
    words = shlex.split(hint)
    assert words == [*(expected or start), "train", "--epochs", "2", "--resume", "auto", "--run-dir", str(run_dir)]
    assert hint == shlex.join(words)

    resumed = _run(words, tmp_path, env)  # as printed
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    newest = run_dir / "checkpoints" / f"step-{iteration:08d}.pt"
    assert f"resumed from {newest} at epoch 1/2, step {step}/1024, iteration {iteration}\n" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == "training completed: 2048 iterations"


# ------------------------------------------------------------------------------------------- the helpers


def _program(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path


def test_a_program_is_named_by_its_name_only_where_path_finds_that_very_file(tmp_path: Path) -> None:
    venv = _program(tmp_path / "venv" / "bin" / "python")
    system = _program(tmp_path / "usr" / "bin" / "python")
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "venv")
    search = os.pathsep.join([str(venv.parent), str(system.parent)])
    assert runnable(str(venv), path=search) == "python"
    assert runnable(str(linked / "bin" / "python"), path=search) == "python"  # the same folder, through a link
    assert runnable(str(system), path=search) == str(system)  # PATH finds another python first
    assert runnable(str(venv), path=str(system.parent)) == str(venv)
    assert runnable("python3", path="") == "python3"  # typed as a bare name: PATH found it

    # a virtual environment's python is a link to the system's: a different program all the same
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "python").symlink_to(system)
    assert runnable(str(tmp_path / "env" / "bin" / "python"), path=str(system.parent)) == str(
        tmp_path / "env" / "bin" / "python"
    )


def test_the_words_follow_how_the_process_was_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = _program(tmp_path / "bin" / "stepbus", "#!/usr/bin/env python3\n")
    plain = tmp_path / "train.py"
    plain.write_text("print()\n", encoding="utf-8")
    on_path = {"PATH": str(script.parent)}
    off_path = {"PATH": str(tmp_path / "elsewhere")}

    def words(
        argv0: str, main_module: str | None = None, interpreter: str = "/opt/py/bin/python", **env: str
    ) -> list[str]:
        return words_for(argv0=argv0, interpreter=interpreter, main_module=main_module, environ=env)

    assert words("bin/stepbus", **on_path) == ["stepbus"]
    assert words("bin/stepbus", **off_path) == ["bin/stepbus"]
    assert words(str(script), **off_path) == [str(script)]
    assert words("train.py", **off_path) == ["/opt/py/bin/python", "train.py"]  # not executable: by the interpreter
    assert words("/x/trainers/__main__.py", "trainers.__main__", "python3", **off_path) == ["python3", "-m", "trainers"]
    assert words("/x/trainers/cli/__main__.py", "trainers.cli.__main__", **off_path) == [
        "/opt/py/bin/python", "-m", "trainers.cli",
    ]  # fmt: skip
    assert words("/x/app.py", "app", "python", **off_path) == ["python", "-m", "app"]
    assert words("-c", **off_path) == ["stepbus"]
    assert words("", **off_path) == ["stepbus"]
    handed = {COMMAND_ENV: "'.venv/bin/my stepbus'", **off_path}
    assert words("/x/trainers/__main__.py", "trainers.__main__", **handed) == [".venv/bin/my stepbus"]
    assert words("bin/stepbus", **{COMMAND_ENV: "'unclosed", **on_path}) == ["stepbus"]


def _table() -> Table:
    table = Table(title="training completed", show_header=False, show_edge=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("iterations", "256/256")
    table.add_row("checkpoint/last", f"runs/{LONG}/checkpoints/step-00000256.pt")
    return table


def test_a_table_is_printed_whole_where_the_console_is_no_terminal() -> None:
    path = f"runs/{LONG}/checkpoints/step-00000256.pt"
    plain = io.StringIO()
    print_whole(Console(file=plain, width=40, force_terminal=False, color_system=None), _table())
    lines = plain.getvalue().splitlines()
    assert [_cells(line) for line in lines[1:]] == [["iterations", "256/256"], ["checkpoint/last", path]]
    assert lines[0].strip() == "training completed"

    drawn = io.StringIO()  # a terminal keeps rich's layout: folded at its width
    print_whole(Console(file=drawn, width=40, force_terminal=True, color_system=None), _table())
    assert max(len(line) for line in drawn.getvalue().splitlines()) <= 40
    assert path not in drawn.getvalue()


def test_a_console_off_a_terminal_never_wraps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    console = console_for()  # stdout is captured here: no terminal
    assert (console.is_terminal, console.width) == (False, PLAIN_WIDTH)
    line = "continue with: " + " ".join(["word"] * 40)
    console.print(line)
    assert capsys.readouterr().out == line + "\n"

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # a terminal after all: rich's own console, $COLUMNS wide
    terminal = console_for(stderr=True)
    assert (terminal.is_terminal, terminal.width) == (True, 80)
