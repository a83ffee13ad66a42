"""``EMA`` with real training: the average computed by hand, validation on the average with the training weights
swapped back bit for bit, updates only at optimizer steps, an exact resume, the export (``average_state_dict`` and
``EvaluationWeights.applied("export")``) loaded strictly into a fresh pipeline, swaps that meet (a validation inside
an applied block), one EMA per use, and ``use_for`` with the older ``validate_with_average``. The preview's side is
in ``test_preview.py``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

from callbacks import EMA, Validator
from callbacks.weights import USES, EvaluationWeights, Use
from lifecycle import Callback, Status
from tests.support import make_trainer, params_of, same_params
from trainers import BaseTrainer, ConfigError
from trainers.config.builder import build


def _validate(trainer: BaseTrainer) -> dict[str, Any]:
    weight = trainer.pipeline.weight  # type: ignore[union-attr]
    return {"weight_sum": float(weight.sum())}


def test_the_average_is_the_lerp_of_every_step_and_validation_sees_it() -> None:
    by_hand: list[torch.Tensor] = []
    weights_after_validation: list[list[torch.Tensor]] = []

    class ByHand(Callback):
        priority = -500  # after the EMA's post_step and the validator

        def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
            by_hand[:] = params_of(trainer.pipeline)

        def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
            for average, param in zip(by_hand, trainer.pipeline.parameters(), strict=True):
                average.mul_(0.9).add_(param.detach(), alpha=0.1)

        def post_validation(self, trainer: BaseTrainer, **payload: Any) -> None:
            weights_after_validation.append(params_of(trainer.pipeline))

    ema = EMA(decay=0.9)
    validator = Validator(fn=_validate, every="3it", at_end=False, modes={"weight_sum": "max"})
    trainer = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema, validator, ByHand()])
    assert trainer.train() is Status.COMPLETED
    assert ema.updates == 12
    for average, expected in zip(ema.average, by_hand, strict=True):
        torch.testing.assert_close(average, expected, rtol=1e-6, atol=1e-7)
    # the validator measured the average (its weight sum), not the training weights
    published = trainer.state.metrics["val/weight_sum"]
    assert published == pytest.approx(float(ema.average[0].sum()), abs=1e-6)
    assert published != pytest.approx(float(trainer.pipeline.weight.detach().sum()), abs=1e-6)  # type: ignore[union-attr]
    # and the training weights came back bit for bit after every validation: training went on from them
    assert len(weights_after_validation) == 4
    assert same_params(weights_after_validation[-1], params_of(trainer.pipeline))


def test_only_optimizer_steps_update_the_average_under_accumulation() -> None:
    ema = EMA(decay=0.5)
    trainer = make_trainer(items=14, batch_size=2, max_epochs=1, accumulate=3, callbacks=[ema])
    trainer.train()
    assert (ema.updates, trainer.state.optimizer_step) == (3, 3)


def test_an_error_inside_validation_swaps_the_training_weights_back() -> None:
    def broken(trainer: BaseTrainer) -> dict[str, Any]:
        raise ValueError("the validation set is gone")

    ema = EMA(decay=0.5)
    trainer = make_trainer(items=6, batch_size=2, max_epochs=1, callbacks=[ema, Validator(fn=broken, every="2it")])
    before: list[list[torch.Tensor]] = []
    trainer.on("pre_validation", priority=1000)(lambda t, **_: before.append(params_of(t.pipeline)))
    with pytest.raises(Exception, match="the validation set is gone"):
        trainer.train()
    assert same_params(params_of(trainer.pipeline), before[0])


def test_resume_continues_the_same_average(tmp_path: Path) -> None:
    straight_ema = EMA(decay=0.8, warmup=True)
    straight = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[straight_ema])
    straight.train()
    first_ema = EMA(decay=0.8, warmup=True)
    first = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[first_ema])
    for _ in range(8):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at8.pt")
    second_ema = EMA(decay=0.8, warmup=True)
    second = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[second_ema])
    second.restore(path)
    second.train()
    assert second_ema.updates == straight_ema.updates == 12
    assert same_params(second_ema.average, straight_ema.average)
    assert same_params(params_of(second.pipeline), params_of(straight.pipeline))


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_a_bad_decay_is_refused(decay: object) -> None:
    with pytest.raises(ValueError, match=r"EMA 'EMA': decay must be a number in \[0, 1\)"):
        EMA(decay=decay)  # type: ignore[arg-type]


def test_a_pipeline_without_weights_is_refused_at_registration() -> None:
    with pytest.raises(ValueError, match="has no floating-point weights"):
        make_trainer(
            model=nn.Identity(),
            optimizer=lambda p: torch.optim.SGD([torch.zeros(1, requires_grad=True)]),
            callbacks=[EMA()],
        )


# ---------------------------------------------------------------------------------------------- export


def tied_model() -> nn.Sequential:
    """A pipeline with more than weights: a layer used twice (one parameter under two state-dict keys) and a batch
    norm (float running statistics and an integer batch count, buffers the EMA does not average)."""
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    return nn.Sequential(shared, nn.BatchNorm1d(3), nn.ReLU(), shared, nn.Linear(3, 1))


def test_the_average_state_dict_loads_strictly_into_a_fresh_pipeline_and_is_the_average(tmp_path: Path) -> None:
    ema = EMA(decay=0.9)
    trainer = make_trainer(items=12, batch_size=4, max_epochs=2, model=tied_model(), callbacks=[ema])
    assert trainer.train() is Status.COMPLETED
    training = {key: value.clone() for key, value in trainer.pipeline.state_dict().items()}
    weights = params_of(trainer.pipeline)
    assert not same_params(weights, ema.average)  # the average is not the weights: the comparisons below can fail

    exported = ema.average_state_dict(device="cpu")
    assert list(exported) == list(training)  # every key, in order: 0.* and 3.* are the one shared layer
    torch.save(exported, tmp_path / "average.pt")
    fresh = tied_model()
    loaded = torch.load(tmp_path / "average.pt", weights_only=True)
    missing, unexpected = fresh.load_state_dict(loaded, strict=True)
    assert (missing, unexpected) == ([], [])
    assert same_params(params_of(fresh), ema.average)
    assert torch.equal(exported["3.weight"], ema.average[0])
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):  # buffers as the pipeline holds them
        assert torch.equal(fresh.state_dict()[key], training[key]), key
    assert fresh.state_dict()["1.num_batches_tracked"].dtype == torch.int64

    # a copy: exporting changed nothing, and changing the export changes neither the pipeline nor the average
    assert same_params(params_of(trainer.pipeline), weights)
    average = [a.clone() for a in ema.average]
    for value in exported.values():
        value.add_(1)
    assert same_params(params_of(trainer.pipeline), weights)
    assert same_params(ema.average, average)


@pytest.mark.parametrize("use_for", [("validation", "preview", "export"), ("validation", "preview")])
def test_export_inside_the_evaluation_weights_saves_the_average_when_the_ema_serves_it(
    tmp_path: Path, use_for: tuple[Use, ...]
) -> None:
    ema = EMA(decay=0.9, use_for=use_for)
    trainer = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema])
    assert trainer.train() is Status.COMPLETED
    weights = params_of(trainer.pipeline)
    assert not same_params(weights, ema.average)
    with EvaluationWeights.of(trainer).applied("export"):
        torch.save(trainer.pipeline.state_dict(), tmp_path / "export.pt")
    saved = torch.load(tmp_path / "export.pt", weights_only=True)
    expected = ema.average_state_dict() if "export" in use_for else trainer.pipeline.state_dict()
    assert list(saved) == list(expected) == ["weight", "bias"]
    assert all(torch.equal(saved[key], expected[key]) for key in expected)
    assert same_params(params_of(trainer.pipeline), weights)


def test_a_restored_average_is_exported_before_training_resumes(tmp_path: Path) -> None:
    first_ema = EMA(decay=0.8)
    first = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[first_ema])
    for _ in range(5):
        first.iterate()
    path = first.save_checkpoint(tmp_path / "at5.pt")
    ema = EMA(decay=0.8)
    second = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema])
    second.restore(path)
    weights = params_of(second.pipeline)
    assert same_params(weights, params_of(first.pipeline))
    assert not same_params(weights, first_ema.average)
    exported = ema.average_state_dict()
    assert same_params([exported["weight"], exported["bias"]], first_ema.average)
    with ema.applied():
        assert same_params(params_of(second.pipeline), first_ema.average)
    assert same_params(params_of(second.pipeline), weights)
    # before any training and with nothing restored, the average is the weights themselves: nothing to swap
    fresh_ema = EMA(decay=0.8)
    fresh = make_trainer(items=12, batch_size=2, max_epochs=2, init_seed=3, callbacks=[fresh_ema])
    assert fresh_ema.average == []
    state = fresh_ema.average_state_dict()
    assert all(torch.equal(state[key], value) for key, value in fresh.pipeline.state_dict().items())
    with fresh_ema.applied():
        assert same_params(params_of(fresh.pipeline), [state["weight"], state["bias"]])


def test_an_ema_not_added_to_a_trainer_has_nothing_to_export() -> None:
    with pytest.raises(RuntimeError, match="not added to a trainer"):
        EMA().average_state_dict()


# ---------------------------------------------------------------------------------------------- swaps that meet


def test_a_validation_inside_an_applied_block_leaves_the_average_in_place_until_the_block_ends() -> None:
    seen: list[list[torch.Tensor]] = []

    def validate(trainer: BaseTrainer) -> dict[str, Any]:
        seen.append(params_of(trainer.pipeline))
        return {"mse": 0.0}

    ema = EMA(decay=0.9)
    validator = Validator(fn=validate, every=None, at_end=False)
    trainer = make_trainer(items=12, batch_size=2, max_epochs=2, callbacks=[ema, validator])
    assert trainer.train() is Status.COMPLETED
    weights = params_of(trainer.pipeline)
    assert not same_params(weights, ema.average)
    with ema.applied():
        validator.run(trainer, force=True)
        assert same_params(params_of(trainer.pipeline), ema.average)  # post_validation did not end the block's swap
        with EvaluationWeights.of(trainer).applied("preview"):  # nested: already in place
            assert same_params(params_of(trainer.pipeline), ema.average)
        assert same_params(params_of(trainer.pipeline), ema.average)
    assert same_params(params_of(trainer.pipeline), weights)
    assert same_params(seen[0], ema.average)
    validator.run(trainer, force=True)  # on its own, validation swaps the average in and out
    assert same_params(seen[1], ema.average)
    assert same_params(params_of(trainer.pipeline), weights)


# ---------------------------------------------------------------------------------------------- use_for


def test_one_ema_per_use_and_a_removed_ema_frees_its_uses() -> None:
    first = EMA(decay=0.9)
    trainer = make_trainer(callbacks=[first])
    weights = EvaluationWeights.of(trainer)
    assert [weights.provider(use) for use in USES] == ["EMA 'EMA'"] * 3
    with pytest.raises(ValueError, match="would both swap") as raised:
        trainer.add_callback(EMA(decay=0.99, state_key="slow"))
    assert str(raised.value) == (
        "EMA 'slow' and EMA 'EMA' would both swap their weights into the pipeline for ['validation', 'preview', "
        "'export']; only one may serve each use: leave these uses out of one of them (EMA(..., use_for=[...]))"
    )
    assert [callback.state_key for callback in trainer.callbacks] == ["EMA"]  # the refused one is not registered
    slow = trainer.add_callback(EMA(decay=0.99, use_for=(), state_key="slow"))  # kept for average_state_dict only
    assert [weights.provider(use) for use in USES] == ["EMA 'EMA'"] * 3
    trainer.remove_callback(first)
    assert [weights.provider(use) for use in USES] == [None] * 3
    trainer.add_callback(EMA(decay=0.5, use_for=["preview"], state_key="fast"))
    assert [weights.provider(use) for use in USES] == [None, "EMA 'fast'", None]
    assert trainer.train() is Status.COMPLETED
    assert isinstance(slow, EMA)
    assert slow.updates == 6


@pytest.mark.parametrize("use_for", ["preview", ["preview", "test"], None, [3]])
def test_use_for_must_list_known_uses(use_for: object) -> None:
    with pytest.raises(ValueError, match="use_for") as raised:
        EMA(use_for=use_for)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"EMA 'EMA': use_for must be a list of uses among ['validation', 'preview', 'export'], got {use_for!r}"
    )


def test_an_unknown_use_is_refused_by_the_evaluation_weights() -> None:
    weights = EvaluationWeights.of(make_trainer())
    message = r"EvaluationWeights: unknown use 'previews'; the uses are \['validation', 'preview', 'export'\]"
    with pytest.raises(ValueError, match=message), weights.applied("previews"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match=message):
        weights.provider("previews")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        weights.provide("mine", contextlib.nullcontext, ["previews"])  # type: ignore[list-item]
    assert weights.provider("preview") is None


def test_configs_set_use_for_and_still_accept_validate_with_average(tmp_path: Path) -> None:
    def built(block: dict[str, Any], name: str) -> EMA:
        config = {"trainer": {"name": "demo", "samples": 64, "max_epochs": 1}, "callbacks": {"ema": block}}
        trainer = build(config, run_dir=tmp_path / name, objects={"console": Console(file=io.StringIO())})
        found = [callback for callback in trainer.callbacks if isinstance(callback, EMA)]
        assert len(found) == 1
        trainer.close()
        return found[0]

    assert built({"decay": 0.9}, "default").use_for == ("validation", "preview", "export")
    assert built({"use_for": ["export", "preview"]}, "listed").use_for == ("preview", "export")
    old = built({"validate_with_average": False}, "old")
    assert (old.use_for, old.validate_with_average) == (("preview", "export"), False)
    with pytest.raises(ConfigError, match=r"callbacks\.ema\.use_for"):
        built({"use_for": ["previews"]}, "bad")
