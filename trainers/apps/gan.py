"""A small GAN: a generator learns a ring of eight 2-D Gaussians against a discriminator, two named optimizers.

``gan_trainer`` is the factory behind ``trainer: {name: gan}`` (``trainers/apps/configs/gan.yaml``). It shows a
trainer that orders its own updates: :meth:`GANTrainer.optimization_step` steps the discriminator, then the
generator, through ``backward(loss, optimizer=...)`` and ``optimizer_step(name)``, so precision, accumulation,
several ranks and the ``step`` event per optimizer come from the engine.

Each dataset item is a real point *and* the generator's noise for it, so the noise is part of the data order: a
resumed run (or a run on two ranks) draws exactly the noise a straight one does. ``validate()`` measures what the
GAN literature does for this mixture: how many of the eight modes the generator covers and the fraction of its
samples near a mode ("high quality": within three standard deviations), plus an image of the samples' density.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

from trainers.apps.checks import check_counts
from trainers.apps.threads import apply_threads
from trainers.engine.optimization import Precision
from trainers.engine.trainer import BaseTrainer

__all__ = ["GAN", "GANTrainer", "gan_trainer", "ring_centres"]

MODES, RADIUS, STD = 8, 2.0, 0.05


def ring_centres() -> torch.Tensor:
    """The mixture's ``(8, 2)`` mode centres on a circle of radius 2."""
    angles = torch.arange(MODES, dtype=torch.float32) * (2 * math.pi / MODES)
    return RADIUS * torch.stack([angles.cos(), angles.sin()], -1)


def _mlp(inputs: int, hidden: int, outputs: int, activation: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), activation(), nn.Linear(hidden, hidden), activation(), nn.Linear(hidden, outputs)
    )


class GAN(nn.Module):
    """The pipeline: ``generator`` (noise -> point) and ``discriminator`` (point -> logit), one state dict."""

    def __init__(self, latent: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.latent = latent
        self.generator = _mlp(latent, hidden, 2, nn.ReLU)
        self.discriminator = _mlp(2, hidden, 1, nn.LeakyReLU)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise)  # type: ignore[no-any-return]


class GANTrainer(BaseTrainer):
    """The non-saturating GAN update: the discriminator's step, then the generator's against the updated one."""

    pipeline: GAN

    def __init__(self, *args: Any, held_out: torch.Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_out = held_out

    def optimization_step(self, batch: Any) -> dict[str, Any]:
        real, noise = batch
        generator, discriminator = self.pipeline.generator, self.pipeline.discriminator
        fake = generator(noise)
        real_logits, fake_logits = discriminator(real), discriminator(fake.detach())
        d_loss = functional.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + functional.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self.backward(d_loss, optimizer="discriminator")
        self.optimizer_step("discriminator")
        logits = discriminator(fake)
        g_loss = functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        self.backward(g_loss, optimizer="generator")
        self.optimizer_step("generator")
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        samples = self.pipeline.generator(self._held_out.to(self.device)).float().cpu()
        return {**mode_metrics(samples), "images": {"samples": density_image(samples)}}


def mode_metrics(samples: torch.Tensor) -> dict[str, float]:
    """``modes``: how many centres have at least 1% of the samples (and at least one) within 3 std;
    ``quality``: the fraction of samples within 3 std of their nearest centre."""
    distance, nearest = torch.cdist(samples, ring_centres()).min(dim=1)
    good = distance < 3 * STD
    counts = torch.bincount(nearest[good], minlength=MODES)
    needed = max(1, math.ceil(0.01 * len(samples)))
    return {"modes": float((counts >= needed).sum()), "quality": float(good.float().mean())}


def density_image(samples: torch.Tensor, size: int = 64) -> torch.Tensor:
    """The samples' density over [-3, 3]^2 as a ``(size, size, 3)`` image (white: many samples)."""
    histogram = torch.histogramdd(samples, bins=[size, size], range=[-3.0, 3.0, -3.0, 3.0]).hist
    level = (histogram / histogram.max().clamp(min=1)).sqrt().T.flip(0)
    return level.unsqueeze(-1).expand(size, size, 3).contiguous()


def _default_optimizers() -> dict[str, Any]:
    def adam(part: str) -> Any:
        return lambda pipeline: torch.optim.Adam(pipeline.get_submodule(part).parameters(), lr=1e-3, betas=(0.5, 0.9))

    return {"discriminator": adam("discriminator"), "generator": adam("generator")}


def gan_trainer(
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_epochs: int = 40,
    batch_size: int = 128,
    samples: int = 8192,
    latent: int = 4,
    optimizers: Mapping[str, Any] | None = None,
    precision: Precision = "32",
    accumulate: int = 1,
    threads: int | Literal["auto"] | None = 1,
) -> GANTrainer:
    """The GAN app: ``samples`` points of the eight-Gaussian ring, each with its noise vector of size ``latent``.

    ``optimizers`` maps ``discriminator`` and ``generator`` to optimizers or factories ``pipeline -> optimizer``
    (default: Adam, lr 1e-3, betas (0.5, 0.9), over each part). ``precision`` and ``accumulate`` are
    ``BaseTrainer``'s. ``threads`` is torch's thread count (``auto``: see ``trainers.apps.threads``; ``None``: torch's
    setting, left alone); 1 by default, as these small layers step fastest on one thread.
    """
    check_counts(samples=samples, latent=latent)
    apply_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randint(MODES, (samples,), generator=generator)
    real = ring_centres()[modes] + STD * torch.randn(samples, 2, generator=generator)
    noise = torch.randn(samples, latent, generator=generator)
    held_out = torch.randn(2048, latent, generator=generator)
    torch.manual_seed(seed)
    return GANTrainer(
        GAN(latent),
        TensorDataset(real, noise),
        held_out=held_out,
        max_epochs=max_epochs,
        batch_size=batch_size,
        seed=seed,
        device="cpu",
        optimizer=dict(optimizers) if optimizers is not None else _default_optimizers(),
        run_dir=run_dir,
        precision=precision,
        accumulate=accumulate,
    )
