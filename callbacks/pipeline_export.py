"""``PipelineExport``: the trained pipeline alone, as a file to load for inference or as pretrained weights.

A checkpoint is a whole training state (optimizer, RNG, counters, callbacks) made for resuming, and the
Checkpointer's retention deletes its older files. An export is what another program loads: the pipeline's
``state_dict()`` (``format="state_dict"``, the default) or the whole module (``format="full"``). It has its own
files, which no checkpoint retention ever deletes.

Events used: the periodic event of its schedule (``post_step`` or ``post_epoch``; a step schedule that falls on an
epoch's last step exports after that epoch's ``post_epoch``, once everything that epoch does is done),
``post_training`` (``at_end``: completed or stopped; always written, as the run's final word) and ``pre_training``
(removes temporary files a killed process left). It serves ``"export"`` requests -- ``trainer.request("export")``
from a GUI button or a handler, and ``"export:<state_key>"`` for this instance alone -- at once between steps, else
at the next safe point.

Formats:

* ``"state_dict"``: ``pipeline.state_dict()`` with its tensors on the CPU, tensors and plain containers only (an
  ``extra_state`` object is refused when writing), so it loads anywhere with ``torch.load(path,
  weights_only=True)`` (which cannot run code) and then ``load_state_dict(strict=True)`` into a freshly built
  pipeline. The safe default.
* ``"full"``: ``torch.save(pipeline)``, the module pickled, on its device. Loading it needs
  ``torch.load(path, weights_only=False)`` -- which runs whatever the file's pickle says, so load only files you
  trust -- and the pipeline's class importable where it is loaded, under the module path it had when saved.

Each file is written to a temporary name beside it, flushed, fsynced and renamed (``trainers.checkpoint.atomic``):
a reader sees the previous file or the new one, never a partial one, and a failed write leaves the previous file
intact. The weights written are those that serve ``"export"`` (:mod:`callbacks.weights`): an ``EMA``'s average
when one serves it (its default), else the training weights, which are back bit for bit afterwards.

The path is relative to the run directory (``model.pth`` by default) and must stay inside it; the file name may
hold ``{iteration}`` and ``{epoch}`` (``"exports/model-{iteration:08d}.pth"`` keeps every export; a fixed name
keeps the newest). In a distributed run every rank runs it (the schedule fires at the same iteration on each) and
rank 0 writes (with ``strategy="fsdp"`` the state is first gathered from the ranks' shards, a collective); a failure
is reported on every rank (``trainer.on_rank_zero``), so a request must then be made on
every rank, like ``trainer.request_checkpoint()``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import string
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

import torch

from callbacks.helpers import parse_schedule, periodic_event
from callbacks.weights import EvaluationWeights
from lifecycle import Callback, Event, HandlerSpec, Priority, Schedule, ScheduleSpec, Status
from trainers.checkpoint.atomic import atomic_write, remove_dead_temporaries
from trainers.checkpoint.format import STEP_FILE, check_plain

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from trainers.distributed.collective import RankZeroFailure
    from trainers.engine.trainer import BaseTrainer

__all__ = ["ExportError", "PipelineExport"]

_log = logging.getLogger("stepbus.pipeline_export")
#: the placeholders a file name may hold
_FIELDS = ("iteration", "epoch")


class ExportError(RuntimeError):
    """An export that could not be written; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"pipeline export {self.path}: {reason}")


