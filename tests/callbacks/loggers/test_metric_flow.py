"""``MetricFlow.of(trainer)``: step outputs summed on the device, read back once per log point, exact means per window
and per epoch, independent windows, and no host sync per step (counted with a spy on torch's conversions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from callbacks.loggers.metric_flow import MetricFlow
from lifecycle import Event, Status
from tests.support import make_trainer
from trainers import BaseTrainer

ITEMS, BATCH = 10, 4  # 3 steps per epoch: 4, 4, 2 samples


def outputs_fn(aux_every: int = 1) -> Any:
    """A loss plus an ``aux`` number on every ``aux_every``-th call and a non-scalar ``pred`` (not a metric)."""
    calls = [0]

    def loss_fn(model: nn.Module, batch: Any) -> dict[str, Any]:
        calls[0] += 1
        x, y = batch
        pred = model(x)
        out: dict[str, Any] = {"loss": nn.functional.mse_loss(pred, y), "pred": pred}
        if calls[0] % aux_every == 0:
            out["aux"] = float(calls[0])
        return out

    return loss_fn


def record(trainer: BaseTrainer) -> list[dict[str, float]]:
    """Each step's scalar outputs, read back after the run (kept as tensors meanwhile: no sync during training)."""
    steps: list[dict[str, Any]] = []

    @trainer.on(Event.POST_STEP, priority=-500)
    def keep(t: BaseTrainer, *, outputs: dict[str, Any], **_: Any) -> None:
        steps.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in outputs.items()})

    return steps  # type: ignore[return-value]  # converted by the caller once training is over


def as_floats(steps: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in s.items() if not (isinstance(v, torch.Tensor) and v.numel() != 1)} for s in steps]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_windows_give_exact_means_on_their_own_schedules() -> None:
    trainer = make_trainer(items=ITEMS, batch_size=BATCH, max_epochs=3, loss_fn=outputs_fn(aux_every=2))
    flow = MetricFlow.of(trainer)
    every2, every5 = flow.window(), flow.window()
    taken: dict[str, list[tuple[int, dict[str, float]]]] = {"2": [], "5": []}

    @trainer.on(Event.POST_STEP, priority=-200)
    def log(t: BaseTrainer, **_: Any) -> None:
        if t.state.iteration % 2 == 0:
            taken["2"].append((t.state.iteration, every2.take()))
        if t.state.iteration % 5 == 0:
            taken["5"].append((t.state.iteration, every5.take()))

    steps = record(trainer)
    assert trainer.train() is Status.COMPLETED
    values = as_floats(steps)
    assert flow.steps == 9
    assert flow.samples == 3 * ITEMS
    assert flow.names == ["loss", "aux"]  # "pred" is not a scalar: never accumulated
    for period, windows in (("2", taken["2"]), ("5", taken["5"])):
        start = 0
        for iteration, means in windows:
            chunk = values[start:iteration]
            start = iteration
            aux = [s["aux"] for s in chunk if "aux" in s]
            expected = {"train/loss": mean([s["loss"] for s in chunk])}
            if aux:
                expected["train/aux"] = mean(aux)
            assert {k: v for k, v in means.items() if not k.startswith("time/")} == pytest.approx(expected, rel=1e-6)
            assert means["time/iter_ms"] > 0
            assert means["time/samples_per_s"] > 0
        assert [it for it, _ in windows] == ([2, 4, 6, 8] if period == "2" else [5])
    # aux is present on even calls only: a window over steps 5..6 averages step 6's aux alone
    assert taken["2"][2][1]["train/aux"] == pytest.approx(6.0)


def test_epoch_means_cover_the_current_epoch() -> None:
    trainer = make_trainer(items=ITEMS, batch_size=BATCH, max_epochs=2, loss_fn=outputs_fn())
    flow = MetricFlow.of(trainer)
    assert flow.epoch_means() == {}
    seen: list[dict[str, float]] = []
    trainer.on(Event.POST_EPOCH)(lambda t, **_: seen.append(flow.epoch_means()))
    steps = record(trainer)
    trainer.train()
    values = as_floats(steps)
    for epoch, means in enumerate(seen):
        chunk = values[epoch * 3 : epoch * 3 + 3]
        assert means["epoch/loss"] == pytest.approx(mean([s["loss"] for s in chunk]), rel=1e-6)
        assert means["epoch/aux"] == pytest.approx(mean([s["aux"] for s in chunk]))
    assert len(seen) == 2


