"""EVA-CLIP model: EVA vision tower, open_clip text tower and loss, checkpoint layouts and open_clip export.

Imported explicitly (``from clip.model import EvaCLIP``) so that ``import clip`` stays torch-free.
Importing it registers the EVA-CLIP checkpoint layouts (:mod:`clip.layouts`).
"""
from .. import layouts as _layouts  # noqa: F401  (registers the EVA-CLIP layouts with eva_core)
from .eva_clip import EVA_CLIP_CONFIGS, EvaCLIP, create_eva_clip, get_tokenizer, list_eva_clip_models
from .open_clip_export import (
    open_clip_model_config,
    register_open_clip_config,
    to_open_clip_state_dict,
    to_released_state_dict,
)

__all__ = [
    "EVA_CLIP_CONFIGS",
    "EvaCLIP",
    "create_eva_clip",
    "get_tokenizer",
    "list_eva_clip_models",
    "open_clip_model_config",
    "register_open_clip_config",
    "to_open_clip_state_dict",
    "to_released_state_dict",
]
