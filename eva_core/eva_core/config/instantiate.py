"""Recursive instantiation of LazyCall config nodes.

Hydra's own ``instantiate`` deep-copies its input, which would copy a live model that the engine
puts into ``cfg.optimizer.params.model``; this version walks the tree without copying leaves and
uses hydra only to resolve dotted ``_target_`` names.
"""
from __future__ import annotations

import functools
from collections import abc
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

__all__ = ["instantiate", "locate", "dotted_name"]

def locate(name: str) -> Any:
    """Import and return the object named by a dotted path such as ``"torch.nn.Linear"``."""
    try:
        return get_object(name)
    except Exception as e:
        raise ImportError(f"cannot locate _target_ {name!r}: {e}") from e

def dotted_name(obj: Any) -> str | None:
    """The importable ``module.qualname`` of ``obj``, or None when it cannot be re-imported."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    name = f"{module}.{qualname}"
    try:
        return name if get_object(name) is obj else None
    except Exception:
        return None

def instantiate(cfg: Any) -> Any:
    """Build the objects described by ``cfg``.

    A mapping with a ``_target_`` key is called as ``target(**kwargs)`` after its values have been
    instantiated (so nested LazyCall nodes are built bottom-up). Mappings without ``_target_``
    become plain dicts and sequences become lists, both instantiated element-wise. Anything else
    (numbers, strings, tensors, modules) is returned unchanged. ``_partial_: True`` returns a
    ``functools.partial`` instead of calling the target; ``_args_`` holds positional arguments.

    Raises:
        ImportError: a ``_target_`` string cannot be imported.
        TypeError: calling a target failed; the message names the target.
    """
    if isinstance(cfg, (ListConfig, list, tuple)):
        return [instantiate(v) for v in _iter_list(cfg)]
    if not isinstance(cfg, (DictConfig, abc.Mapping)):
        return cfg
    kwargs = {k: instantiate(v) for k, v in _iter_dict(cfg)}
    if "_target_" not in kwargs:
        return kwargs
    target = kwargs.pop("_target_")
    partial = bool(kwargs.pop("_partial_", False))
    args = kwargs.pop("_args_", None) or []
    if isinstance(target, str):
        target = locate(target)
    if not callable(target):
        raise TypeError(f"_target_ {target!r} is not callable")
    if partial:
        return functools.partial(target, *args, **kwargs)
    try:
        return target(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"error instantiating {dotted_name(target) or target!r}: {e}") from e

def _iter_dict(cfg: Any):
    """(key, value) pairs; interpolations are resolved, objects stored in a DictConfig are
    returned as themselves (not copied)."""
    keys = cfg.keys()
    return ((k, cfg[k]) for k in keys)

def _iter_list(cfg: Any):
    return (cfg[i] for i in range(len(cfg))) if isinstance(cfg, ListConfig) else iter(cfg)
