"""The training engine: Trainer, hooks, checkpointer, and the multi-process launcher."""
from . import hooks
from .checkpointer import Checkpointer, get_rng_state, set_rng_state, unwrap_model
from .hooks import (
    CallbackHook,
    EMAHook,
    EvalHook,
    HookBase,
    IterationTimer,
    LRScheduler,
    MetricsWriter,
    PeriodicCheckpointer,
)
from .trainer import Trainer, build_zero_optimizer, load_model_weights, sum_losses

__all__ = ["Trainer", "hooks", "Checkpointer", "HookBase", "CallbackHook", "IterationTimer",
           "LRScheduler", "EMAHook", "PeriodicCheckpointer", "EvalHook", "MetricsWriter",
           "get_rng_state", "set_rng_state", "unwrap_model", "build_zero_optimizer",
           "load_model_weights", "sum_losses", "launch", "default_argument_parser", "default_setup"]

_LAZY = {"launch": ".launch", "default_argument_parser": ".defaults", "default_setup": ".defaults"}


def __getattr__(name: str):
    # launch.py / defaults.py are separate modules; import them only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
