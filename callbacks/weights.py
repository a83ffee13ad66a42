"""``EvaluationWeights``: which weights a trainer is evaluated with, shared by the callbacks that keep other weights
than the ones being trained (``EMA``) and the code that renders or exports the pipeline (``Preview``, user code).

No built-in callback imports another, so a preview cannot ask the EMA for its average. Both meet here instead, in a
per-trainer extension (``EvaluationWeights.of(trainer)``, built on first use by ``trainer.extension``): a provider
registers a *swap* -- a context manager factory that puts its weights into the pipeline and restores the training
weights when the block ends -- for the uses it serves, and a consumer enters ``applied(use)`` around the code that
needs those weights::

    with EvaluationWeights.of(trainer).applied("export"):
        torch.save(trainer.pipeline.state_dict(), path)   # saved inside the block: the state dict's tensors are views

The uses are ``"validation"``, ``"preview"`` and ``"export"``. ``Preview`` renders inside ``applied("preview")``.
Validation needs no consumer here -- the ``EMA`` swaps its average in on the ``pre_validation`` and
``post_validation`` events a validator emits -- but the EMA registers ``"validation"`` too, so that two providers
for it are refused like any other pair. With no provider for a use, ``applied(use)`` changes nothing, so a consumer
never needs to know whether an EMA is registered. At most one provider serves each use: two sets of weights swapped
into one pipeline would overwrite each other, so a second registration for a use is refused at once (when its
callback is added), not at the first render. Nothing here runs per step; it connects no handler.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from trainers.engine.trainer import BaseTrainer

__all__ = ["USES", "EvaluationWeights", "Swap", "Use"]

#: what evaluation weights are used for: the validator's run, the live preview's render, a saved export
Use = Literal["validation", "preview", "export"]
#: every :data:`Use`, in that order
USES: tuple[Use, ...] = typing.get_args(Use)
#: a provider's swap: entering it puts the provider's weights into the pipeline, leaving it restores the training
#: weights exactly (also when the block raises)
Swap = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True, eq=False)  # each registration is its own, even of an equal swap
class _Provider:
    name: str
    swap: Swap
    uses: frozenset[Use]


class EvaluationWeights:
    """One trainer's registry of evaluation-weight providers (see the module docstring)."""

    @classmethod
    def of(cls, trainer: BaseTrainer) -> EvaluationWeights:
        """The trainer's registry, shared by every provider and consumer; created on first use."""
        return trainer.extension(cls)

    def __init__(self, trainer: BaseTrainer) -> None:
        self._providers: list[_Provider] = []

    def provide(self, name: str, swap: Swap, uses: Iterable[Use]) -> Callable[[], None]:
        """Register ``swap`` (named ``name`` in errors) for ``uses``; returns the function that unregisters it (a
        callback calls it from ``teardown``). Raises ``ValueError`` for an unknown use or a use another provider
        already serves."""
        wanted = frozenset(_checked(use) for use in uses)
        for other in self._providers:
            shared = sorted(wanted & other.uses, key=USES.index)
            if shared:
                raise ValueError(
                    f"{name} and {other.name} would both swap their weights into the pipeline for {shared}; only "
                    "one may serve each use: leave these uses out of one of them"
                )
        provider = _Provider(name, swap, wanted)
        self._providers.append(provider)

        def unregister() -> None:
            if provider in self._providers:
                self._providers.remove(provider)

        return unregister

    def provider(self, use: Use) -> str | None:
        """The name of the provider that serves ``use``, or ``None`` when the training weights are used."""
        found = self._find(_checked(use))
        return None if found is None else found.name

    @contextmanager
    def applied(self, use: Use) -> Iterator[None]:
        """The provider's weights for ``use`` in the pipeline inside the block, the training weights restored after
        it bit for bit, also when the block raises (the provider's swap guarantees it). Without a provider for
        ``use`` the block runs on the training weights. Copy or save what you read from the pipeline inside the
        block: tensors that view its parameters show the training weights again afterwards."""
        found = self._find(_checked(use))
        if found is None:
            yield
            return
        with found.swap():
            yield

    def _find(self, use: Use) -> _Provider | None:
        return next((provider for provider in self._providers if use in provider.uses), None)


def _checked(use: object) -> Use:
    """``use`` when it is one of :data:`USES`: a misspelt use must fail loudly, not quietly render the training
    weights."""
    if use not in USES:
        raise ValueError(f"EvaluationWeights: unknown use {use!r}; the uses are {list(USES)}")
    return use
