"""What a range test writes: ``lr_find.json`` read back with the json module, ``lr_find.png`` decoded with Pillow
(its size, the curve's and the suggestion's pixels where the plot's axes put them), and the data alone, with the
way to install Pillow, where Pillow cannot be imported."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from trainers.apps.demo import demo_trainer
from trainers.tune import LRRangeResult, lr_range_test
from trainers.tune.files import NO_PILLOW, write_lr_find
from trainers.tune.plot import BACKGROUND, RAW, SIZE, SMOOTHED, SUGGESTION, plot_axes


@pytest.fixture(scope="module")
def result() -> LRRangeResult:
    trainer = demo_trainer(samples=1024, console=Console(file=io.StringIO()))
    found = lr_range_test(trainer, min_lr=1e-5, max_lr=10.0, steps=80, smooth=0.9)
    assert found.suggestion is not None
    assert found.diverged
    return found


def test_the_json_holds_every_point_and_the_suggestion(result: LRRangeResult, tmp_path: Path) -> None:
    files = result.save(tmp_path / "out")
    assert files.data == tmp_path / "out" / "lr_find.json"
    assert files.note is None
    data = json.loads(files.data.read_text(encoding="utf-8"))
    assert data["suggestion"] == result.suggestion
    assert data["suggestion_index"] == result.suggestion_index
    assert (data["stopped"], data["reason"], data["optimizer"]) == (result.stopped, result.reason, "optimizer")
    assert data["settings"] == {
        "min_lr": 1e-5,
        "max_lr": 10.0,
        "steps": 80,
        "mode": "exponential",
        "smooth": 0.9,
        "diverge": 4.0,
        "skip_start": 10,
        "skip_end": 1,
    }
    assert [p["lr"] for p in data["points"]] == list(result.lrs)  # floats survive the round trip exactly
    assert [p["loss"] for p in data["points"]] == list(result.losses)
    assert [p["smoothed"] for p in data["points"]] == list(result.smoothed)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lr_find.json", "lr_find.png"]


def test_the_png_shows_both_curves_and_the_suggestion_on_a_log_axis(result: LRRangeResult, tmp_path: Path) -> None:
    files = write_lr_find(result, tmp_path)
    assert files.plot == tmp_path / "lr_find.png"
    with Image.open(files.plot) as opened:
        assert opened.format == "PNG"
        image = opened.convert("RGB")
    assert image.size == SIZE
    pixels = image.load()
    assert pixels is not None
    axes = plot_axes(result)

    def near(x: float, y: float, colour: tuple[int, int, int], radius: int = 1) -> bool:
        return any(
            pixels[round(x) + dx, round(y) + dy] == colour
            for dx in range(-radius, radius + 1)
            for dy in range(-radius, radius + 1)
        )

    # the bold smoothed curve passes through every point (away from the suggestion's marker, which covers it)
    index = result.suggestion_index
    assert index is not None
    drawn = [i for i in range(len(result.lrs)) if abs(i - index) > 2]
    assert all(near(axes.x_of(result.lrs[i]), axes.y_of(result.smoothed[i]), SMOOTHED) for i in drawn)
    # the faint raw curve shows where it is apart from the smoothed one
    apart = [i for i in drawn if abs(axes.y_of(result.losses[i]) - axes.y_of(result.smoothed[i])) > 6]
    assert apart
    assert sum(near(axes.x_of(result.lrs[i]), axes.y_of(result.losses[i]), RAW) for i in apart) > len(apart) / 2
    # the suggestion: a red marker on the smoothed curve and a red line across the frame
    assert result.suggestion is not None
    x, y = axes.x_of(result.suggestion), axes.y_of(result.smoothed[index])
    assert pixels[round(x), round(y)] == SUGGESTION
    assert near(x, (axes.top + axes.bottom) / 2, SUGGESTION)
    # the x axis is logarithmic: a decade is the same width wherever it is
    assert math.isclose(axes.x_of(1e-3) - axes.x_of(1e-4), axes.x_of(1e-1) - axes.x_of(1e-2))
    # tick labels are drawn below the frame and left of it; the corners stay background
    below = [pixels[px, py] for px in range(axes.left, axes.right) for py in range(axes.bottom + 6, axes.bottom + 20)]
    left = [pixels[px, py] for px in range(5, axes.left - 6) for py in range(axes.top, axes.bottom)]
    assert any(p != BACKGROUND for p in below)
    assert any(p != BACKGROUND for p in left)
    assert pixels[0, 0] == pixels[SIZE[0] - 1, SIZE[1] - 1] == BACKGROUND


def test_without_pillow_the_data_is_written_and_the_note_says_how_to_get_the_plot(
    result: LRRangeResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "trainers.tune.plot")
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now fails as it does where Pillow is not installed
    files = write_lr_find(result, tmp_path)
    assert (files.plot, files.note) == (None, NO_PILLOW)
    assert "pip install pillow" in NO_PILLOW
    assert json.loads(files.data.read_text())["suggestion"] == result.suggestion
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find.json"]
