"""Checkpoint reading, writing and layout conversion."""
from .io import CheckpointFormatError, load_file, save_atomic

__all__ = ["CheckpointFormatError", "load_file", "save_atomic"]
