"""``EarlyStopping`` driven by a real ``Validator`` on a tiny ``nn.Linear``: the exact validation (iteration, epoch)
where training stops for patience, min_delta, both directions, the thresholds and non-finite values; the wait
counter surviving a resume (the classic peer bug resets it); a resumed run that had stopped stopping again; a fresh
run given another run's state starting over with a warning; and the monitor errors."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from callbacks import Checkpointer, EarlyStopping, Validator
from lifecycle import CallbackError, Status
from tests.support import Recorder, make_trainer
from trainers import BaseTrainer

NAN, INF = float("nan"), float("inf")


def by_validation(values: Sequence[float], key: str = "loss", every: int = 3) -> Any:
    """A validation function whose k-th value (k = iteration // every) is ``values[k - 1]``: the same value for the
    same iteration whichever trainer runs it, so interrupted and uninterrupted runs see the same sequence."""

    def fn(trainer: BaseTrainer) -> dict[str, Any]:
        return {key: values[trainer.state.iteration // every - 1]}

    return fn


def run(
    values: Sequence[float],
    key: str = "loss",
    *,
    every: str = "1ep",
    max_epochs: int = 10,
    **es_kwargs: Any,
) -> tuple[BaseTrainer, EarlyStopping, Recorder, list[int]]:
    """Train with a scripted validator and ``EarlyStopping(**es_kwargs)``; return the trainer, the callback, a
    recorder and the ``early_stopping/wait`` published after each validation."""
    period = 3 if every == "1ep" else int(every.removesuffix("it"))
    es = EarlyStopping(**es_kwargs)
    rec = Recorder()
    trainer = make_trainer(
        max_epochs=max_epochs, callbacks=[Validator(by_validation(values, key, period), every=every), es, rec]
    )
    waits: list[int] = []
    trainer.on("post_validation")(lambda t, **_: waits.append(t.state.metrics["early_stopping/wait"]))
    trainer.train()
    return trainer, es, rec, waits


def stopped_at(trainer: BaseTrainer) -> tuple[str | None, int, int]:
    return (None if trainer.status is None else str(trainer.status), trainer.state.iteration, trainer.state.epoch)


# ---------------------------------------------------------------------------------------------- patience


def test_stops_at_the_patience_th_validation_without_improvement() -> None:
    # best 4 at validation 2; 4.5, a tie at 4 and 6 do not improve: the third of them stops
    trainer, es, rec, waits = run([5.0, 4.0, 4.5, 4.0, 6.0, 1.0, 1.0], monitor="val/loss", patience=3)
    assert stopped_at(trainer) == ("stopped", 15, 5)
    assert trainer.status == "stopped"
    assert es.stopped_iteration == 15
    assert es.reason == "val/loss did not improve by more than 0 (min) in 3 validations; best 4 at iteration 6"
    assert (es.wait, es.best, es.best_iteration) == (3, 4.0, 6)
    assert waits == [0, 0, 1, 2, 3]
    assert trainer.state.metrics["early_stopping/wait"] == 3
    assert rec.log[-2:] == [("post_epoch", 5, 3, 15, None), ("post_training", 5, 3, 15, Status.STOPPED)]
    assert [row[3] for row in rec.log if row[0] == "post_validation"] == [3, 6, 9, 12, 15]  # no extra at the end


def test_an_improvement_resets_the_wait() -> None:
    trainer, es, _, waits = run([5.0, 6.0, 7.0, 4.0, 5.0, 5.0, 5.0], patience=3)
    assert waits == [0, 1, 2, 0, 1, 2, 3]
    assert stopped_at(trainer) == ("stopped", 21, 7)
    assert es.reason == "val/loss did not improve by more than 0 (min) in 3 validations; best 4 at iteration 12"


def test_a_mid_epoch_stop_ends_the_epoch_then_the_run() -> None:
    trainer, es, rec, waits = run([3.0, 3.0], every="1it", patience=1, max_epochs=3)
    assert stopped_at(trainer) == ("stopped", 2, 1)
    assert es.stopped_iteration == 2
    assert waits == [0, 1]
    assert rec.log[-5:] == [  # the validator's post_step handler (priority 200) runs before the recorder's
        ("pre_validation", 1, 2, 2, None),
        ("post_validation", 1, 2, 2, None),
        ("post_step", 1, 2, 2, None),
        ("post_epoch", 1, 2, 2, None),
        ("post_training", 1, 2, 2, Status.STOPPED),
    ]


def test_completes_when_the_metric_keeps_improving() -> None:
    trainer, es, _, waits = run([5.0, 4.0, 3.0, 2.0], max_epochs=4, patience=1)
    assert stopped_at(trainer) == ("completed", 12, 4)
    assert (es.reason, es.stopped_iteration, es.wait) == (None, None, 0)
    assert waits == [0, 0, 0, 0]


def test_min_delta() -> None:
    # an improvement must exceed the best by more than 0.5: 10.4 does not, 10.6 does, 11.0 and 11.05 do not
    trainer, es, _, waits = run(
        [10.0, 10.4, 10.6, 11.0, 11.05, 20.0], key="psnr", monitor="val/psnr", patience=2, min_delta=0.5
    )
    assert waits == [0, 1, 0, 1, 2]
    assert stopped_at(trainer) == ("stopped", 15, 5)
    assert es.reason == "val/psnr did not improve by more than 0.5 (max) in 2 validations; best 10.6 at iteration 9"


# ---------------------------------------------------------------------------------------------- direction


def test_a_best_value_cannot_be_monitored() -> None:
    # best/* never gets worse and is not in the post_validation payload: watching it would never stop anything
    with pytest.raises(ValueError, match=r"monitor='best/psnr' is a best-so-far value.*e\.g\. 'val/psnr'"):
        EarlyStopping("best/psnr")


def test_mode_is_inferred_from_the_metric_name() -> None:
    assert EarlyStopping("val/psnr").mode == "max"
    assert EarlyStopping("val/ssim").mode == "max"
    assert EarlyStopping("val/loss").mode == "min"
    assert EarlyStopping("test/lpips").mode == "min"
    assert EarlyStopping("val/acc", mode="max").mode == "max"
    with pytest.raises(ValueError, match=r"^EarlyStopping 'EarlyStopping': metric 'val/acc' has no known direction"):
        EarlyStopping("val/acc")
    with pytest.raises(ValueError, match=r"pass mode="):
        EarlyStopping("val/acc")


def test_rising_psnr_does_not_stop_and_rising_loss_does() -> None:
    trainer, _, _, _ = run([1.0, 2.0, 3.0], key="psnr", max_epochs=3, monitor="val/psnr", patience=1)
    assert stopped_at(trainer) == ("completed", 9, 3)
    trainer, es, _, _ = run([1.0, 2.0, 3.0], key="loss", max_epochs=3, monitor="val/loss", patience=1)
    assert stopped_at(trainer) == ("stopped", 6, 2)
    assert es.best == 1.0


def test_explicit_mode_overrides_the_name() -> None:
    trainer, es, _, _ = run([1.0, 2.0, 1.5], max_epochs=4, monitor="val/loss", mode="max", patience=1)
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert (es.best, es.best_iteration) == (2.0, 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": 0},
        {"patience": True},
        {"patience": 1.5},
        {"min_delta": -0.1},
        {"min_delta": NAN},
        {"min_delta": INF},
        {"mode": "up"},
        {"stopping_threshold": "1"},
        {"stopping_threshold": NAN},
        {"stopping_threshold": -INF},
        {"divergence_threshold": True},
        {"divergence_threshold": INF},
        {"monitor": ""},
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^EarlyStopping 'EarlyStopping': "):
        EarlyStopping(**kwargs)


# ---------------------------------------------------------------------------------------------- thresholds


def test_a_stop_at_the_final_validation_leaves_the_run_completed() -> None:
    # a stop requested during the run's last post_epoch changes nothing (lifecycle.loop); the reason is recorded
    trainer, es, _, _ = run([1.0, 2.0, 1.5], max_epochs=3, monitor="val/loss", mode="max", patience=1)
    assert stopped_at(trainer) == ("completed", 9, 3)
    assert es.stopped_iteration == 9


def test_stopping_threshold_max_is_inclusive() -> None:
    trainer, es, _, _ = run([10.0, 20.0, 30.0, 40.0], key="psnr", monitor="val/psnr", stopping_threshold=30)
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert es.reason == "val/psnr = 30 reached stopping_threshold 30"


def test_stopping_threshold_min() -> None:
    trainer, es, _, _ = run([1.0, 0.5, 0.2, 0.05], stopping_threshold=0.1, patience=10)
    assert stopped_at(trainer) == ("stopped", 12, 4)
    assert es.reason == "val/loss = 0.05 reached stopping_threshold 0.1"


def test_divergence_threshold() -> None:
    # 10 is not beyond 10; 10.5 is, although the wait is only 2
    trainer, es, _, waits = run([1.0, 2.0, 10.0, 10.5], divergence_threshold=10, patience=10)
    assert stopped_at(trainer) == ("stopped", 12, 4)
    assert es.reason == "val/loss = 10.5 is beyond divergence_threshold 10"
    assert waits == [0, 1, 2, 2]


def test_divergence_threshold_max() -> None:
    trainer, es, _, _ = run([20.0, 25.0, 4.0], key="psnr", monitor="val/psnr", divergence_threshold=5)
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert es.reason == "val/psnr = 4 is beyond divergence_threshold 5"


@pytest.mark.parametrize(("bad", "text"), [(NAN, "nan"), (INF, "inf")])
def test_check_finite_stops_at_a_non_finite_value(bad: float, text: str) -> None:
    trainer, es, _, _ = run([1.0, 0.5, bad, 0.1], patience=10)
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert es.reason == f"val/loss = {text} is not finite"
    assert (es.best, es.best_iteration) == (0.5, 6)


def test_without_check_finite_nan_counts_as_no_improvement() -> None:
    trainer, es, _, waits = run([1.0, NAN, NAN, 0.1], patience=2, check_finite=False)
    assert waits == [0, 1, 2]
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert es.best == 1.0
    assert es.reason is not None
    assert es.reason.startswith("val/loss did not improve")


# ---------------------------------------------------------------------------------------------- resume

LOSSES = [5.0, 3.0, 4.0, 4.0, 3.5, 6.0, 1.0, 1.0, 1.0, 1.0]  # best 3 at validation 2; stops at validation 6


def test_the_wait_survives_a_resume() -> None:
    reference, ref_es, _, _ = run(LOSSES, patience=4)
    assert stopped_at(reference) == ("stopped", 18, 6)

    first_es = EarlyStopping(patience=4)
    first_val = Validator(by_validation(LOSSES), every="1ep")
    first = make_trainer(max_epochs=3, callbacks=[first_val, first_es])
    assert first.train() is Status.COMPLETED
    assert (first_es.wait, first_es.best, first_es.best_iteration) == (1, 3.0, 6)
    saved = copy.deepcopy({"trainer": first.state_dict(), "es": first_es.state_dict(), "val": first_val.state_dict()})
    assert saved["es"] == {"wait": 1, "best": 3.0, "best_iteration": 6, "reason": None, "stopped_iteration": None}

    es, validator, rec = EarlyStopping(patience=4), Validator(by_validation(LOSSES), every="1ep"), Recorder()
    es.load_state_dict(saved["es"])
    validator.load_state_dict(saved["val"])
    resumed = make_trainer(max_epochs=10, callbacks=[validator, es, rec])
    resumed.load_state_dict(saved["trainer"])
    published: list[Any] = []
    resumed.on("pre_training")(lambda t, **_: published.append(t.state.metrics["early_stopping/wait"]))
    resumed.train()
    assert published == [1]
    assert stopped_at(resumed) == ("stopped", 18, 6)
    assert es.stopped_iteration == ref_es.stopped_iteration == 18
    assert es.reason == ref_es.reason
    assert [row[3] for row in rec.log if row[0] == "post_validation"] == [12, 15, 18]


def test_a_resumed_run_that_had_stopped_early_stops_at_once() -> None:
    first, first_es, _, _ = run(LOSSES, patience=4)
    assert stopped_at(first) == ("stopped", 18, 6)
    es, rec = EarlyStopping(patience=4), Recorder()
    es.load_state_dict(copy.deepcopy(first_es.state_dict()))
    validator = Validator(by_validation(LOSSES), every="1ep")
    validator.load_state_dict(first.callbacks[0].state_dict())
    resumed = make_trainer(max_epochs=10, callbacks=[validator, es, rec])
    resumed.load_state_dict(first.state_dict())
    assert resumed.train() is Status.STOPPED
    assert rec.log == [("pre_training", 6, 3, 18, True), ("post_training", 6, 3, 18, Status.STOPPED)]
    assert validator.count == 6  # nothing validated again

    es.reset()  # deliberately continue it
    assert (es.wait, es.best, es.reason, es.stopped_iteration) == (0, None, None, None)


def test_the_wait_survives_a_restore_from_a_real_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """trainer.restore: pre_training(resumed=True) continues the loaded wait and best (and says nothing)."""
    reference, ref_es, _, _ = run(LOSSES, patience=4)
    directory = tmp_path / "ckpt"

    def build(max_epochs: int) -> tuple[BaseTrainer, EarlyStopping, Recorder]:
        es, rec = EarlyStopping(patience=4), Recorder()
        callbacks = [Validator(by_validation(LOSSES), every="1ep"), es, rec, Checkpointer(directory)]
        return make_trainer(max_epochs=max_epochs, callbacks=callbacks), es, rec

    first, first_es, _ = build(3)
    assert first.train() is Status.COMPLETED
    assert (first_es.wait, first_es.best, first_es.best_iteration) == (1, 3.0, 6)

    resumed, es, rec = build(10)
    with caplog.at_level(logging.WARNING, logger="stepbus.early_stopping"):
        resumed.restore("auto")
        assert resumed.train() is Status.STOPPED
    assert caplog.records == []
    assert rec.log[0] == ("pre_training", 3, 3, 9, True)
    assert stopped_at(resumed) == ("stopped", 18, 6) == stopped_at(reference)
    assert (es.stopped_iteration, es.reason) == (ref_es.stopped_iteration, ref_es.reason)


OLD_STOP = {"wait": 1, "best": 1.0, "best_iteration": 3, "reason": "old", "stopped_iteration": 3}


def fresh_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stepbus.early_stopping" and r.levelname == "WARNING"]


def test_a_fresh_run_with_a_loaded_state_starts_over_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """resumed=False and no restore: the loaded wait, best and stop are another run's. Dropped with a warning; this
    run's own validations then stop it (a kept stop flag would have ignored every one of them)."""
    es = EarlyStopping(patience=2)
    es.load_state_dict(dict(OLD_STOP))
    rec = Recorder()
    values = [9.0, 9.5, 9.5, 1.0, 1.0, 1.0]
    trainer = make_trainer(max_epochs=6, callbacks=[Validator(by_validation(values), every="1ep"), es, rec])
    with caplog.at_level(logging.WARNING, logger="stepbus.early_stopping"):
        assert trainer.train() is Status.STOPPED
    [warning] = fresh_warnings(caplog)
    assert warning == (
        "EarlyStopping 'EarlyStopping': a fresh run (not resumed from a checkpoint) starts with state from another "
        "run (wait 1/2, best val/loss=1 at iteration 3 and its stop at iteration 3); patience starts over. To "
        "continue that run, restore its checkpoint (trainer.restore, stepbus train --resume) instead"
    )
    assert rec.log[0] == ("pre_training", 0, 0, 0, False)
    assert stopped_at(trainer) == ("stopped", 9, 3)
    assert es.reason == "val/loss did not improve by more than 0 (min) in 2 validations; best 9 at iteration 3"


def test_an_instance_reused_for_a_second_run_starts_over(caplog: pytest.LogCaptureFixture) -> None:
    es = EarlyStopping(patience=1)
    values = [5.0, 6.0, 1.0, 1.0]
    first = make_trainer(max_epochs=4, callbacks=[Validator(by_validation(values), every="1ep"), es])
    assert first.train() is Status.STOPPED
    assert es.stopped_iteration == 6
    assert fresh_warnings(caplog) == []

    second = make_trainer(max_epochs=4, callbacks=[Validator(by_validation(values), every="1ep"), es])
    with caplog.at_level(logging.WARNING, logger="stepbus.early_stopping"):
        assert second.train() is Status.STOPPED
    assert len(fresh_warnings(caplog)) == 1
    assert stopped_at(second) == ("stopped", 6, 2)  # by its own patience, not at once and not never


def test_a_validation_before_training_is_kept_by_a_fresh_run(caplog: pytest.LogCaptureFixture) -> None:
    """A request before train() (a GUI button at iteration 0) is this run's own: pre_training keeps it."""
    es = EarlyStopping(patience=2)
    values = [4.0, 5.0, 5.0, 5.0]
    trainer = make_trainer(
        max_epochs=4, callbacks=[Validator(lambda t: {"loss": values[t.state.iteration // 3]}, every="1ep"), es]
    )
    with caplog.at_level(logging.WARNING, logger="stepbus.early_stopping"):
        trainer.request_validation()
        assert (es.wait, es.best, es.best_iteration) == (0, 4.0, 0)
        assert trainer.train() is Status.STOPPED
    assert fresh_warnings(caplog) == []
    assert stopped_at(trainer) == ("stopped", 6, 2)  # 5 at iterations 3 and 6 do not beat the 4 of iteration 0
    assert es.best_iteration == 0


def test_state_loaded_before_a_validation_that_precedes_training_is_settled_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    es = EarlyStopping(patience=2)
    es.load_state_dict(dict(OLD_STOP))
    trainer = make_trainer(max_epochs=2, callbacks=[Validator(lambda t: {"loss": 4.0}, every=None), es])
    with caplog.at_level(logging.WARNING, logger="stepbus.early_stopping"):
        trainer.request_validation()  # iteration 0, nothing restored: a fresh run
    assert len(fresh_warnings(caplog)) == 1
    assert (es.wait, es.best, es.best_iteration, es.stopped_iteration) == (0, 4.0, 0, None)


def test_load_state_dict_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an EarlyStopping state dict"):
        EarlyStopping().load_state_dict({"wait": "x"})


# ---------------------------------------------------------------------------------------------- monitor errors


def test_a_monitor_missing_from_its_namespace_is_an_error_listing_the_metrics() -> None:
    es = EarlyStopping("val/acc", mode="max")
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[Validator(by_validation([1.0, 2.0, 3.0]), every="1ep"), es, rec])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert info.value.handler == "EarlyStopping.post_validation"
    assert info.value.iteration == 3
    assert isinstance(info.value.__cause__, KeyError)
    message = str(info.value)
    assert "EarlyStopping 'EarlyStopping' monitors 'val/acc'" in message
    assert "published ['val/loss']; set monitor= to one of them" in message
    assert trainer.status is Status.FAILED
    assert rec.log[-1] == ("post_training", 1, 3, 3, Status.FAILED)


def test_a_second_validators_metrics_are_ignored() -> None:
    es = EarlyStopping("val/loss", patience=1)
    val = Validator(by_validation([5.0, 4.0, 3.0]), every="1ep")
    test = Validator(
        by_validation([1.0, 9.0, 99.0], key="acc"), every="1ep", prefix="test", state_key="test", modes={"acc": "min"}
    )
    trainer = make_trainer(max_epochs=3, callbacks=[val, test, es])
    checked: list[Any] = []
    trainer.on("post_validation")(lambda t, *, validator, **_: checked.append((validator, es.wait, es.best)))
    assert trainer.train() is Status.COMPLETED
    assert checked == [
        ("Validator", 0, 5.0),
        ("test", 0, 5.0),
        ("Validator", 0, 4.0),
        ("test", 0, 4.0),
        ("Validator", 0, 3.0),
        ("test", 0, 3.0),
    ]
    assert trainer.state.metrics["test/acc"] == 99.0
    assert math.isclose(trainer.state.metrics["early_stopping/wait"], 0)


def test_the_stop_reason_reaches_the_trainer_and_the_progress_summary() -> None:
    import io

    from rich.console import Console

    from callbacks import ProgressBar

    out = io.StringIO()
    es = EarlyStopping(monitor="val/loss", patience=1)
    trainer = make_trainer(
        max_epochs=10,
        callbacks=[
            Validator(by_validation([5.0, 6.0, 1.0]), every="1ep"),
            es,
            ProgressBar(console=Console(file=out, width=200, color_system=None)),
        ],
    )
    assert trainer.stop_reason is None
    assert trainer.train() == Status.STOPPED
    reason = "val/loss did not improve by more than 0 (min) in 1 validations; best 5 at iteration 3"
    assert es.reason == reason
    assert trainer.stop_reason == f"EarlyStopping: {reason}"
    summary = out.getvalue().splitlines()
    assert [line.split() for line in summary if line.split()[:2] == ["stopped", "by"]] == [
        ["stopped", "by", "│", "EarlyStopping:", *reason.split()]  # the summary table's row
    ]
    trainer.stop("a later reason")  # the first reason stays
    assert trainer.stop_reason == f"EarlyStopping: {reason}"


def test_a_completed_run_has_no_stop_reason_and_no_such_summary_row() -> None:
    import io

    from rich.console import Console

    from callbacks import ProgressBar

    out = io.StringIO()
    trainer = make_trainer(max_epochs=2, callbacks=[ProgressBar(console=Console(file=out, width=200))])
    assert trainer.train() == Status.COMPLETED
    assert trainer.stop_reason is None
    assert "stopped by" not in out.getvalue()
