"""Optimizer helpers: layer-wise lr decay param groups and per-iteration lr schedules."""
from .schedulers import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    LRMultiplier,
    MultiStepParamScheduler,
    PolynomialDecayParamScheduler,
    WarmupParamScheduler,
    cosine_with_warmup,
    poly_with_warmup,
    step_with_warmup,
)

__all__ = ["LRMultiplier", "WarmupParamScheduler", "cosine_with_warmup", "step_with_warmup",
           "poly_with_warmup", "CosineParamScheduler", "MultiStepParamScheduler",
           "ConstantParamScheduler", "LinearParamScheduler", "PolynomialDecayParamScheduler",
           "CompositeParamScheduler"]

try:  # layer_decay.py is written in parallel; export it once it exists
    from .layer_decay import param_groups_layer_decay  # noqa: F401

    __all__.append("param_groups_layer_decay")
except ImportError as _e:  # pragma: no cover - only while the module is missing
    if "layer_decay" not in str(_e):
        raise