def test_an_empty_window_and_a_key_that_appears_late() -> None:
    trainer = make_trainer(items=ITEMS, batch_size=BATCH, max_epochs=1, loss_fn=outputs_fn(aux_every=3))
    early = MetricFlow.of(trainer).window()
    assert early.take() == {}  # nothing stepped yet
    trainer.iterate()
    first = early.take()
    assert set(first) == {"train/loss", "time/iter_ms", "time/samples_per_s"}  # no aux yet
    trainer.iterate()
    trainer.iterate()  # the third call brings aux = 3.0
    assert early.take()["train/aux"] == 3.0


@contextmanager
def host_syncs() -> Iterator[dict[str, int]]:
    """Count torch's tensor-to-Python conversions (each one waits for the device) while the block runs."""
    counts = {"item": 0, "tolist": 0, "__float__": 0, "__bool__": 0, "__int__": 0}
    originals = {name: getattr(torch.Tensor, name) for name in counts}

    def spy(name: str) -> Any:
        original = originals[name]

        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in counts:
        setattr(torch.Tensor, name, spy(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_one_host_copy_per_log_point_and_none_per_step() -> None:
    # SGD: torch's Adam reads its per-parameter step counters with .item() (CPU tensors, not a device sync, but
    # they would blur the count of what stepbus does)
    sgd = lambda params: torch.optim.SGD(params, lr=0.01)  # noqa: E731
    trainer = make_trainer(items=64, batch_size=4, max_epochs=5, loss_fn=outputs_fn(aux_every=7), optimizer=sgd)
    window = MetricFlow.of(trainer).window()
    logged: list[dict[str, float]] = []
    trainer.on(Event.POST_STEP, every="20it", priority=-200)(lambda t, **_: logged.append(window.take()))
    with host_syncs() as counts:
        assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 80
    assert len(logged) == 4
    assert counts == {"item": 0, "tolist": 4, "__float__": 0, "__bool__": 0, "__int__": 0}


def test_the_flow_costs_nothing_until_a_logger_asks_for_it() -> None:
    trainer = make_trainer(items=ITEMS, batch_size=BATCH)
    events = (Event.PRE_STEP, Event.POST_STEP, Event.PRE_EPOCH, Event.PRE_TRAINING)
    before = {event: len(trainer.bus.handles(event)) for event in events}
    assert before == {Event.PRE_STEP: 0, Event.POST_STEP: 0, Event.PRE_EPOCH: 0, Event.PRE_TRAINING: 0}
    flow = MetricFlow.of(trainer)
    assert MetricFlow.of(trainer) is flow  # one per trainer, shared by every logger
    after = {event: [h.name for h in trainer.bus.handles(event)] for event in before}
    assert after == {
        Event.PRE_STEP: ["metric_flow.pre_step"],
        Event.POST_STEP: ["metric_flow.post_step"],
        Event.PRE_EPOCH: ["metric_flow.pre_epoch"],
        Event.PRE_TRAINING: ["metric_flow.pre_training"],
    }


def test_totals_stay_on_the_device_in_float64() -> None:
    trainer = make_trainer(items=ITEMS, batch_size=BATCH, max_epochs=1, loss_fn=outputs_fn())
    flow = MetricFlow.of(trainer)
    trainer.train()
    # float64 totals: a window's mean (a difference of two totals) keeps float32 precision after millions of steps
    assert flow._totals().dtype == torch.float64
    assert flow._totals().device == trainer.device
    assert flow._totals().shape == (2,)  # loss, aux


def test_a_window_opened_in_pre_training_times_steps_from_the_first_step_not_the_set_up() -> None:
    """A logger opens its window in ``pre_training``; whatever set-up follows it in that event (a W&B run starting,
    event files opening: here a 1 s sleep) must not be charged to the first row's ``time/iter_ms``."""
    import time

    trainer = make_trainer(items=ITEMS, batch_size=BATCH, max_epochs=1)
    rows: list[dict[str, float]] = []
    window: list[Any] = []

    @trainer.on(Event.PRE_TRAINING, priority=10)
    def open_window(t: BaseTrainer, **_: Any) -> None:
        window.append(MetricFlow.of(t).window())

    @trainer.on(Event.PRE_TRAINING, priority=5)
    def slow_set_up(t: BaseTrainer, **_: Any) -> None:
        time.sleep(1.0)

    @trainer.on(Event.POST_TRAINING)
    def read(t: BaseTrainer, **_: Any) -> None:
        rows.append(window[0].take())

    before = time.perf_counter()
    assert trainer.train() is Status.COMPLETED
    total_ms = (time.perf_counter() - before) * 1000.0
    (row,) = rows
    assert total_ms > 1000.0  # the sleep happened inside the run
    # 3 steps: with the sleep charged, each would be > 333 ms; the steps themselves take a few ms at most
    assert row["time/iter_ms"] * 3 < total_ms - 1000.0 + 1.0
