"""Callbacks: independent behaviours that subscribe to lifecycle events. One module per callback.

:data:`BUILT_IN` is the one place a built-in callback is registered: its config name and ``module:Class``. This
package's exports (``from callbacks import Checkpointer``) and the config registry (``trainers.config.registry``)
are derived from it, so adding a callback is its module plus one line there. Third-party callbacks register the
same way through the ``stepbus.callbacks`` entry-point group, without touching stepbus.

The built-in callbacks import torch; they are loaded on first use, so ``from callbacks import Callback`` stays
torch-free. (Type checkers see the lazily loaded names as ``Any``; import from the defining module, e.g.
``from callbacks.checkpointer import Checkpointer``, for full types.)
"""

from __future__ import annotations

try:  # before any other import of lifecycle: a module of the user's named lifecycle has no lifecycle.installation
    from lifecycle.installation import check_installation
except ModuleNotFoundError as missing:
    if missing.name != "lifecycle.installation":
        raise
    import lifecycle as _shadowing

    _found = getattr(_shadowing, "__file__", None) or next(iter(getattr(_shadowing, "__path__", ())), "lifecycle")
    raise ImportError(  # the words of lifecycle.installation.shadowed_message, which cannot be imported here
        f"{_found} shadows stepbus's package 'lifecycle': `import lifecycle` finds it first on sys.path. "
        "Rename it (stepbus's packages are lifecycle, callbacks, trainers).",
        name="lifecycle",
        path=_found,
    ) from None

from lifecycle.callback import Callback, HandlerSpec
from lifecycle.lazy import lazy_attributes

check_installation()  # lifecycle and trainers too: see lifecycle.installation

#: config name -> "module:Class" of every built-in callback, in the order ``stepbus callbacks`` lists them
BUILT_IN: dict[str, str] = {
    "lr_decay": "callbacks.lr_decay:LRDecay",
    "grid_pruning": "callbacks.grid_pruning:GridPruning",
    "gradient_guard": "callbacks.gradient_guard:GradientGuard",
    "validator": "callbacks.validator:Validator",
    "early_stopping": "callbacks.early_stopping:EarlyStopping",
    "time_limit": "callbacks.time_limit:TimeLimit",
    "tensorboard": "callbacks.loggers.tensorboard:TensorBoardLogger",
    "wandb": "callbacks.loggers.wandb:WandbLogger",
    "csv": "callbacks.loggers.csv_logger:CSVLogger",
    "mlflow": "callbacks.loggers.mlflow:MLflowLogger",
    "progress": "callbacks.progress:ProgressBar",
    "model_summary": "callbacks.model_summary:ModelSummary",
    "checkpointer": "callbacks.checkpointer:Checkpointer",
    "metrics_file": "callbacks.loggers.metrics_file:MetricsFile",
    "preview": "callbacks.preview:Preview",
    "ema": "callbacks.ema:EMA",
    "pipeline_export": "callbacks.pipeline_export:PipelineExport",
    "ray_report": "callbacks.ray_report:RayReport",
    "profiler": "callbacks.profiler:Profiler",
}

#: the other public names the callbacks' modules define (an error type, a record, metric functions)
_ALSO = {
    "NonFiniteError": "callbacks.gradient_guard",
    "Frame": "callbacks.preview",
    "ExportError": "callbacks.pipeline_export",
    "mse": "callbacks.metrics",
    "psnr": "callbacks.metrics",
    "Mean": "callbacks.reductions",
    "Sum": "callbacks.reductions",
    "Reduction": "callbacks.reductions",
    "validation_shard": "callbacks.validation_sharding",
}

_WHERE = {target.partition(":")[2]: target.partition(":")[0] for target in BUILT_IN.values()} | _ALSO

__all__ = ["BUILT_IN", "Callback", "HandlerSpec", *sorted(_WHERE)]


__getattr__, __dir__ = lazy_attributes("callbacks", _WHERE, __all__)
