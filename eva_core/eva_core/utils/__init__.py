"""Small utilities shared by every part of eva_core."""
from .comm import get_rank, get_world_size, is_main_process, synchronize
from .device import default_device, to_device
from .events import EventStorage
from .logging import setup_logger

__all__ = ["get_rank", "get_world_size", "is_main_process", "synchronize", "to_device",
           "default_device", "EventStorage", "setup_logger"]