class PipelineExport(Callback):
    """Write the pipeline alone (its state_dict or the whole module) atomically, on a schedule and at the end.

    The files lie in the run directory, and no checkpoint retention deletes them.

    Args:
        path: the file, relative to ``trainer.run_dir`` (an absolute path must lie inside it); its name may hold
            ``{iteration}`` and ``{epoch}`` (``"exports/model-{iteration:08d}.pth"``).
        every: a schedule (``"1ep"``, ``"500it"``, ``"10min"``, ``at=[...]``), or ``None`` (default) for none.
        at_end: export when the run completes or is stopped.
        format: ``"state_dict"`` (default: loads with ``torch.load(path, weights_only=True)``) or ``"full"`` (the
            pickled module: loading needs ``weights_only=False`` and its class importable).
        on_error: ``"raise"`` (default: a failed write fails the run; the previous file is intact) or ``"warn"``
            (log it, count it in :attr:`failures`, keep training).
    """

    priority = Priority.CHECKPOINT  # after everything that changes the weights or buffers at the same event

    def __init__(
        self,
        path: str | os.PathLike[str] = "model.pth",
        *,
        every: ScheduleSpec = None,
        at_end: bool = True,
        format: Literal["state_dict", "full"] = "state_dict",
        on_error: Literal["raise", "warn"] = "raise",
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = f"PipelineExport {self.state_key!r}"
        self._schedule: Schedule | None = None if every is None else parse_schedule(every, name)
        if not isinstance(at_end, bool):
            raise ValueError(f"{name}: at_end must be true or false, got {at_end!r}")
        if format not in ("state_dict", "full"):
            raise ValueError(f"{name}: format must be 'state_dict' or 'full', got {format!r}")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"{name}: on_error must be 'raise' or 'warn', got {on_error!r}")
        self.template = _checked_template(path, name)
        self.at_end, self.format, self.on_error = at_end, format, on_error
        self._root: Path | None = None  # the run directory, known once added to a trainer
        self._due = False  # a step-schedule export fell on an epoch's last step: written after post_epoch
        self._unserve: list[Callable[[], None]] = []
        #: the newest file written (on every rank of a distributed run), once there is one
        self.last_path: Path | None = None
        #: writes that failed under ``on_error="warn"``
        self.failures = 0

    # ------------------------------------------------------------------ wiring
    def handlers(self) -> Iterator[HandlerSpec]:
        yield Event.PRE_TRAINING, self.pre_training, None
        if self._schedule is not None:
            event = periodic_event(self._schedule)
            yield event, self._on_schedule, self._schedule
            if event is Event.POST_STEP:
                yield Event.POST_EPOCH, self._after_epoch, None
        yield Event.POST_TRAINING, self.post_training, None

    def setup(self, trainer: BaseTrainer) -> None:
        name = f"PipelineExport {self.state_key!r}"
        if trainer.run_dir is None:
            raise ValueError(
                f"{name} writes inside the run directory: give the trainer run_dir=... (it then writes to "
                f"<run_dir>/{self.template})"
            )
        if trainer.sharded and self.format == "full":
            raise ValueError(
                f"{name}: format='full' pickles the module, and with strategy='fsdp' each rank's module holds only "
                "its shard; use format='state_dict' (the whole state, gathered from the ranks)"
            )
        root = trainer.run_dir
        first = root / _formatted(self.template, 0, 0)
        if not _inside(root, first):
            raise ValueError(
                f"{name}: path {str(self.template)!r} escapes the run directory {root} (it resolves to "
                f"{first.resolve()}); give a path inside it, such as 'model.pth' or "
                "'exports/model-{iteration:08d}.pth'"
            )
        self._root = root
        self._unserve = [
            trainer.serve("export", self._on_request, name=f"{self.state_key}.request"),
            trainer.serve(f"export:{self.state_key}", self._on_request, name=f"{self.state_key}.request"),
        ]

    def teardown(self, trainer: BaseTrainer) -> None:
        for remove in self._unserve:
            remove()
        self._unserve = []

    # ------------------------------------------------------------------ events
    def pre_training(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.is_global_zero:
            self._remove_temporaries()

    def _on_schedule(self, trainer: BaseTrainer, **payload: Any) -> None:
        if trainer.post_epoch_pending:
            self._due = True  # the epoch's post_epoch (its pruning, its LR step) still belongs to this iteration
            return
        self._export(trainer, "schedule")

    def _after_epoch(self, trainer: BaseTrainer, **payload: Any) -> None:
        if self._due:
            self._due = False
            self._export(trainer, "schedule")

    def _on_request(self, trainer: BaseTrainer) -> None:
        self._export(trainer, "request")

    def post_training(self, trainer: BaseTrainer, *, status: Status, **payload: Any) -> None:
        self._due = False
        if self.at_end and (status is Status.COMPLETED or status is Status.STOPPED):
            self._export(trainer, f"end ({status})")

    # ------------------------------------------------------------------ exporting
    def export(self, trainer: BaseTrainer) -> Path | None:
        """Export now (between ``iterate()`` calls, e.g. from a script); returns the file, or ``None`` when the
        write failed under ``on_error="warn"``."""
        return self._export(trainer, "manual")

    def path_at(self, iteration: int, epoch: int) -> Path:
        """The file an export at ``iteration`` (in ``epoch``) writes."""
        return self._dir_root() / _formatted(self.template, iteration, epoch)

    def _export(self, trainer: BaseTrainer, reason: str) -> Path | None:
        state = trainer.state
        target = self.path_at(state.iteration, state.epoch)
        whole = trainer.full_state_dict() if trainer.sharded else None  # gathered from the shards: every rank

        def write() -> str | None:  # rank 0 only; its outcome is every rank's
            try:
                self._write(trainer, target, whole)
            except ExportError as exc:
                if self.on_error == "raise":
                    raise
                _log.error("PipelineExport %r: %s; training goes on", self.state_key, exc)
                return str(exc)
            _log.info("PipelineExport %r: wrote %s (%s, iteration %d)", self.state_key, target, reason, state.iteration)
            return None

        failure = trainer.on_rank_zero(write, elsewhere=lambda failure: _elsewhere(target, failure))
        if failure is not None:
            self.failures += 1
            return None
        self.last_path = target
        return target

    def _write(self, trainer: BaseTrainer, target: Path, whole: dict[str, Any] | None) -> None:
        """Write the pipeline (with the weights that serve ``"export"``; ``whole``: its state gathered from the
        ranks' shards) to ``target`` atomically and durably; every failure is an :class:`ExportError` naming
        ``target``, and leaves what was there intact."""
        if not _inside(self._dir_root(), target):
            raise ExportError(target, f"not written: it lies outside the run directory {self._dir_root()}")
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ExportError(target, f"could not be written: {blocker} is a file, not a directory")
        if target.is_dir():
            raise ExportError(target, "could not be written: it is a directory; any previous file is intact")
        pipeline = trainer.pipeline
        with EvaluationWeights.of(trainer).applied("export"):  # saved inside: the state dict views the weights
            payload: object = pipeline
            if self.format == "state_dict":
                payload = _cpu_state_dict(pipeline) if whole is None else whole
                try:
                    check_plain(payload, "state_dict")  # what weights_only=True would refuse (an extra_state object)
                except TypeError as exc:
                    raise ExportError(target, f"not written: {exc}") from None
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, lambda handle: torch.save(payload, handle), durable=True)
            except Exception as exc:  # any failed write (disk, permissions, pickling) has one policy
                raise ExportError(
                    target, f"could not be written ({type(exc).__name__}: {exc}); any previous file is intact"
                ) from exc

    def _remove_temporaries(self) -> None:
        """Delete the temporary files of this export's names that a process killed mid-write left behind."""
        folder = self.path_at(0, 0).parent
        try:
            remove_dead_temporaries(folder, _final_names(self.template.name))
        except OSError as exc:
            _log.warning("PipelineExport %r: could not remove temporary files in %s: %s", self.state_key, folder, exc)

    def _dir_root(self) -> Path:
        if self._root is None:
            raise RuntimeError(f"PipelineExport {self.state_key!r} is not added to a trainer")
        return self._root


