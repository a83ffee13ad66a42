"""``GridPruning`` on a real grid model: exact prune iterations for iteration and epoch schedules with ``start``,
what is published for each kind of return value, refusal of a pipeline without the method at construction, the
real effect of pruning (occupancy, decoder work, FLOPs), and resume (the callback's count/last, the model's
occupancy buffer, republishing at ``pre_training``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from callbacks import GridPruning
from lifecycle import CallbackError, Priority, Status
from tests.callbacks.grid_model import GridModel, decoder_flops, grid_loss, image_data, pixel_coords
from trainers import BaseTrainer

PIXELS = 16 * 16


def grid_trainer(
    *,
    callbacks: list[Any],
    max_epochs: int = 3,
    batch_size: int = 64,
    model: nn.Module | None = None,
    init_seed: int = 0,
    lr: float = 0.03,
) -> BaseTrainer:
    """A real trainer of :class:`GridModel` on the half-empty image (256 pixels; 4 steps per epoch by default)."""
    if model is None:
        torch.manual_seed(init_seed)
        model = GridModel()
    return BaseTrainer(
        model,
        image_data(),
        max_epochs=max_epochs,
        batch_size=batch_size,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
        callbacks=callbacks,
        loss_fn=grid_loss,
        device="cpu",
    )


def watch_prunes(trainer: BaseTrainer, event: str = "post_step") -> list[tuple[int, int, Any]]:
    """After GridPruning (default priority, so later) on ``event``: record (iteration, count) whenever the
    model's prune counter moved, with the published ``prune/count``."""
    model = trainer.pipeline
    seen: list[tuple[int, int, Any]] = []
    last = [model.prune_calls]

    def record(t: BaseTrainer, **_: Any) -> None:
        if model.prune_calls != last[0]:
            last[0] = model.prune_calls
            seen.append((t.state.iteration, model.prune_calls, t.state.metrics.get("prune/count")))

    trainer.bus.connect(event, record, priority=Priority.DEFAULT)
    return seen


def events_of(trainer: BaseTrainer, callback: GridPruning) -> list[str]:
    return [h.event.value for h in trainer.handles_of(callback)]


# ---------------------------------------------------------------------------------------------- schedules


def test_every_5it_prunes_at_iterations_5_10_15_20_on_post_step() -> None:
    cb = GridPruning(every="5it")
    trainer = grid_trainer(callbacks=[cb], batch_size=32, max_epochs=3)  # 8 steps per epoch, 24 in all
    seen = watch_prunes(trainer)
    assert events_of(trainer, cb) == ["pre_training", "post_step"]
    assert trainer.train() is Status.COMPLETED
    assert trainer.state.iteration == 24
    assert seen == [(5, 1, 1), (10, 2, 2), (15, 3, 3), (20, 4, 4)]
    assert cb.count == 4
    assert trainer.state.metrics["prune/count"] == 4


def test_start_bounds_the_schedule_first_prune_at_first_multiple_at_or_after_start() -> None:
    cb = GridPruning(every="5it", start=12)
    trainer = grid_trainer(callbacks=[cb], batch_size=32, max_epochs=3)
    seen = watch_prunes(trainer)
    trainer.train()
    assert [row[0] for row in seen] == [15, 20]
    assert [row[2] for row in seen] == [1, 2]


def test_start_on_a_multiple_prunes_at_start() -> None:
    cb = GridPruning(every="5it", start=10)
    trainer = grid_trainer(callbacks=[cb], batch_size=32, max_epochs=3)
    seen = watch_prunes(trainer)
    trainer.train()
    assert [row[0] for row in seen] == [10, 15, 20]


def test_start_applies_to_a_schedule_given_as_a_mapping() -> None:
    """``start=`` is GridPruning's own argument: it must bound a mapping schedule as it bounds ``"5it"``."""
    cb = GridPruning(every={"every": "5it"}, start=12)
    trainer = grid_trainer(callbacks=[cb], batch_size=32, max_epochs=3)
    seen = watch_prunes(trainer)
    trainer.train()
    assert [row[0] for row in seen] == [15, 20]


def test_at_mapping_prunes_exactly_there() -> None:
    cb = GridPruning(every={"at": [3, 7, 14]})
    trainer = grid_trainer(callbacks=[cb], batch_size=32, max_epochs=2)
    seen = watch_prunes(trainer)
    trainer.train()
    assert [row[0] for row in seen] == [3, 7, 14]


