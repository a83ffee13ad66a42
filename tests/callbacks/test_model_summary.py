"""``ModelSummary`` on real models: exact parameter counts per module (a frozen layer, BatchNorm buffers, a shared
weight, float64 and float16 sizes), ``max_depth``, the named optimizers of the GAN app, the exact console table, the
Markdown text read back from TensorBoard's event file with tensorboard's reader, rank 0 only, the argument checks and
the config key."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks import TensorBoardLogger
from callbacks.model_summary import ModelSummary, Row, summarize
from lifecycle import Status
from tests.support import make_trainer
from tests.tb_events import events
from trainers.apps.gan import gan_trainer
from trainers.config.builder import build, load_config
from trainers.config.errors import ConfigError


class Net(nn.Module):
    """A frozen input layer, a BatchNorm (buffers), a head whose two layers share one weight, a float64 scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.encoder[0].requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 4, bias=False))
        self.head[2].weight = self.head[0].weight  # tied
        self.out = nn.Linear(4, 1).to(torch.float16)
        self.scale = nn.Parameter(torch.ones(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.head(self.encoder(x))
        out: torch.Tensor = self.out(y.half())
        return out.float() * self.scale.float().sum()


def test_counts_per_module_are_exact_with_frozen_parameters_buffers_and_a_shared_weight() -> None:
    rows = summarize(Net(), max_depth=1)
    # encoder: Linear(3, 4) frozen (12 + 4), BatchNorm1d(4) trainable 8, buffers 4 + 4 + 1 (num_batches_tracked, int64)
    # head: one 4x4 weight shared by two layers, counted once; out: 5 float16; total adds the float64 scale (2)
    assert rows == [
        Row("encoder", "Sequential", 8, 16, 9, (8 + 16 + 8) * 4 + 8, ()),
        Row("head", "Sequential", 16, 0, 0, 16 * 4, ()),
        Row("out", "Linear", 5, 0, 0, 5 * 2, ()),
        Row("total", "Net", 8 + 16 + 5 + 2, 16, 9, 136 + 64 + 10 + 2 * 8, ()),
    ]


def test_max_depth_adds_the_levels_below_in_definition_order() -> None:
    names = {depth: [row.name for row in summarize(Net(), max_depth=depth)] for depth in (1, 2, -1)}
    assert names[1] == ["encoder", "head", "out", "total"]
    assert names[2] == ["encoder", "encoder.0", "encoder.1", "head", "head.0", "head.1", "head.2", "out", "total"]
    assert names[-1] == names[2]  # Net is two levels deep
    deep = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(2, 2))))
    assert [row.name for row in summarize(deep, max_depth=-1)] == ["0", "0.0", "0.0.0", "total"]
    assert [row.name for row in summarize(deep, max_depth=2)] == ["0", "0.0", "total"]


def test_the_console_table_and_the_tensorboard_text(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = ModelSummary(console=Console(file=out, width=40))
    trainer = make_trainer(
        model=Net(),
        max_epochs=1,
        run_dir=tmp_path,
        callbacks=[TensorBoardLogger(every="1it"), summary],
        optimizer=lambda params: torch.optim.SGD([p for p in params if p.requires_grad], lr=0.0),
    )
    trainer.pipeline.train(False)  # BatchNorm with a batch of 2 in eval: running statistics stay as they are
    assert trainer.train() is Status.COMPLETED
    # not a terminal: the whole table, wider than the console's 40 columns, never wrapped
    assert [line.rstrip() for line in out.getvalue().splitlines()] == [
        "model summary",
        " name    ┃ type       ┃ trainable ┃ frozen ┃ buffers ┃ size (MB)",
        "━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━",
        " encoder │ Sequential │         8 │     16 │       9 │    <0.001",
        " head    │ Sequential │        16 │      0 │       0 │    <0.001",
        " out     │ Linear     │         5 │      0 │       0 │    <0.001",
        "─────────┼────────────┼───────────┼────────┼─────────┼───────────",
        " total   │ Net        │        31 │     16 │       9 │    <0.001",
    ]
    text = (
        "| name    | type       | trainable | frozen | buffers | size (MB) |\n"
        "|---------|------------|----------:|-------:|--------:|----------:|\n"
        "| encoder | Sequential |         8 |     16 |       9 |    <0.001 |\n"
        "| head    | Sequential |        16 |      0 |       0 |    <0.001 |\n"
        "| out     | Linear     |         5 |      0 |       0 |    <0.001 |\n"
        "| total   | Net        |        31 |     16 |       9 |    <0.001 |"
    )
    assert summary.text == text
    accumulator = events(tmp_path / "tb")
    [written] = accumulator.Tensors("model_summary/text_summary")
    assert written.step == 0
    assert written.tensor_proto.string_val[0].decode() == text


def test_named_optimizers_get_a_column_naming_what_updates_each_module(tmp_path: Path) -> None:
    out = io.StringIO()
    trainer = gan_trainer(run_dir=tmp_path, max_epochs=1)
    trainer.add_callback(summary := ModelSummary(console=Console(file=out)))
    summary.pre_training(trainer)
    assert [(r.name, r.type, r.trainable, r.frozen, r.optimizers) for r in summary.rows or []] == [
        ("generator", "Sequential", 4 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2, 0, ("generator",)),
        ("discriminator", "Sequential", 2 * 64 + 64 + 64 * 64 + 64 + 64 + 1, 0, ("discriminator",)),
        ("total", "GAN", 4610 + 4417, 0, ("discriminator", "generator")),  # the trainer's stepping order
    ]
    # sizes: 4,610 and 4,417 float32 parameters, 18,440 and 17,668 bytes
    assert summary.text == (
        "| name          | type       | trainable | frozen | size (MB) | optimizer                |\n"
        "|---------------|------------|----------:|-------:|----------:|--------------------------|\n"
        "| generator     | Sequential |     4,610 |      0 |     0.018 | generator                |\n"
        "| discriminator | Sequential |     4,417 |      0 |     0.018 | discriminator            |\n"
        "| total         | GAN        |     9,027 |      0 |     0.036 | discriminator, generator |"
    )


def test_only_rank_zero_summarises() -> None:
    assert ModelSummary.rank_zero_only is True


@pytest.mark.parametrize("depth", [0, -2, 1.5, True, "1"])
def test_a_bad_max_depth_is_refused(depth: object) -> None:
    with pytest.raises(ValueError, match=r"^ModelSummary 'ModelSummary': max_depth must be an int >= 1") as caught:
        ModelSummary(max_depth=depth)  # type: ignore[arg-type]
    assert f"got {depth!r}; to leave the summary out, remove the callback (enabled: false)" in str(caught.value)


def test_the_config_key(tmp_path: Path) -> None:
    config = {
        "trainer": {"name": "demo", "max_epochs": 1, "samples": 64},
        "callbacks": {"model_summary": {"max_depth": 2}},
    }
    assert load_config(config).data["callbacks"]["model_summary"] == {"enabled": True, "max_depth": 2}
    out = io.StringIO()
    trainer = build(config, run_dir=tmp_path / "run", objects={"console": Console(file=out)})
    [summary] = [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert summary.console.file is out  # the code-only console reaches it through build(objects=...)
    trainer.close()
    with pytest.raises(ConfigError) as caught:
        load_config({"trainer": {"name": "demo"}, "callbacks": {"model_summary": {"max_depth": 0}}})
    assert "callbacks.model_summary: ModelSummary 'ModelSummary': max_depth must be an int >= 1" in str(caught.value)
