"""Checkpoint reading, writing and layout conversion."""
from .io import CheckpointFormatError, load_file, save_atomic


def __getattr__(name):
    # loader/layouts import the model package (timm); keep ``import eva_core.checkpoint`` light
    if name in ("load_checkpoint", "LoadReport", "CheckpointMismatchError", "adapt_state_dict"):
        from . import loader

        return getattr(loader, name)
    if name in ("convert_state_dict", "detect_layout", "unwrap_state_dict", "to_eva_layout"):
        from . import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module 'eva_core.checkpoint' has no attribute {name!r}")


__all__ = ["CheckpointFormatError", "load_file", "save_atomic", "load_checkpoint", "LoadReport",
           "CheckpointMismatchError", "adapt_state_dict", "convert_state_dict", "detect_layout",
           "unwrap_state_dict", "to_eva_layout"]
