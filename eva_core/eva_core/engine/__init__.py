"""The training engine, in detectron2's shape: trainers (hook loop, one optimizer step, AMP,
DeepSpeed), hooks, the checkpointer, config builders, defaults and the multi-process launcher."""
from . import hooks
from .checkpointer import Checkpointer, get_rng_state, load_model_weights, set_rng_state, unwrap_model
from .hooks import (
    CallbackHook,
    EMAHook,
    EvalHook,
    HookBase,
    IterationTimer,
    LRScheduler,
    MetricsWriter,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase, sum_losses

__all__ = ["TrainerBase", "SimpleTrainer", "AMPTrainer", "DeepSpeedTrainer", "hooks", "Checkpointer",
           "HookBase", "CallbackHook", "IterationTimer", "LRScheduler", "EMAHook", "PeriodicCheckpointer",
           "EvalHook", "PeriodicWriter", "MetricsWriter", "get_rng_state", "set_rng_state", "unwrap_model",
           "load_model_weights", "sum_losses", "launch", "default_argument_parser", "default_setup",
           "default_hooks", "create_ddp_model", "build_zero_optimizer", "build_eval_function",
           "train_from_config"]

_LAZY = {"launch": ".launch", "default_argument_parser": ".defaults", "default_setup": ".defaults",
         "default_hooks": ".defaults", "create_ddp_model": ".parallel", "build_zero_optimizer": ".parallel",
         "build_eval_function": ".defaults", "train_from_config": ".defaults",
         "DeepSpeedTrainer": ".deepspeed_engine"}


def __getattr__(name: str):
    # launch / defaults / parallel / deepspeed_engine are separate modules: import them only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
