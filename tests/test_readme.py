"""The README is a front door: short, and its example runs as written and prints what it promises. (Its other
blocks and its links are checked with the pages behind it: tests/test_docs_examples.py and tests/test_docs.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250


def _example() -> str:
    section = README.read_text().split("## Example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README has no python block under '## Example'"
    return match.group(1)


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; the details belong in docs/"


def test_readme_example_is_short() -> None:
    code = [line for line in _example().splitlines() if line.strip()]
    assert len(code) <= 25, f"the README example has {len(code)} non-blank lines"


def test_readme_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example())
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # 1024 items / 32 = 32 steps per epoch, 3 epochs = 96 steps: reports at 25, 50, 75, interleaved with epochs
    heads = [line.split(":")[0] for line in lines]
    assert heads == [
        "iteration 25",
        "epoch 1 done",
        "iteration 50",
        "epoch 2 done",
        "iteration 75",
        "epoch 3 done",
        "completed",
    ]
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("iteration ")]
    assert losses[0] > losses[-1], f"the example's loss did not decrease: {losses}"
