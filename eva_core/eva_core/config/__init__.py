"""LazyConfig: Python config files, LazyCall nodes and recursive instantiation (detectron2 style)."""
from .checks import check_config
from .errors import ConfigFileError, ConfigValueError, UnknownConfigKeyError
from .instantiate import instantiate, locate
from .lazy import L, LazyCall, LazyConfig
from .train_schema import register_train_keys

__all__ = ["LazyCall", "L", "LazyConfig", "instantiate", "locate", "UnknownConfigKeyError", "ConfigFileError",
           "ConfigValueError", "check_config", "register_train_keys"]
