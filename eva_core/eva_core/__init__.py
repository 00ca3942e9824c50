"""EVA core package: one encoder, one checkpoint loader, one config system and engine.

Top-level names are imported lazily so ``import eva_core`` stays cheap (no torch/timm import until a
model or the loader is used).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_checkpoint", "register_layout", "list_layouts", "__version__"]


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | None = None, **overrides: Any):
    """Build a registered model and optionally load weights into it.

    This is where the model registry (``eva_core.models``) and the checkpoint loader
    (``eva_core.checkpoint``) meet, so neither package imports the other.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load weights; nothing is downloaded, so this needs ``checkpoint_path``.
        checkpoint_path: a checkpoint in any layout :func:`load_checkpoint` reads (loaded
            non-strictly; the report is stored as ``model.load_report``).
        **overrides: constructor arguments replacing the registered ones.

    Raises:
        ValueError: unknown name or argument, or ``pretrained=True`` without a path.
    """
    from .models import registry

    if pretrained and checkpoint_path is None:
        raise ValueError(f"create_model({name!r}, pretrained=True) needs checkpoint_path=...: weights "
                         "cannot be downloaded; convert a released file with tools/convert_checkpoint.py")
    model = registry.create_model(name, **overrides)
    if checkpoint_path is not None:
        from .checkpoint.loader import load_checkpoint as _load

        model.load_report = _load(model, checkpoint_path)
    return model


def __getattr__(name: str) -> Any:
    if name == "list_models":
        from .models import registry

        return registry.list_models
    if name == "load_checkpoint":
        from .checkpoint.loader import load_checkpoint

        return load_checkpoint
    if name in ("register_layout", "list_layouts"):
        from .checkpoint import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module 'eva_core' has no attribute {name!r}")