def _checked_template(path: object, name: str) -> PurePath:
    """``path`` as a template, or a ``ValueError`` saying what is wrong: empty, a folder, ``..`` leaving the run
    directory, placeholders other than ``{iteration}`` and ``{epoch}`` or outside the file name, a bad format spec,
    or the Checkpointer's own file name pattern."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name}: path must be a file name such as 'model.pth', got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip() or text.endswith(("/", os.sep)):
        raise ValueError(f"{name}: path must be a file name such as 'model.pth', got {text!r}")
    template = PurePath(text)
    if template.name in ("", ".", ".."):
        raise ValueError(f"{name}: path must name a file, got {text!r}")
    if not template.is_absolute() and os.path.normpath(text).split(os.sep)[0] == "..":
        raise ValueError(
            f"{name}: path {text!r} escapes the run directory; give a path inside it, such as 'model.pth' or "
            "'exports/model-{iteration:08d}.pth'"
        )
    if any("{" in part or "}" in part for part in template.parent.parts):
        raise ValueError(f"{name}: placeholders may only appear in the file name, got {text!r}")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template.name) if field is not None]
        bad = [field for field in fields if field not in _FIELDS]
        if bad:
            raise ValueError(f"unknown placeholder(s) {bad}")
        example = _formatted(template, 12, 3).name
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"{name}: path {text!r} is not a valid template ({exc}); the file name may hold {{iteration}} and "
            "{epoch}, with a format spec such as {iteration:08d}"
        ) from None
    if STEP_FILE.match(example):
        raise ValueError(f"{name}: path {text!r} uses the Checkpointer's file names (step-<n>.pt); choose another")
    return template


def _formatted(template: PurePath, iteration: int, epoch: int) -> PurePath:
    return template.with_name(template.name.format(iteration=iteration, epoch=epoch))


def _inside(root: Path, target: Path) -> bool:
    """Whether ``target`` lies inside ``root`` once both are resolved (``..`` and symbolic links followed)."""
    resolved = target.resolve()
    return resolved != root.resolve() and resolved.is_relative_to(root.resolve())


def _final_names(name: str) -> str:
    """A regular expression of the file names ``name`` (a template with ``{iteration}``/``{epoch}``) produces."""
    return "".join(
        re.escape(literal) + ("" if field is None else ".+?") for literal, field, _, _ in string.Formatter().parse(name)
    )


def _cpu_state_dict(pipeline: nn.Module) -> collections.OrderedDict[str, Any]:
    """``pipeline.state_dict()`` with every tensor on the CPU (a file that loads on any machine), keeping the
    version metadata ``load_state_dict`` reads. On the CPU the tensors are the pipeline's own: save them at once."""
    state = pipeline.state_dict()
    out: collections.OrderedDict[str, Any] = collections.OrderedDict(
        (key, value.detach().cpu() if isinstance(value, torch.Tensor) else value) for key, value in state.items()
    )
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _elsewhere(target: Path, failure: RankZeroFailure) -> BaseException:
    """What the other ranks raise when rank 0's write failed under ``on_error="raise"``."""
    if failure.kind == "ExportError" and failure.reason is not None:
        return ExportError(target, failure.reason)
    return ExportError(target, f"rank 0 failed: {failure}")
