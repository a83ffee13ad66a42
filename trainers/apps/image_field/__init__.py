"""The reference app: a neural field fit to an image (Wisp's image trainer, on the CPU in about a minute).

``image_field_trainer`` is the factory behind ``trainer: {name: image_field}``; the default config is
``trainers/apps/configs/image_field.yaml``. Modules: ``image`` (the built-in target and PNG loading), ``grid`` (the
multi-resolution feature grid), ``occupancy`` (the coarse occupancy grid that pruning updates), ``field`` (grid +
decoder + occupancy: forward, prune, render), ``trainer`` (``ImageFieldTrainer``: ``compute_loss`` and
``validate`` only).
"""

from __future__ import annotations

from trainers.apps.image_field.field import ImageField
from trainers.apps.image_field.trainer import ImageFieldTrainer, image_field_trainer

__all__ = ["ImageField", "ImageFieldTrainer", "image_field_trainer"]
