"""``param_groups``: optimizer groups selected by module object or dotted path, ``lr_scale``, pass-through options,
the ``rest`` group, frozen parameters, every error, and a real SGD step whose update is exactly ``lr_scale`` times
larger in the scaled group."""

from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainers import BaseTrainer, param_groups


class Grid(nn.Module):
    """A grid of learned features looked up by index (Wisp's feature grid, in miniature)."""

    def __init__(self, cells: int = 8, features: int = 2) -> None:
        super().__init__()
        self.features = nn.Parameter(torch.randn(cells, features))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.features[index]


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.grid = Grid()
        self.decoder = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        self.background_grid_decoder = nn.Linear(2, 1)  # Wisp's substring match would misfile it as 'grid'
        self.scale = nn.Parameter(torch.ones(1))  # owned by the root only: always in 'rest'

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        features = self.grid(index)
        return self.scale * (self.decoder(features) + self.background_grid_decoder(features))


def ids(params: list[Any]) -> list[int]:
    return [id(p) for p in params]


def test_group_by_module_object_with_lr_scale_and_rest() -> None:
    field = Field()
    groups = param_groups(field, {field.grid: {"lr_scale": 500}}, lr=1e-3)
    assert [g["name"] for g in groups] == ["grid", "rest"]
    grid, rest = groups
    assert set(grid) == {"name", "params", "lr"}
    assert grid["lr"] == 1e-3 * 500.0
    assert ids(grid["params"]) == [id(field.grid.features)]
    assert set(rest) == {"name", "params"}  # no lr: the optimizer's default applies
    expected_rest = [
        field.scale,
        *field.decoder.parameters(),
        *field.background_grid_decoder.parameters(),
    ]
    assert sorted(ids(rest["params"])) == sorted(ids(expected_rest))
    assert id(field.background_grid_decoder.weight) not in ids(grid["params"])


def test_group_by_dotted_path_passes_other_options_through() -> None:
    field = Field()
    groups = param_groups(
        field,
        {
            "decoder.2": {"lr_scale": 10, "weight_decay": 1e-6, "momentum": 0.5},
            "grid": {"lr": 0.25, "name": "features"},
        },
        lr=0.01,
        rest={"weight_decay": 0.0, "dampening": 0.1},
    )
    assert [g["name"] for g in groups] == ["decoder.2", "features", "rest"]
    last, grid, rest = groups
    assert last["lr"] == 0.01 * 10.0
    assert last["weight_decay"] == 1e-6
    assert last["momentum"] == 0.5
    assert "lr_scale" not in last
    assert ids(last["params"]) == ids([field.decoder[2].weight, field.decoder[2].bias])
    assert grid["lr"] == 0.25  # an explicit lr is passed as is
    assert ids(grid["params"]) == [id(field.grid.features)]
    assert rest["weight_decay"] == 0.0
    assert rest["dampening"] == 0.1
    assert rest["name"] == "rest"
    assert sorted(ids(rest["params"])) == sorted(
        ids([field.scale, field.decoder[0].weight, field.decoder[0].bias, *field.background_grid_decoder.parameters()])
    )
    # the groups build a real optimizer: options land where they were given, defaults elsewhere
    optimizer = torch.optim.SGD(groups, lr=0.01)
    built = {g["name"]: g for g in optimizer.param_groups}
    assert (built["decoder.2"]["lr"], built["decoder.2"]["momentum"]) == (0.01 * 10.0, 0.5)
    assert (built["features"]["lr"], built["features"]["momentum"]) == (0.25, 0)
    assert (built["rest"]["lr"], built["rest"]["dampening"]) == (0.01, 0.1)


def test_lr_scale_multiplies_lr_for_each_group() -> None:
    field = Field()
    groups = param_groups(field, {field.grid: {"lr_scale": 4}, field.decoder: {"lr_scale": 0.5}}, lr=0.02)
    assert [(g["name"], g.get("lr")) for g in groups] == [("grid", 0.08), ("decoder", 0.01), ("rest", None)]


def test_every_trainable_parameter_exactly_once() -> None:
    field = Field()
    groups = param_groups(field, {"decoder.0": {}, field.grid: {}, "background_grid_decoder": {}})
    counts = Counter(id(p) for g in groups for p in g["params"])
    assert set(counts.values()) == {1}
    assert set(counts) == {id(p) for p in field.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(field.parameters())) == 8