def test_epoch_schedule_prunes_on_post_epoch_only() -> None:
    cb = GridPruning(every="1ep")
    trainer = grid_trainer(callbacks=[cb], max_epochs=3)  # 4 steps per epoch
    assert events_of(trainer, cb) == ["pre_training", "post_epoch"]
    model = trainer.pipeline
    rows: list[tuple[str, int, int]] = []
    for event in ("post_step", "post_epoch"):
        trainer.bus.connect(event, lambda t, _e=event, **_: rows.append((_e, t.state.iteration, model.prune_calls)))
    trainer.train()
    expected = []
    for iteration in range(1, 13):
        expected.append(("post_step", iteration, (iteration - 1) // 4))  # never during a step
        if iteration % 4 == 0:
            expected.append(("post_epoch", iteration, iteration // 4))  # at the end of each epoch
    assert rows == expected
    assert trainer.state.metrics["prune/count"] == 3


def test_epoch_schedule_with_epoch_start() -> None:
    cb = GridPruning(every="1ep", start="2ep")
    trainer = grid_trainer(callbacks=[cb], max_epochs=3)
    seen = watch_prunes(trainer, "post_epoch")
    trainer.train()
    assert [row[0] for row in seen] == [8, 12]


def test_epoch_schedule_runs_for_an_epoch_cut_short_by_stop() -> None:
    cb = GridPruning(every="1ep")
    trainer = grid_trainer(callbacks=[cb], max_epochs=3)
    trainer.bus.connect("post_step", lambda t, **_: t.stop() if t.state.iteration == 6 else None)
    seen = watch_prunes(trainer, "post_epoch")
    assert trainer.train() is Status.STOPPED
    assert [row[0] for row in seen] == [4, 6]


# ---------------------------------------------------------------------------------------------- what is published


def test_published_occupancy_is_what_prune_returned() -> None:
    returned: list[torch.Tensor] = []

    def prune(model: GridModel) -> torch.Tensor:
        returned.append(model.prune())
        return returned[-1]

    cb = GridPruning(every="4it", prune=prune)
    trainer = grid_trainer(callbacks=[cb], max_epochs=6)
    published: list[float] = []
    trainer.bus.connect("post_step", lambda t, **_: published.append(t.state.metrics["prune/occupancy"]), every="4it")
    trainer.train()
    assert len(returned) == len(published) == 6
    assert published == [float(r) for r in returned]
    assert published[-1] < 1.0  # the grid was really carved
    assert cb.last == {"prune/occupancy": published[-1]}
    assert trainer.state.metrics["prune/count"] == 6


def test_metric_names_the_published_number() -> None:
    cb = GridPruning(every="4it", metric="occupied_fraction")
    trainer = grid_trainer(callbacks=[cb], max_epochs=1)
    trainer.train()
    model = trainer.pipeline
    prune_keys = sorted(k for k in trainer.state.metrics if k.startswith("prune/"))
    assert prune_keys == ["prune/count", "prune/occupied_fraction"]
    assert trainer.state.metrics["prune/occupied_fraction"] == float(model.occupancy.float().mean())


def test_dict_return_publishes_each_key() -> None:
    values = iter([{"occupancy": torch.tensor(0.75), "cells": 12, "ratio": 0.5}, {"occupancy": 0.25, "cells": 4}])
    cb = GridPruning(every="4it", prune=lambda model: next(values))
    trainer = grid_trainer(callbacks=[cb], max_epochs=2)
    snapshots: list[dict[str, Any]] = []
    trainer.bus.connect(
        "post_step",
        lambda t, **_: snapshots.append({k: v for k, v in t.state.metrics.items() if k.startswith("prune/")}),
        every="4it",
    )
    trainer.train()
    assert snapshots[0] == {"prune/occupancy": 0.75, "prune/cells": 12.0, "prune/ratio": 0.5, "prune/count": 1}
    # the second prune overwrites what it returns; ratio stays as last published
    assert snapshots[1] == {"prune/occupancy": 0.25, "prune/cells": 4.0, "prune/ratio": 0.5, "prune/count": 2}
    assert all(isinstance(v, float) for k, v in snapshots[0].items() if k != "prune/count")
    assert cb.last == {"prune/occupancy": 0.25, "prune/cells": 4.0}


def test_none_return_publishes_only_the_count() -> None:
    calls: list[int] = []
    cb = GridPruning(every="2it", prune=lambda model: calls.append(1))
    trainer = grid_trainer(callbacks=[cb], max_epochs=1)
    trainer.train()
    assert len(calls) == 2
    assert {k: v for k, v in trainer.state.metrics.items() if k.startswith("prune/")} == {"prune/count": 2}
    assert cb.last == {}


@pytest.mark.parametrize(
    ("result", "named", "type_name"),
    [
        ("dense", "'occupancy'", "str"),
        (torch.ones(2), "'occupancy'", "Tensor"),
        (True, "'occupancy'", "bool"),
        ({"occupancy": 0.5, "cells": [1, 2]}, "'cells'", "list"),
    ],
)
def test_a_non_number_return_is_a_type_error_naming_it(result: Any, named: str, type_name: str) -> None:
    cb = GridPruning(every="3it", prune=lambda model: result)
    trainer = grid_trainer(callbacks=[cb], max_epochs=2)
    with pytest.raises(CallbackError) as info:
        trainer.train()
    error = info.value
    assert error.iteration == 3
    assert error.event == "post_step"
    assert isinstance(error.__cause__, TypeError)
    message = str(error.__cause__)
    assert f"prune() returned {named} = {type_name}" in message
    assert trainer.status is Status.FAILED
    assert "prune/count" not in trainer.state.metrics


# ---------------------------------------------------------------------------------------------- the method


def test_a_pipeline_without_prune_is_refused_when_the_trainer_is_built() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError) as info:
        BaseTrainer(
            model,
            image_data(),
            max_epochs=1,
            batch_size=64,
            callbacks=[GridPruning(every="5it")],
            loss_fn=grid_loss,
            device="cpu",
        )
    message = str(info.value)
    assert "has no method 'prune'()" in message
    assert "the pipeline Linear" in message
    assert "every 5it" in message


def test_add_callback_refusal_leaves_nothing_registered() -> None:
    trainer = BaseTrainer(nn.Linear(2, 1), image_data(), max_epochs=1, batch_size=64, loss_fn=grid_loss, device="cpu")
    with pytest.raises(TypeError, match="has no method 'prune'"):
        trainer.add_callback(GridPruning(every="5it"))
    assert trainer.callbacks == ()
    assert trainer.bus.handles() == ()


def test_the_refusal_lists_prune_like_methods() -> None:
    class Carver(nn.Linear):
        def prune_cells(self) -> None:
            pass

    with pytest.raises(TypeError) as info:
        BaseTrainer(
            Carver(2, 1), image_data(), max_epochs=1, batch_size=64, callbacks=[GridPruning()], loss_fn=grid_loss
        )
    assert "the pipeline Carver has no method 'prune'()" in str(info.value)
    assert "(it has ['prune_cells'])" in str(info.value)


def test_prune_names_another_method() -> None:
    class Shrinking(GridModel):
        def __init__(self) -> None:
            super().__init__()
            self.shrink_at: list[int] = []

        def shrink(self) -> torch.Tensor:
            self.shrink_at.append(self.prune_calls)
            return self.prune()

    torch.manual_seed(0)
    model = Shrinking()
    cb = GridPruning(every="4it", prune="shrink")
    trainer = grid_trainer(callbacks=[cb], model=model, max_epochs=2)
    trainer.train()
    assert model.shrink_at == [0, 1]
    assert model.prune_calls == 2
    with pytest.raises(TypeError, match=r"the pipeline GridModel has no method 'shrink'\(\)"):
        grid_trainer(callbacks=[GridPruning(prune="shrink")])


def test_prune_callable_gets_the_pipeline() -> None:
    seen: list[tuple[int, nn.Module]] = []
    holder: dict[str, BaseTrainer] = {}
    cb = GridPruning(every="3it", prune=lambda pipeline: seen.append((holder["t"].state.iteration, pipeline)))
    trainer = holder["t"] = grid_trainer(callbacks=[cb], max_epochs=2)
    trainer.train()
    assert [it for it, _ in seen] == [3, 6]
    assert all(p is trainer.pipeline for _, p in seen)


def test_a_wrapper_with_module_finds_the_method_on_the_module() -> None:
    class Wrapper(nn.Module):  # what DistributedDataParallel looks like to GridPruning
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    torch.manual_seed(0)
    inner = GridModel()
    trainer = grid_trainer(callbacks=[GridPruning(every="2it")], model=Wrapper(inner), max_epochs=1)
    trainer.train()
    assert inner.prune_calls == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": None}, ValueError, "every must be a schedule"),
        ({"every": "0it"}, ValueError, "must be > 0"),
        ({"every": "5it", "start": "2ep"}, ValueError, "start= must count iterations"),
        ({"metric": "a/b"}, ValueError, "metric must be a plain name"),
        ({"metric": ""}, ValueError, "metric must be a plain name"),
        ({"prune": 3}, TypeError, "prune must be a method name"),
        ({"prune": "not a name"}, TypeError, "prune must be a method name"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        GridPruning(**kwargs)


# ---------------------------------------------------------------------------------------------- the real effect


def forward_cost(model: GridModel) -> tuple[int, int, torch.Tensor]:
    """(FLOPs, decoder evaluations, output) of one forward over the full image."""
    before = model.decoder_evals
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(pixel_coords())
    return counter.get_total_flops(), model.decoder_evals - before, out


def test_pruning_carves_the_empty_half_and_cuts_the_forward_cost() -> None:
    torch.manual_seed(0)
    model = GridModel()
    model.eval()
    flops_before, evals_before, _ = forward_cost(model)
    assert (flops_before, evals_before) == (decoder_flops(PIXELS), PIXELS)

    cb = GridPruning(every="4it")
    trainer = grid_trainer(callbacks=[cb], model=model, max_epochs=8)  # 32 steps, 8 prunes
    trainer.train()

    occupancy = model.occupancy
    assert occupancy.dtype == torch.bool
    assert bool(occupancy[:, :2].all())  # the drawn left half (x < 0) stays
    assert not bool(occupancy[:, 2:].any())  # the empty right half is carved away
    assert trainer.state.metrics["prune/occupancy"] == 0.5 == float(occupancy.float().mean())
    assert cb.count == 8

    model.eval()
    flops_after, evals_after, out = forward_cost(model)
    occupied = int(occupancy[model.cells(pixel_coords())].sum())
    assert occupied == PIXELS // 2
    assert evals_after == occupied
    assert flops_after == decoder_flops(occupied) == flops_before // 2
    right = pixel_coords()[:, 0] > 0
    assert bool((out[right] == 0).all())  # pruned cells are not decoded at all
    assert bool((out[~right].abs() > 0.1).all())


def test_occupancy_travels_in_the_pipeline_state_dict() -> None:
    cb = GridPruning(every="4it")
    trainer = grid_trainer(callbacks=[cb], max_epochs=8)
    trainer.train()
    trained: GridModel = trainer.pipeline
    state = trained.state_dict()
    assert {"occupancy", "density"} <= set(state)
    assert not bool(state["occupancy"].all())

    torch.manual_seed(123)
    fresh = GridModel()
    assert bool(fresh.occupancy.all())
    fresh.load_state_dict(copy.deepcopy(state))
    assert torch.equal(fresh.occupancy, trained.occupancy)
    assert torch.equal(fresh.density, trained.density)
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(pixel_coords()), trained(pixel_coords()))
    assert forward_cost(fresh)[:2] == forward_cost(trained)[:2]


# ---------------------------------------------------------------------------------------------- resume


def test_state_dict_round_trip_and_republish_on_resume() -> None:
    def run(stop_at: int | None, callbacks: list[Any], model: GridModel | None = None) -> BaseTrainer:
        trainer = grid_trainer(callbacks=callbacks, model=model, max_epochs=4)  # 16 steps
        if stop_at is None:
            trainer.train()
        else:
            for _ in range(stop_at):
                trainer.iterate()
        return trainer

    full_cb = GridPruning(every="3it")
    full = run(None, [full_cb])

    first_cb = GridPruning(every="3it")
    first = run(10, [first_cb])
    state = first_cb.state_dict()
    assert state == {"count": 3, "last": {"prune/occupancy": first.state.metrics["prune/occupancy"]}}
    saved = copy.deepcopy(
        {
            "callback": state,
            "model": first.pipeline.state_dict(),
            "optimizer": first.optimizer.state_dict(),
            "trainer": first.state_dict(),
        }
    )

    resumed_cb = GridPruning(every="3it")
    resumed_cb.load_state_dict(saved["callback"])
    assert (resumed_cb.count, resumed_cb.last) == (3, state["last"])
    torch.manual_seed(99)
    model = GridModel()
    model.load_state_dict(saved["model"])
    second = grid_trainer(callbacks=[resumed_cb], model=model, max_epochs=4)
    second.optimizer.load_state_dict(saved["optimizer"])
    second.load_state_dict(saved["trainer"])
    at_start: list[tuple[bool, dict[str, Any]]] = []
    second.bus.connect(
        "pre_training",
        lambda t, *, resumed, **_: at_start.append((resumed, dict(t.state.metrics))),
        priority=Priority.DEFAULT,
    )
    seen = watch_prunes(second)
    second.train()

    assert at_start == [(True, {"prune/occupancy": state["last"]["prune/occupancy"], "prune/count": 3})]
    assert [row[0] for row in seen] == [12, 15]
    assert [row[2] for row in seen] == [4, 5]
    assert resumed_cb.state_dict() == full_cb.state_dict()
    for a, b in zip(second.pipeline.state_dict().values(), full.pipeline.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_fresh_run_publishes_nothing_at_pre_training() -> None:
    trainer = grid_trainer(callbacks=[GridPruning(every="3it")], max_epochs=1)
    at_start: list[dict[str, Any]] = []
    trainer.bus.connect("pre_training", lambda t, **_: at_start.append(dict(t.state.metrics)))
    trainer.iterate()
    assert at_start == [{}]


@pytest.mark.parametrize("state", [{}, {"count": 1}, {"count": "x", "last": {}}, {"count": 1, "last": [1]}])
def test_load_state_dict_refuses_a_foreign_dict(state: dict[str, Any]) -> None:
    cb = GridPruning()
    with pytest.raises(ValueError, match="not a GridPruning state dict"):
        cb.load_state_dict(state)
    assert (cb.count, cb.last) == (0, {})
