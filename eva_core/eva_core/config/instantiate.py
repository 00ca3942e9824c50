"""Recursive instantiation of LazyCall config nodes.

Hydra's own ``instantiate`` deep-copies its input, which would copy a live model that the engine
puts into ``cfg.optimizer.params.model``; this version walks the tree without copying leaves and
resolves dotted ``_target_`` names with :func:`locate`.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig

__all__ = ["instantiate", "locate", "dotted_name"]


def locate(name: str) -> Any:
    """Import and return the object named by a dotted path such as ``"torch.nn.Linear"``.

    The longest importable module prefix is imported and the rest is read as attributes, so
    nested names (``"pkg.mod.Class.method"``) work too. Saved configs call it to rebuild
    functions and classes stored as plain values (see ``LazyConfig.save``). hydra's
    ``get_object`` does the same but logs an error for every miss, and :func:`dotted_name`
    probes names that may legitimately be missing.

    Raises:
        ImportError: no module prefix imports, or an attribute is missing; names ``name``.
    """
    if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
        raise ImportError(f"cannot locate {name!r}: expected a dotted name such as 'torch.nn.Linear'")
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # keep shortening only when the missing module is this prefix (or its parent),
            # not a dependency that the module itself failed to import
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue
            raise ImportError(f"cannot locate {name!r}: importing {module_name!r} failed: {e}") from e
        for depth, attr in enumerate(parts[i:], start=i):
            try:
                obj = getattr(obj, attr)
            except AttributeError:
                raise ImportError(f"cannot locate {name!r}: {'.'.join(parts[:depth])!r} has no "
                                  f"attribute {attr!r}") from None
        return obj
    raise ImportError(f"cannot locate {name!r}: no module named {parts[0]!r}")


def dotted_name(obj: Any) -> str | None:
    """The importable ``module.qualname`` of ``obj``, or None when it cannot be re-imported
    (lambdas, functions defined inside functions, objects shadowed under another name)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    name = f"{module}.{qualname}"
    try:
        located = locate(name)
    except Exception:  # importing arbitrary modules can fail in any way
        return None
    # a classmethod is a new bound-method object on every access; equal, not identical
    same = located is obj or (inspect.ismethod(obj) and located == obj)
    return name if same else None

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