def test_frozen_parameters_are_excluded() -> None:
    field = Field()
    field.decoder[0].weight.requires_grad_(False)
    field.scale.requires_grad_(False)
    groups = param_groups(field, {field.decoder: {}})
    decoder, rest = groups
    assert ids(decoder["params"]) == ids([field.decoder[0].bias, field.decoder[2].weight, field.decoder[2].bias])
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert id(field.decoder[0].weight) not in all_ids
    assert id(field.scale) not in all_ids
    assert sorted(all_ids) == sorted(id(p) for p in field.parameters() if p.requires_grad)
    assert len(rest["params"]) == 3  # grid.features and background_grid_decoder's weight and bias


def test_rest_is_omitted_when_empty() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    groups = param_groups(model, {"0": {"lr_scale": 2}, model[2]: {}}, lr=0.1, rest={"weight_decay": 1.0})
    assert [g["name"] for g in groups] == ["0", "2"]
    # the whole model selected by its empty path: one group named 'model'
    (whole,) = param_groups(model, {"": {}})
    assert whole["name"] == "model"
    assert ids(whole["params"]) == ids(list(model.parameters()))
    # a frozen leftover does not make a rest group either
    model[2].requires_grad_(False)
    assert [g["name"] for g in param_groups(model, {"0": {}})] == ["0"]


def test_no_groups_puts_everything_in_rest() -> None:
    field = Field()
    (rest,) = param_groups(field, {}, rest={"lr": 0.3})
    assert rest["name"] == "rest"
    assert rest["lr"] == 0.3
    assert ids(rest["params"]) == ids(list(field.parameters()))


# ---------------------------------------------------------------------------------------------- errors
def test_module_not_in_model() -> None:
    field = Field()
    with pytest.raises(ValueError, match="the Linear given as a group is not a submodule of the model"):
        param_groups(field, {nn.Linear(2, 1): {}})
    with pytest.raises(ValueError, match="the Grid given as a group is not a submodule of the model"):
        param_groups(field, {Field().grid: {}})  # an equal-looking module of another model


def test_unknown_path_lists_the_children() -> None:
    field = Field()
    children = "['grid', 'decoder', 'background_grid_decoder']"
    with pytest.raises(ValueError, match=re.escape(f"no submodule 'decodr'; its children are {children}")):
        param_groups(field, {"decodr": {}})
    with pytest.raises(ValueError, match=re.escape(f"no submodule 'decoder.7'; its children are {children}")):
        param_groups(field, {"decoder.7": {}})


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (lambda f: {f.decoder: {}, "decoder.0": {}}, "a parameter of 'decoder.0' is also in group 'decoder'"),
        (lambda f: {"decoder.2": {}, f.decoder: {}}, "a parameter of 'decoder' is also in group 'decoder.2'"),
        (lambda f: {f.grid: {}, "grid": {}}, "a parameter of 'grid' is also in group 'grid'"),
        (lambda f: {"": {}, f.grid: {}}, "a parameter of 'grid' is also in group"),
    ],
)
def test_nested_or_overlapping_selections(selection, message) -> None:
    field = Field()
    with pytest.raises(ValueError, match=re.escape(message)):
        param_groups(field, selection(field))


def test_shared_parameter_in_two_selected_modules_is_an_overlap() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied weights
    with pytest.raises(ValueError, match=re.escape("a parameter of '1' is also in group '0'")):
        param_groups(model, {"0": {}, "1": {}})
    (tied, rest) = param_groups(model, {"0": {}})
    assert ids(rest["params"]) == [id(model[1].bias)]
    assert len(tied["params"]) == 2


def test_lr_scale_without_lr() -> None:
    field = Field()
    with pytest.raises(ValueError, match="group 'grid' has lr_scale but no base lr= was given"):
        param_groups(field, {field.grid: {"lr_scale": 10}})


def test_module_without_trainable_parameters() -> None:
    field = Field()
    with pytest.raises(ValueError, match=re.escape("module 'decoder.1' (ReLU) has no trainable parameters")):
        param_groups(field, {"decoder.1": {}})
    field.background_grid_decoder.requires_grad_(False)
    with pytest.raises(ValueError, match=r"module 'background_grid_decoder' \(Linear\) has no trainable parameters"):
        param_groups(field, {field.background_grid_decoder: {}})


