"""``Validator``: runs validation on a schedule, on request and at the end, and tracks the best value of each metric.

Events used: its schedule's event (``post_epoch`` for ``"1ep"``, except after an epoch cut short by a stop or an
interrupt; ``post_step`` for ``"500it"`` or ``"10min"``), ``post_training`` (``at_end``), ``pre_training``
(republishes its values after a resume), and requests: ``"validation"`` (``trainer.request_validation()``, every
validator) and ``"validation:<prefix>"`` / ``"validation:<state_key>"`` (``trainer.request_validation(name)``, this
one). It emits ``pre_validation(validator, reason, prefix)`` and ``post_validation(metrics, best, improved, images,
image_paths, validator, reason, seconds, prefix)`` through the trainer: ``metrics`` and ``best`` hold only this
validation's values, so loggers write each validator's values at its own runs and nowhere else.

Publishes in ``trainer.state.metrics``: ``<prefix>/<name>`` for each metric (``val/psnr``) and the best value so
far as ``best/<name>`` (``best/<prefix>/<name>`` when the prefix is not ``val``; see ``callbacks.validation_names``).
Early stopping and the checkpointer read these; the Validator never talks to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from callbacks.helpers import parse_schedule, periodic_event
from callbacks.images import write_png
from callbacks.metrics import Mode, improves
from callbacks.reductions import pack, unpack
from callbacks.validation_names import best_key, check_prefix, metric_key, request_kind
from callbacks.validation_ranks import check_ranks, evaluate_everywhere
from callbacks.validation_results import Collected, collect, finished
from callbacks.validation_sharding import ValidationShard
from callbacks.validation_torchmetrics import Found, check_metrics, compute, direction, publishable, reset
from lifecycle import Callback, Event, HandlerSpec, Priority, ScheduleSpec, Status

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.validation_torchmetrics import Metrics
    from trainers.engine.trainer import BaseTrainer

__all__ = ["ValidateFn", "Validator"]

_log = logging.getLogger("stepbus.validator")

#: ``fn(trainer) -> {"psnr": ..., "images": {...}}``: what a validator computes when the trainer's ``validate()``
#: is not the source; ``fn(trainer, metrics)`` (which may return ``None``) for a validator given ``metrics=``.
ValidateFn = Callable[..., "Mapping[str, Any] | None"]


class Validator(Callback):
    """Validate on a schedule, on ``trainer.request_validation()``, and at the end of training.

    Each run puts the pipeline in eval mode under ``torch.no_grad()``, calls ``fn(trainer)`` (default: the
    trainer's ``validate()``), restores every module's previous train/eval flag, and restores the torch, CUDA,
    ``random`` and numpy RNG states: validating -- or not, or one extra time from a GUI -- never changes how
    training continues. At most one validation per iteration: a scheduled run and ``at_end`` at the same
    iteration validate once.

    The result maps metric names to numbers (or one-element tensors), or to sums and counts the ranks add up
    (``Mean(total, count)``, ``Sum(value)``, ``Mean(...).then(fn)``: ``callbacks.reductions``). Each metric needs
    a direction to track its best value: ``psnr``/``ssim`` are ``max``, ``loss``/``mse``/``lpips`` are ``min``;
    declare others with ``modes={"acc": "max"}`` (an undeclared unknown metric is an error). An optional
    ``"images"`` entry maps names to ``HxWxC`` (or ``HxW``) tensors, float in [0, 1] or uint8: they are written as
    ``<image_dir>/<name>-<iteration>.png`` and handed to loggers in the ``post_validation`` payload. A validation
    may produce only images (a render every few epochs beside the metrics): then nothing is published.

    An epoch schedule validates at the end of an epoch, so it does not fire on the ``post_epoch`` of an epoch that
    a stop or an interrupt cut short (fewer than ``state.iterations_per_epoch`` steps were taken). After Ctrl-C
    the interrupt checkpoint is already written by then: a validation there would publish values -- a new best --
    that no checkpoint holds, and make every interrupt wait for a full validation. A stopped run still validates
    at its end (``at_end``), before the checkpointer's end save; a stop or an interrupt after an epoch's last step
    leaves that epoch whole, and it is validated as usual.

    Several validators on one trainer need distinct prefixes and state keys (``Validator(fn=render, prefix=
    "render", state_key="render", every="2ep")`` beside the default one): each publishes under its prefix, and
    ``trainer.request_validation("render")`` -- by prefix or state key -- runs only that one, while
    ``request_validation()`` runs them all. A name another validator already answers to is refused when the
    validator is added.

    torchmetrics metrics may stand for numbers (``docs/torchmetrics.md``): a ``Metric`` or ``MetricCollection``
    the validation updated, returned as a value (``{"acc": self.val_acc}``) or given as ``metrics=`` and updated
    by ``fn(trainer, metrics)``. The validator calls ``compute()`` -- a dict-valued one publishes ``<name>/<key>``
    -- and ``reset()`` after every validation, failed ones included; the direction is the metric's
    ``higher_is_better`` unless ``modes`` names it.

    ``ranks="all"`` validates on every rank: each evaluates its shard (``validation_shard(trainer)``), the ranks
    add their sums and counts with one ``all_reduce`` and ``compute()`` combines their metrics' states, so every
    rank publishes the values of the whole set (``docs/validation.md``). A model whose parameters are sharded over
    the ranks (``strategy="fsdp"``) can only be validated so: every forward is a collective.

    Args:
        fn: what to compute; ``None`` uses ``trainer.validate()``. With ``metrics``, ``fn(trainer, metrics)``
            updates them and returns ``None`` or a dict of further values (and ``"images"``).
        metrics: torchmetrics metrics by name (or one ``MetricCollection``: its keys are the names), moved to the
            trainer's device at setup; never in a checkpoint.
        every: schedule of automatic validation (``"1ep"``, ``"500it"``, ``"10min"`` ...); ``None`` for only on
            request and at the end.
        at_end: also validate when training completes or is stopped (not when it fails or is interrupted), unless
            it already did at that iteration.
        modes: directions of metrics the built-in table does not know; they override a metric's
            ``higher_is_better``.
        ranks: ``"zero"``: rank 0 validates and the other ranks get its values; ``"all"``: every rank validates
            its shard into sums and counts or torchmetrics metrics (plain numbers are refused). The same in a
            single process. ``"all"`` is required under FSDP.
        prefix: namespace of the published metrics (``"val"``; e.g. ``"render"`` for a second validator, which then
            also needs its own ``state_key``); not ``best``.
        image_dir: where images go; default ``<trainer.run_dir>/<prefix>``, or nowhere when the trainer has no
            ``run_dir``. ``save_images=False`` never writes files (loggers still get the images).
    """

    priority = Priority.VALIDATION

    def __init__(
        self,
        fn: ValidateFn | None = None,
        *,
        metrics: Metrics | None = None,
        every: ScheduleSpec = "1ep",
        at_end: bool = True,
        modes: Mapping[str, Mode] | None = None,
        ranks: Literal["zero", "all"] = "zero",
        prefix: str = "val",
        image_dir: str | Path | None = None,
        save_images: bool = True,
        priority: int | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__(priority=priority, state_key=state_key)
        name = self.state_key
        call = "fn(trainer) -> dict" if metrics is None else "fn(trainer, metrics) -> dict or None"
        if fn is not None and not callable(fn):
            raise TypeError(f"Validator {name!r}: fn must be callable as {call}, got {fn!r}")
        self._given = {} if metrics is None else check_metrics(metrics, fn, f"Validator {name!r}")
        check_ranks(ranks, f"Validator {name!r}")
        check_prefix(prefix, f"Validator {name!r}")
        if any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(
                f"Validator {name!r}: prefix {prefix!r} has an empty, '.' or '..' part; its images go to "
                "<run_dir>/<prefix>, which must be a folder inside the run directory"
            )
        for metric, mode in (modes or {}).items():
            if mode not in ("min", "max"):
                raise ValueError(f"Validator {name!r}: modes[{metric!r}] must be 'min' or 'max', got {mode!r}")
        self.fn = fn
        self.metrics = metrics
        self.ranks = ranks
        #: the metric objects reset after each validation: those given and those the results held
        self._known: list[Any] = list(self._given.values())
        self.every = every
        self._schedule = None if every is None else parse_schedule(every, f"Validator {name!r}")
        if self._schedule is not None and self._schedule.always:
            raise ValueError(f"Validator {name!r}: every={every!r} would validate at every event; give a period")
        self.at_end = bool(at_end)
        self.modes: dict[str, Mode] = dict(modes or {})
        self.prefix = prefix
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.save_images = bool(save_images)
        #: latest value of each metric (unprefixed name -> value)
        self.last: dict[str, float] = {}
        #: best value of each metric and the iteration it was reached at
        self.best: dict[str, tuple[float, int]] = {}
        #: number of validations run
        self.count = 0
        self._last_iteration = -1
        self._stop_serving: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ names
    def metric_key(self, name: str) -> str:
        """``val/psnr``: where the latest value of ``name`` is published."""
        return metric_key(self.prefix, name)

    def best_key(self, name: str) -> str:
        """``best/psnr`` (``best/test/psnr`` for another prefix): where the best value of ``name`` is published."""
        return best_key(self.prefix, name)

    @property
    def names(self) -> tuple[str, ...]:
        """What ``trainer.request_validation(name)`` accepts for this validator: its prefix and its state key."""
        return tuple(dict.fromkeys((self.prefix, self.state_key)))

    # ------------------------------------------------------------------ wiring
    def handlers(self) -> Iterator[HandlerSpec]:
        yield Event.PRE_TRAINING, self._republish, None
        if self._schedule is not None:
            event = periodic_event(self._schedule)
            handler = self._on_epoch_schedule if event is Event.POST_EPOCH else self._on_schedule
            yield event, handler, self._schedule
        if self.at_end:
            yield Event.POST_TRAINING, self._on_end, None

    def setup(self, trainer: BaseTrainer) -> None:
        if self.fn is None and not trainer.defines_validate:
            raise TypeError(
                f"Validator {self.state_key!r}: {type(trainer).__name__} does not override validate(); override "
                "validate(self) -> dict of metrics in the trainer, or pass Validator(fn=lambda trainer: {...})"
            )
        if trainer.sharded and self.ranks == "zero":
            raise ValueError(
                f"Validator {self.state_key!r}: ranks='zero' cannot validate under strategy='fsdp': the parameters "
                "are sharded over the ranks, so rank 0 alone cannot run the model (every forward is a collective); "
                "use ranks='all', every rank validating its shard into sums and counts (callbacks.Mean, "
                "callbacks.Sum) or torchmetrics metrics"
            )
        kinds = [request_kind(name) for name in self.names]
        for name, kind in zip(self.names, kinds, strict=True):
            taken = trainer.servers(kind)
            if taken:  # two validators under one name would publish into the same keys, or run on one request
                raise ValueError(
                    f"Validator {self.state_key!r}: the name {name!r} (its prefix or state_key) is already taken by "
                    f"{', '.join(taken)}; give each validator its own prefix and state_key"
                )
        for metric in self._given.values():
            metric.to(trainer.device)  # where the pipeline's outputs are, as torchmetrics needs
        server = f"{self.state_key}.validation"
        self._stop_serving = [trainer.serve(kind, self._on_request, name=server) for kind in ["validation", *kinds]]

    def teardown(self, trainer: BaseTrainer) -> None:
        for stop in self._stop_serving:
            stop()
        self._stop_serving = []

    def _on_schedule(self, trainer: BaseTrainer, **_: Any) -> None:
        self.run(trainer, reason="schedule")

    def _on_epoch_schedule(self, trainer: BaseTrainer, **_: Any) -> None:
        state = trainer.state
        if state.epoch_iteration < state.iterations_per_epoch:
            _log.info(
                "Validator %r: epoch %d was cut short at step %d/%d (%s); not validating on its post_epoch",
                self.state_key,
                state.epoch,
                state.epoch_iteration,
                state.iterations_per_epoch,
                "interrupted" if trainer.interrupted_by is not None else "stopped",
            )
            return
        self.run(trainer, reason="schedule")

    def _on_request(self, trainer: BaseTrainer) -> None:
        self.run(trainer, reason="request")

    def _on_end(self, trainer: BaseTrainer, *, status: Status, **_: Any) -> None:
        if status in (Status.COMPLETED, Status.STOPPED):
            self.run(trainer, reason="end")

    def _republish(self, trainer: BaseTrainer, **_: Any) -> None:
        metrics = trainer.state.metrics
        for name, value in self.last.items():
            metrics[self.metric_key(name)] = value
        for name, (value, _iteration) in self.best.items():
            metrics[self.best_key(name)] = value

    # ------------------------------------------------------------------ the run
    def run(self, trainer: BaseTrainer, *, reason: str = "manual", force: bool = False) -> dict[str, float] | None:
        """Validate now; return the published ``{"<prefix>/<name>": value}`` (empty for a validation that produced
        only images), or ``None`` when this validator already validated at the current iteration (``force=True``
        validates anyway)."""
        state = trainer.state
        if not force and self._last_iteration == state.iteration:
            return None
        trainer.pre_validation(validator=self.state_key, reason=reason, prefix=self.prefix)
        started = time.perf_counter()
        owner = f"Validator {self.state_key!r}"
        evaluate = self._evaluate_everywhere if self.ranks == "all" else self._evaluate_on_rank_zero
        values, found, images = evaluate(trainer)
        seconds = time.perf_counter() - started
        modes = {name: direction(name, found.get(name), self.modes, owner) for name in values}
        published: dict[str, float] = {}
        best: dict[str, float] = {}
        improved: list[str] = []
        metrics = state.metrics
        for name, value in values.items():
            key = self.metric_key(name)
            metrics[key] = published[key] = value
            self.last[name] = value
            previous = self.best.get(name)
            if improves(value, None if previous is None else previous[0], modes[name]):
                self.best[name] = (value, state.iteration)
                improved.append(key)
            if name in self.best:
                metrics[self.best_key(name)] = best[self.best_key(name)] = self.best[name][0]
        self.count += 1
        self._last_iteration = state.iteration  # only a validation that got this far counts as done
        paths = self._write_images(images, trainer)
        trainer.post_validation(
            published,
            best=best,
            improved=tuple(improved),
            images=images,
            image_paths=paths,
            validator=self.state_key,
            reason=reason,
            seconds=seconds,
            prefix=self.prefix,
        )
        return published

    def _collect(self, trainer: BaseTrainer) -> Collected:
        """Run the validation; its result checked and sorted (``callbacks.validation_results``), with the images
        on rank 0 only."""
        return collect(
            self._compute(trainer),
            given=self._given,
            known=self._known,
            everywhere=self.ranks == "all",
            owner=f"Validator {self.state_key!r}",
            source=self._source(trainer),
            with_images=trainer.is_global_zero,
        )

    def _evaluate_on_rank_zero(self, trainer: BaseTrainer) -> tuple[dict[str, float], Found, dict[str, torch.Tensor]]:
        """The validation in one process. In a distributed run rank 0 validates (the ranks hold the same weights),
        computes its metrics from its own states, and broadcasts the values, so every rank publishes the same
        ``val/*`` values and early stopping decides the same everywhere. Only rank 0 has the images (and writes
        them). A failure on rank 0 is raised on every rank."""
        images: dict[str, torch.Tensor] = {}

        def evaluate() -> tuple[dict[str, float], Found]:
            reset(self._known)  # also what was updated between validations
            try:
                collected, owner = self._collect(trainer), f"Validator {self.state_key!r}"
                summed = unpack(collected.reductions, pack(collected.reductions, trainer.device), owner)  # one rank
                computed = {name: compute(metric, sync=False) for name, metric in collected.metrics.items()}
                images.update(collected.images)
                return publishable(finished(collected.values, summed), collected.metrics, computed, owner)
            finally:
                reset(self._known)

        values, directions = trainer.on_rank_zero(
            evaluate,
            elsewhere=lambda failure: RuntimeError(
                f"Validator {self.state_key!r}: validation failed on rank 0: {failure}"
            ),
        )
        return dict(values), dict(directions), images

    def _evaluate_everywhere(self, trainer: BaseTrainer) -> tuple[dict[str, float], Found, dict[str, torch.Tensor]]:
        """``ranks="all"``: every rank validates its shard (``callbacks.validation_sharding``), the ranks add their
        sums and counts and ``compute()`` combines their metrics' states (``callbacks.validation_ranks``); the
        images come from rank 0."""
        reset(self._known)
        try:
            with ValidationShard.of(trainer).sharded(trainer.rank, trainer.world_size):
                return evaluate_everywhere(trainer, lambda: self._collect(trainer), f"Validator {self.state_key!r}")
        finally:
            reset(self._known)

    def _source(self, trainer: BaseTrainer) -> str:
        return f"{type(trainer).__name__}.validate()" if self.fn is None else f"its fn {self.fn!r}"

    def _compute(self, trainer: BaseTrainer) -> Any:
        # eval mode under no_grad; every module's train flag and the RNG states put back after (trainer.inference)
        with trainer.inference():
            if self.fn is None:
                return trainer.validate()
            return self.fn(trainer, self.metrics) if self.metrics is not None else self.fn(trainer)

    def _write_images(self, images: Mapping[str, torch.Tensor], trainer: BaseTrainer) -> dict[str, Path]:
        if not images or not self.save_images:
            return {}
        folder = self.image_dir
        if folder is None:
            if trainer.run_dir is None:
                return {}
            folder = trainer.run_dir / self.prefix
        iteration = trainer.state.iteration
        return {name: write_png(folder / f"{name}-{iteration:08d}.png", image) for name, image in images.items()}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "last": dict(self.last),
            "best": {name: [value, iteration] for name, (value, iteration) in self.best.items()},
            "count": self.count,
            "last_iteration": self._last_iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            last = {str(k): float(v) for k, v in state["last"].items()}
            best = {str(k): (float(v[0]), int(v[1])) for k, v in state["best"].items()}
            count, last_iteration = int(state["count"]), int(state["last_iteration"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(
                f"Validator {self.state_key!r}: not a Validator state dict (expected keys last, best, count, "
                f"last_iteration): {type(exc).__name__}: {exc}"
            ) from None
        self.last, self.best, self.count, self._last_iteration = last, best, count, last_iteration

    def __repr__(self) -> str:
        best = {k: v for k, (v, _) in self.best.items()}
        return f"<Validator state_key={self.state_key!r} every={self.every!r} count={self.count} best={best}>"
