"""The GUI benchmark still runs (tiny image, 2 s), and its screenshot is a real picture of the window. No timing is
asserted: speed is reported, never tested."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from benchmarks import gui

pytestmark = pytest.mark.usefixtures("display")


def test_gui_benchmark_smoke(tmp_path: Path) -> None:
    out, shot = tmp_path / "results.md", tmp_path / "window.png"
    table = gui.main(["--quick", "--out", str(out), "--screenshot", str(shot)])
    assert out.read_text(encoding="utf-8") == table + "\n"
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")]
    assert [row[0] for row in rows] == [
        "run",
        "headless `run_for`",
        "in the window (Preview every 0.5 s)",
        "window frame times (ms)",
        "period between training ticks",
        "event loop blocked per tick",
    ]
    assert rows[1][3] == "1.00x"
    assert int(rows[1][1]) > 0
    assert int(rows[2][1]) > 0
    for row in rows[4:]:
        median, p95, worst = (float(cell) for cell in row[1:])
        assert 0 < median <= p95 <= worst
    with Image.open(shot) as picture:  # the window: two 256-pixel pictures side by side, and more below
        assert picture.width > 2 * 256
        assert picture.height > 256
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 24) or []
        assert len(colours) > 100  # a real rendering, not a blank rectangle
