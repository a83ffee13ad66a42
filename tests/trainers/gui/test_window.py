"""The training window on a real X server (Xvfb), driven by synthesized Tk events: Start, Pause, Step, callback
toggles, Save, Stop, close; two trainers in one window; the trainer's own state is what the window shows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from callbacks import Checkpointer, Preview
from lifecycle import Phase, Status
from tests.support import EVENT_METHODS
from tests.trainers.gui.drive import Recorder, click, press, pump, pump_until
from trainers.apps.demo import demo_trainer
from trainers.apps.image_field.trainer import image_field_trainer
from trainers.checkpoint.format import list_checkpoints, load_checkpoint, read_metadata
from trainers.engine.trainer import BaseTrainer
from trainers.gui import TrainingWindow
from trainers.gui.photo import netpbm

pytestmark = pytest.mark.usefixtures("display")


def _demo(run_dir: Path | None = None, *, epochs: int = 200, seed: int = 0) -> BaseTrainer:
    return demo_trainer(max_epochs=epochs, run_dir=run_dir, seed=seed, console=Console(file=io.StringIO()))


def _saved_iterations(directory: Path) -> list[int]:
    return sorted(int(read_metadata(c.path)["iteration"]) for c in list_checkpoints(directory))


def test_start_pause_step_toggle_save_close(tmp_path: Path) -> None:
    trainer = _demo(tmp_path)
    recorder = trainer.add_callback(Recorder())
    trainer.add_callback(Checkpointer(every=None, keep_last=None))
    trainer.add_callback(Preview(every="10it"))
    window = TrainingWindow([trainer], titles=["demo"])
    panel = window.panels[0]
    pump(window, 0.3)
    # the window opens paused: nothing runs before Start
    assert trainer.phase is Phase.IDLE
    assert trainer.state.iteration == 0
    assert recorder.events == []
    assert panel.start_button.cget("text") == "Start"
    assert str(panel.stop_button.cget("state")) == "disabled"
    assert str(panel.save_button.cget("state")) == "disabled"

    click(window, panel.start_button)
    pump_until(window, lambda: trainer.state.iteration >= 300)
    assert panel.start_button.cget("text") == "Pause"
    assert not trainer.is_paused
    assert recorder.count("pre_training") == 1

    click(window, panel.start_button)  # Pause
    assert trainer.is_paused
    assert panel.start_button.cget("text") == "Start"
    paused_at = trainer.state.iteration
    steps_before = recorder.count("post_step")
    pump(window, 0.5)
    assert trainer.state.iteration == paused_at
    assert recorder.count("post_step") == steps_before
    assert "paused" in panel.counters.cget("text")

    click(window, panel.step_button)  # exactly one iterate(): one step, its three events
    assert trainer.state.iteration == paused_at + 1
    assert trainer.is_paused
    assert recorder.events[-3:] == ["pre_step", "step", "post_step"]
    assert recorder.count("post_step") == steps_before + 1
    pump(window, 0.3)
    assert trainer.state.iteration == paused_at + 1  # Step left it paused

    callback, variable, box = panel.toggles["Recorder"]
    assert callback is recorder
    assert variable.get() is True
    click(window, box)  # uncheck: every handle of the Recorder is disabled
    assert variable.get() is False
    assert [handle.enabled for handle in trainer.handles_of(recorder)] == [False] * len(EVENT_METHODS)
    events_before = len(recorder.events)
    for _ in range(3):
        click(window, panel.step_button)
    assert trainer.state.iteration == paused_at + 4
    assert len(recorder.events) == events_before
    click(window, box)  # check again: events resume
    assert all(handle.enabled for handle in trainer.handles_of(recorder))
    click(window, panel.step_button)
    assert trainer.state.iteration == paused_at + 5
    assert recorder.events[events_before:] == ["pre_step", "step", "post_step"]

    assert list_checkpoints(tmp_path / "checkpoints") == []
    click(window, panel.save_button)
    assert _saved_iterations(tmp_path / "checkpoints") == [paused_at + 5]
    saved = list_checkpoints(tmp_path / "checkpoints")[0].path
    assert str(saved) in panel.status.cget("text")
    loaded = load_checkpoint(saved)
    model = loaded["model"]
    assert all(torch.equal(model[name], value) for name, value in trainer.pipeline.state_dict().items())

    press(window, "Control-q")  # close: the run ends cleanly, once
    assert window.closed
    assert recorder.count("post_training") == 1
    assert recorder.statuses == [Status.STOPPED]
    assert trainer.is_finished
    assert trainer.status is Status.STOPPED
    assert trainer.state.iteration == paused_at + 5  # closing steps nothing
    # the checkpointer's end-of-run save is the same position as the manual one: not written twice
    assert _saved_iterations(tmp_path / "checkpoints") == [paused_at + 5]
    window.close()  # idempotent
    assert recorder.count("post_training") == 1


def test_save_without_a_checkpointer_is_disabled_and_says_why(tmp_path: Path) -> None:
    trainer = _demo(tmp_path)
    window = TrainingWindow([trainer])
    panel = window.panels[0]
    click(window, panel.step_button)  # started: only the missing checkpointer keeps Save disabled
    assert trainer.servers("checkpoint") == ()
    assert str(panel.save_button.cget("state")) == "disabled"
    panel.save()  # the Ctrl-S path, which does not look at the button
    assert panel.status.cget("text") == "no checkpointer: enable one (callbacks.checkpointer) to save from here"
    assert panel.error is None
    checkpointer = trainer.add_callback(Checkpointer(every=None))
    assert trainer.servers("checkpoint") == ("Checkpointer.request",)
    assert checkpointer.state_key == "Checkpointer"
    pump(window, 0.1)
    assert str(panel.save_button.cget("state")) == "normal"
    window.close()


def test_keyboard_space_starts_and_pauses_s_steps() -> None:
    trainer = _demo()
    window = TrainingWindow([trainer])
    press(window, "space")
    pump_until(window, lambda: trainer.state.iteration >= 50)
    press(window, "space")
    assert trainer.is_paused
    at = trainer.state.iteration
    press(window, "KeyPress-s")
    press(window, "Right")
    assert trainer.state.iteration == at + 2
    window.close()
    assert trainer.status is Status.STOPPED


def test_stop_button_ends_the_run_and_disables_the_controls(tmp_path: Path) -> None:
    trainer = _demo(tmp_path)
    recorder = trainer.add_callback(Recorder())
    trainer.add_callback(Checkpointer(every=None))
    window = TrainingWindow([trainer], start=True)
    pump_until(window, lambda: trainer.state.iteration >= 20)
    click(window, window.panels[0].stop_button)
    stopped_at = trainer.state.iteration
    assert recorder.count("post_training") == 1
    assert recorder.statuses == [Status.STOPPED]
    assert recorder.events[-2:] == ["post_epoch", "post_training"]
    panel = window.panels[0]
    for button in (panel.start_button, panel.step_button, panel.stop_button):
        assert str(button.cget("state")) == "disabled"
    assert "stopped" in panel.counters.cget("text")
    assert _saved_iterations(tmp_path / "checkpoints") == [stopped_at]  # the checkpointer's end-of-run save
    pump(window, 0.3)
    click(window, panel.start_button)  # disabled: nothing happens
    assert trainer.state.iteration == stopped_at
    window.close()
    assert recorder.count("post_training") == 1


def test_the_window_shows_the_trainers_state_it_keeps_none() -> None:
    trainer = _demo(epochs=3)
    window = TrainingWindow([trainer], start=True)
    panel = window.panels[0]
    pump_until(window, lambda: trainer.state.iteration >= 10)
    trainer.pause()  # from code, not from the window
    pump(window, 0.1)
    assert panel.start_button.cget("text") == "Start"
    assert "paused" in panel.counters.cget("text")
    at = trainer.state.iteration
    pump(window, 0.2)
    assert trainer.state.iteration == at
    trainer.resume()
    pump_until(window, lambda: trainer.is_finished)  # runs to its end: 3 epochs of 128
    assert trainer.status is Status.COMPLETED
    assert trainer.state.iteration == 384
    assert "completed" in panel.counters.cget("text")
    assert "iteration 384 (128/128)" in panel.counters.cget("text")
    window.close()
    assert trainer.status is Status.COMPLETED  # closing a finished run emits nothing


def test_two_trainers_in_one_window_are_independent() -> None:
    first, second = _demo(seed=0), _demo(seed=1)
    first_events, second_events = first.add_callback(Recorder()), second.add_callback(Recorder())
    window = TrainingWindow([first, second], titles=["a", "b"])
    left, right = window.panels
    click(window, left.start_button)
    pump_until(window, lambda: first.state.iteration >= 100)
    assert second.state.iteration == 0
    assert second_events.events == []
    click(window, right.step_button)
    click(window, right.step_button)
    assert second.state.iteration == 2
    assert second.is_paused
    assert "iteration 2 (2/128)" in right.counters.cget("text")
    click(window, right.start_button)
    pump_until(window, lambda: second.state.iteration >= 50)
    click(window, left.start_button)  # pause only the first
    at = first.state.iteration
    pump_until(window, lambda: second.state.iteration >= 150)
    assert first.state.iteration == at
    click(window, left.toggles["Recorder"][2])  # the first's Recorder only
    assert not any(h.enabled for h in first.handles_of(first_events))
    assert all(h.enabled for h in second.handles_of(second_events))
    window.close()
    assert first_events.statuses == []
    assert second_events.statuses == [Status.STOPPED]
    assert first.status is Status.STOPPED
    assert second.status is Status.STOPPED


class _FailAt(Recorder):
    def __init__(self, iteration: int) -> None:
        super().__init__(state_key="FailAt")
        self.at = iteration

    def post_step(self, trainer: BaseTrainer, **payload: Any) -> None:
        super().post_step(trainer, **payload)
        if trainer.state.iteration == self.at:
            raise RuntimeError("the sensor went away")


def test_a_failing_trainer_is_shown_and_the_other_keeps_training() -> None:
    failing, healthy = _demo(), _demo()
    failure = failing.add_callback(_FailAt(7))
    window = TrainingWindow([failing, healthy], start=True)
    bad = window.panels[0]
    pump_until(window, lambda: bad.error is not None)
    assert failing.status is Status.FAILED
    assert failure.statuses == [Status.FAILED]
    assert failing.state.iteration == 7
    text = bad.status.cget("text")
    assert "iteration 7" in text
    assert "RuntimeError: the sensor went away" in text
    assert "failed" in bad.counters.cget("text")
    at = healthy.state.iteration
    pump_until(window, lambda: healthy.state.iteration >= at + 100)
    for button in (bad.start_button, bad.step_button, bad.stop_button):
        assert str(button.cget("state")) == "disabled"
    window.close()
    assert failure.statuses == [Status.FAILED]
    assert healthy.status is Status.STOPPED


def test_preview_pictures_and_curve_are_the_preview_callbacks() -> None:
    trainer = image_field_trainer(size=64, batch_size=512, batches_per_epoch=20, max_epochs=2)
    preview = trainer.add_callback(Preview(every="5it"))
    window = TrainingWindow([trainer], start=True, image_size=128)
    panel = window.panels[0]
    pump_until(window, lambda: trainer.is_finished)
    pump(window, 0.1)
    frame, target = preview.frame, preview.target
    assert frame is not None
    assert target is not None
    assert frame.iteration == 40
    assert (frame.width, frame.height, target.width) == (32, 32, 32)  # preview_stride 2 of 64
    assert panel.render_view.shown is frame
    assert panel.target_view.shown is target
    photo = panel.render_view.photo
    assert (photo.width(), photo.height()) == (128, 128)  # zoomed 4x into the 128 box
    for x, y in ((0, 0), (31, 5), (17, 30)):
        offset = (y * 32 + x) * 3
        assert tuple(photo.get(4 * x + 1, 4 * y + 2)) == tuple(frame.pixels[offset : offset + 3])
    assert netpbm(frame).startswith(b"P6\n32 32\n255\n")
    assert len(netpbm(frame)) == 13 + 32 * 32 * 3
    assert panel.render_view._caption.cget("text") == "reconstruction, iteration 40"
    assert panel.curve.drawn["train/loss"] == len(preview.history["train/loss"]) == 8  # iterations 5, 10, ..., 40
    assert panel.curve.drawn["preview/psnr"] == 8
    window.close()


def test_frame_clock_measures_ticks_while_training() -> None:
    trainer = _demo(epochs=2)
    window = TrainingWindow([trainer], start=True, budget=0.005)
    pump_until(window, lambda: trainer.is_finished)
    stats = window.frame_stats()
    assert stats["frames"] == len(window.clock.periods) == window.clock.ticks - 1 > 10
    assert 0 < stats["tick_p50_ms"] <= stats["tick_p95_ms"] <= stats["tick_max_ms"]
    assert stats["frame_p50_ms"] >= stats["tick_p50_ms"] * 0.5
    assert window.clock.text().startswith("frame ")
    window.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one trainer"):
        TrainingWindow([])
    trainer = _demo()
    with pytest.raises(ValueError, match="2 titles for 1 trainers"):
        TrainingWindow([trainer], titles=["a", "b"])
    with pytest.raises(ValueError, match="budget must be > 0"):
        TrainingWindow([trainer], budget=0)
