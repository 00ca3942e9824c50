"""Checkpoint reading, writing, layout registry and loading into EVA models."""
from .io import CheckpointFormatError, load_file, save_atomic

_LOADER = ("load_checkpoint", "LoadReport", "CheckpointMismatchError", "adapt_state_dict", "find_encoder",
           "find_source_prefix")
_LAYOUTS = ("register_layout", "unregister_layout", "get_layout", "list_layouts", "Layout", "LayoutContext",
            "convert_state_dict", "detect_layout", "unwrap_state_dict", "to_eva_layout", "rename_to_eva_keys")


def __getattr__(name):
    # loader/layouts import timm through eva_core.layers; keep ``import eva_core.checkpoint`` light
    if name in _LOADER:
        from . import loader

        return getattr(loader, name)
    if name in _LAYOUTS:
        from . import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module 'eva_core.checkpoint' has no attribute {name!r}")


__all__ = ["CheckpointFormatError", "load_file", "save_atomic", *_LOADER, *_LAYOUTS]
