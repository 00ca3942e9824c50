"""EVA encoder family and model registry."""
from .eva import Eva, EvaAttention, EvaBlock, RelativePositionBias, resolve_attn_impl
from .registry import create_model, list_models, model_defaults, register_model

__all__ = ["Eva", "EvaAttention", "EvaBlock", "RelativePositionBias", "resolve_attn_impl", "create_model",
           "list_models", "model_defaults", "register_model"]
