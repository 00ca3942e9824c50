"""EVA core package: one encoder, one checkpoint loader, one config system and engine.

Top-level names are imported lazily so ``import eva_core`` stays cheap (no torch/timm import until a
model or the loader is used).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_checkpoint", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from .models import registry

        return getattr(registry, name)
    if name == "load_checkpoint":
        from .checkpoint.loader import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'eva_core' has no attribute {name!r}")