def test_bad_arguments() -> None:
    field = Field()
    with pytest.raises(ValueError, match="'params' is chosen by module"):
        param_groups(field, {field.grid: {"params": []}})
    with pytest.raises(TypeError, match="options for 'grid' must be a dict"):
        param_groups(field, {field.grid: 10})
    with pytest.raises(TypeError, match="group keys must be modules or dotted paths, got 3"):
        param_groups(field, {3: {}})
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got list"):
        param_groups([field.scale], {})


# ---------------------------------------------------------------------------------------------- a real step
def grid_data(dtype: torch.dtype = torch.float32) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    index = torch.arange(16) % 8
    return TensorDataset(index, torch.randn(16, 1, generator=generator, dtype=dtype))


def grid_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def one_sgd_step(template: Field, scale: float, lr: float, dtype: torch.dtype = torch.float32) -> tuple[Field, Field]:
    """One real BaseTrainer step (all 16 items in one batch) with ``SGD(param_groups(...))``; returns the model
    before and after."""
    model = copy.deepcopy(template)
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(param_groups(model, {model.grid: {"lr_scale": scale}}, lr=lr), lr=lr)
    trainer = BaseTrainer(
        model, grid_data(dtype), max_epochs=1, batch_size=16, optimizer=optimizer, loss_fn=grid_loss, device="cpu"
    )
    trainer.train()
    assert trainer.state.iteration == 1
    return before, model


@pytest.mark.parametrize("scale", [4.0, 500.0])
def test_scaled_group_update_is_exactly_lr_scale_times_larger(scale: float) -> None:
    template = Field()
    with torch.no_grad():
        # a zero grid makes the update exact in floating point: new = 0 - lr * grad, with no rounding in the
        # subtraction from the old value; a power-of-two lr makes lr * grad exact, so scale * delta is one rounding
        template.grid.features.zero_()
    lr = 2.0**-7
    before_1, after_1 = one_sgd_step(template, 1.0, lr)
    before_s, after_s = one_sgd_step(template, scale, lr)
    delta_1 = after_1.grid.features.detach() - before_1.grid.features.detach()
    delta_s = after_s.grid.features.detach() - before_s.grid.features.detach()
    assert delta_1.abs().min() > 0  # every cell was used and moved
    assert torch.equal(delta_s, delta_1 * scale)
    # same gradients everywhere else: the rest group took the same step in both runs
    rest = [name for name, _ in template.named_parameters() if name != "grid.features"]
    assert len(rest) == 7
    for name in rest:
        assert torch.equal(after_1.get_parameter(name), after_s.get_parameter(name)), name
    for name in ("scale", "decoder.2.weight", "decoder.2.bias", "background_grid_decoder.bias"):
        assert not torch.equal(after_1.get_parameter(name), before_1.get_parameter(name)), name


def test_scaled_group_update_matches_the_gradient_with_nonzero_weights() -> None:
    """With ordinary (non-zero) weights, in float64: the applied update is -lr_scale * lr * grad up to the rounding
    of the parameter values (~1e-16 of them), so the two runs' deltas have the ratio lr_scale."""
    template = Field().double()
    lr, scale = 0.01, 50.0
    before_1, after_1 = one_sgd_step(template, 1.0, lr, torch.float64)
    before_s, after_s = one_sgd_step(template, scale, lr, torch.float64)
    delta_1 = after_1.grid.features.detach() - before_1.grid.features.detach()
    delta_s = after_s.grid.features.detach() - before_s.grid.features.detach()
    model = copy.deepcopy(template)
    grid_loss(model, grid_data(torch.float64).tensors).backward()
    grad = model.grid.features.grad
    assert grad is not None
    assert grad.abs().min() > 1e-4
    assert torch.allclose(delta_1, -lr * grad, rtol=1e-9, atol=1e-14)
    assert torch.allclose(delta_s, -lr * scale * grad, rtol=1e-9, atol=1e-14)
    assert torch.allclose(delta_s, scale * delta_1, rtol=1e-9, atol=1e-14)
    assert not torch.allclose(delta_s, delta_1, rtol=1e-3)
