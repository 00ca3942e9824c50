"""LazyConfig: Python config files, LazyCall nodes and recursive instantiation (detectron2 style)."""
from .instantiate import instantiate, locate
from .lazy import ConfigFileError, L, LazyCall, LazyConfig, UnknownConfigKeyError

__all__ = ["LazyCall", "L", "LazyConfig", "instantiate", "locate", "UnknownConfigKeyError", "ConfigFileError"]
