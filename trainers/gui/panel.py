"""``TrainerPanel``: the controls and displays of one trainer inside a :class:`~trainers.gui.TrainingWindow`.

Everything shown is read from the trainer at refresh time: counters from ``trainer.state``, running/paused/finished
from ``trainer.is_paused`` and ``trainer.phase``, pictures and curves from its :class:`~callbacks.Preview`, the
checkboxes from its callbacks' bus handles. The panel keeps only display state (widgets, the last error, the rate
estimate), so two panels over two trainers never share anything.
"""

from __future__ import annotations

import functools
import logging
import time
import tkinter as tk
from collections.abc import Callable
from tkinter import ttk
from typing import TYPE_CHECKING, Any

from callbacks.loggers.values import numbers
from lifecycle import Phase
from trainers.checkpoint.format import CheckpointError
from trainers.checkpoint.run_lock import RunDirectoryBusy
from trainers.gui.curve import Curve
from trainers.gui.photo import ImageView

if TYPE_CHECKING:  # pragma: no cover
    from callbacks import Callback
    from callbacks.preview import Preview
    from trainers.engine.trainer import BaseTrainer

__all__ = ["TrainerPanel"]

_log = logging.getLogger(__name__)


class TrainerPanel:
    """One trainer's panel: target and reconstruction, the loss/PSNR curve, counters, Start/Pause, Step, Stop,
    Save checkpoint, and a checkbox per callback.

    Buttons act on the trainer only between ticks, so every action lands between two steps: Step runs exactly
    one ``iterate()``, Stop ends the run at once (``post_epoch`` and ``post_training(status="stopped")``), Save
    asks the checkpointer(s) through ``trainer.request_checkpoint()``.
    """

    def __init__(self, parent: tk.Misc, trainer: BaseTrainer, *, title: str, image_size: int = 256) -> None:
        self.trainer = trainer
        self.title = title
        self.preview: Preview | None = _find_preview(trainer)
        self.error: BaseException | None = None  #: what ended the run in this window, if it failed
        self.message = ""  #: the last action's outcome, shown under the buttons
        self._version = -1
        self._rate_mark: tuple[float, int] | None = None
        self._rate = 0.0

        self.widget = ttk.Frame(parent, padding=6, relief="groove", borderwidth=1)
        self.heading = ttk.Label(self.widget, text=title, font=("TkDefaultFont", 11, "bold"))
        self.heading.pack(anchor="w")
        pictures = ttk.Frame(self.widget)
        pictures.pack(anchor="w")
        self.target_view = ImageView(pictures, size=image_size, caption="target")
        self.target_view.widget.pack(side="left", padx=(0, 6))
        self.render_view = ImageView(pictures, size=image_size, caption="reconstruction")
        self.render_view.widget.pack(side="left")
        self.curve = Curve(self.widget, width=2 * image_size + 6, height=170)
        self.curve.canvas.pack(anchor="w", pady=(6, 2))
        self.counters = ttk.Label(self.widget, font=("TkFixedFont", 9), justify="left")
        self.counters.pack(anchor="w")
        self.metrics = ttk.Label(self.widget, font=("TkFixedFont", 9), justify="left", wraplength=2 * image_size)
        self.metrics.pack(anchor="w")

        buttons = ttk.Frame(self.widget)
        buttons.pack(anchor="w", pady=4)
        self.start_button = ttk.Button(buttons, text="Start", width=7, command=self.start_pause)
        self.step_button = ttk.Button(buttons, text="Step", width=6, command=self.step)
        self.stop_button = ttk.Button(buttons, text="Stop", width=6, command=self.stop)
        self.save_button = ttk.Button(buttons, text="Save checkpoint", command=self.save)
        for button in (self.start_button, self.step_button, self.stop_button, self.save_button):
            button.pack(side="left", padx=(0, 4))
        self.status = ttk.Label(self.widget, wraplength=2 * image_size, justify="left")
        self.status.pack(anchor="w")

        toggles = ttk.LabelFrame(self.widget, text="callbacks", padding=4)
        toggles.pack(anchor="w", fill="x")
        self.toggles: dict[str, tuple[Callback, tk.BooleanVar, ttk.Checkbutton]] = {}
        for index, callback in enumerate(trainer.callbacks):
            variable = tk.BooleanVar(master=self.widget, value=_enabled(trainer, callback))
            box = ttk.Checkbutton(
                toggles,
                text=callback.state_key,
                variable=variable,
                command=functools.partial(self._toggled, callback, variable),
            )
            box.grid(row=index // 3, column=index % 3, sticky="w", padx=(0, 8))
            self.toggles[callback.state_key] = (callback, variable, box)
        self.refresh()

    # ------------------------------------------------------------------ state, read from the trainer
    @property
    def started(self) -> bool:
        return self.trainer.phase is not Phase.IDLE

    @property
    def running(self) -> bool:
        """Whether the window's tick should train this trainer."""
        trainer = self.trainer
        return self.error is None and not trainer.is_paused and not trainer.is_finished

    # ------------------------------------------------------------------ actions
    def start_pause(self) -> None:
        """Start or continue training (ticks run it), or pause it after the current tick."""
        trainer = self.trainer
        if trainer.is_finished or self.error is not None:
            return
        if trainer.is_paused:
            trainer.resume()
        else:
            trainer.pause()
        self.refresh()

    def step(self) -> None:
        """Pause, then run exactly one ``iterate()``: one step and the events around it."""
        trainer = self.trainer
        if trainer.is_finished or self.error is not None:
            return
        trainer.pause()
        trainer.resume()
        try:
            self._guard("step", trainer.iterate)
        finally:
            trainer.pause()
        self.refresh()

    def stop(self) -> None:
        """End the run now: ``post_epoch`` (if an epoch is open) and ``post_training(status="stopped")``."""
        if self.started and not self.trainer.is_finished and self.error is None:
            self._guard("stop", self.trainer.stop)
            self.message = f"stopped at iteration {self.trainer.state.iteration}"
        self.refresh()

    def save(self) -> None:
        """Ask the checkpointer(s) to save now (between two steps)."""
        trainer = self.trainer
        if not trainer.servers("checkpoint"):
            self.message = "no checkpointer: enable one (callbacks.checkpointer) to save from here"
        elif self._guard("save", trainer.request_checkpoint):
            saved = trainer.state.last_checkpoint
            where = f": {saved.path}" if saved is not None else ""
            self.message = f"checkpoint saved at iteration {trainer.state.iteration}{where}"
        self.refresh()

    def toggle(self, callback: Callback, enabled: bool) -> None:
        """Enable or disable every bus handler of ``callback`` (from its next event on)."""
        for handle in self.trainer.handles_of(callback):
            handle.enabled = enabled
        self.message = f"{callback.state_key} {'enabled' if enabled else 'disabled'}"
        self.refresh()

    def _toggled(self, callback: Callback, variable: tk.BooleanVar) -> None:
        self.toggle(callback, variable.get())

    def advance(self, seconds: float) -> None:
        """One tick's training: ``run_for(seconds)`` (at least one step)."""
        self._guard("training", lambda: self.trainer.run_for(seconds))

    def finish(self) -> None:
        """The window is closing: end a started run cleanly (``post_training`` fires once; the checkpointer saves)."""
        if self.started and not self.trainer.is_finished and self.error is None:
            self._guard("stop", self.trainer.stop)

    def _guard(self, action: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn``; an error ends this panel's run (the trainer already emitted ``exception`` and
        ``post_training(status="failed")``) and is shown instead of escaping into Tk's event loop."""
        started = self.trainer.phase is not Phase.IDLE
        try:
            fn()
        except (RunDirectoryBusy, CheckpointError) as exc:
            self.error = exc
            if started:  # a failed save or a peer's refusal mid-run: a failure like any other
                self._failed(action, exc)
            else:  # refused as the run started (its directory is another run's): nothing ran, no traceback helps
                self.message = f"{action} refused: {exc}"
                _log.error("%s: %s refused: %s", self.title, action, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - shown in the panel and logged with its traceback
            self.error = exc
            self._failed(action, exc)
            return False
        return True

    def _failed(self, action: str, exc: BaseException) -> None:
        self.message = f"{action} failed at iteration {self.trainer.state.iteration}: {type(exc).__name__}: {exc}"
        _log.exception("%s: %s failed", self.title, action)

    # ------------------------------------------------------------------ display
    def refresh(self) -> None:
        trainer = self.trainer
        state = trainer.state
        self._update_rate(state.iteration)
        phase = "failed" if self.error is not None else _phase_text(trainer)
        self.counters.configure(
            text=f"epoch {state.epoch}/{state.max_epochs}  iteration {state.iteration:,} "
            f"({state.epoch_iteration}/{state.iterations_per_epoch})  {self._rate:6.1f} it/s  {phase}"
        )
        self.metrics.configure(text=_metrics_text(state.metrics))
        finished = trainer.is_finished or self.error is not None
        self.start_button.configure(
            text="Pause" if self.running and self.started else "Start", state="disabled" if finished else "normal"
        )
        self.step_button.configure(state="disabled" if finished else "normal")
        self.stop_button.configure(state="normal" if self.started and not finished else "disabled")
        self.save_button.configure(state="normal" if self.started and trainer.servers("checkpoint") else "disabled")
        self.status.configure(text=self.message, foreground="#b00000" if self.error is not None else "")
        for callback, variable, _ in self.toggles.values():
            enabled = _enabled(trainer, callback)
            if variable.get() != enabled:
                variable.set(enabled)
        preview = self.preview
        if preview is not None and preview.version != self._version:
            self._version = preview.version
            frame = preview.frame
            self.target_view.show(preview.target)
            caption = None if frame is None else f"reconstruction, iteration {frame.iteration:,}"
            self.render_view.show(frame, caption)
            self.curve.draw(preview.history)

    def _update_rate(self, iteration: int) -> None:
        now = time.perf_counter()
        mark = self._rate_mark
        if mark is None or iteration < mark[1]:
            self._rate_mark = (now, iteration)
        elif now - mark[0] >= 1.0:
            self._rate = (iteration - mark[1]) / (now - mark[0])
            self._rate_mark = (now, iteration)


def _find_preview(trainer: BaseTrainer) -> Preview | None:
    from callbacks.preview import Preview

    return next((cb for cb in trainer.callbacks if isinstance(cb, Preview)), None)


def _enabled(trainer: BaseTrainer, callback: Callback) -> bool:
    handles = trainer.handles_of(callback)
    return all(handle.enabled for handle in handles) if handles else True


def _phase_text(trainer: BaseTrainer) -> str:
    if trainer.is_finished:
        return str(trainer.status.value) if trainer.status is not None else "done"
    if trainer.phase is Phase.IDLE:
        return "ready"
    return "paused" if trainer.is_paused else "training"


def _metrics_text(metrics: dict[str, Any], limit: int = 12) -> str:
    """The published numbers, e.g. ``val/psnr 31.42  lr 0.00333``; strings (paths) are left out."""
    shown = [f"{key} {value:.4g}" for key, value in sorted(numbers(metrics).items())]
    return "  ".join(shown[:limit])
