"""Check a whole config: unknown keys and wrong value types are refused, not ignored.

Two rules, applied by ``LazyConfig.load`` (``.py`` and ``.yaml``) and again after
``LazyConfig.apply_overrides``:

1. the keys of a node with a ``_target_`` must be arguments of the callable it configures
   (skipped when the callable takes ``**kwargs``);
2. every key under the top-level ``train`` must be declared in
   :mod:`eva_core.config.train_schema`, and its value must have the declared type (values are
   normalised: ``enabled: "off"`` becomes ``False``, ``clip_grad: 3`` becomes ``3.0``).
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

from omegaconf import DictConfig, ListConfig

from .errors import ConfigValueError, UnknownConfigKeyError
from .instantiate import dotted_name, locate
from .train_schema import SECTION, KwargsOf, closest_train_keys, train_key_type
from .value_types import coerce_value

__all__ = ["check_config", "target_arguments", "target_of"]

_RESERVED_KEYS = frozenset({"_target_", "_partial_", "_args_"})


def check_config(cfg: Any, source: str | None = None) -> None:
    """Refuse unknown ``_target_`` arguments, unknown ``train.*`` keys and mistyped ``train.*``
    values in ``cfg`` (normalising the accepted ``train.*`` values in place).

    Args:
        cfg: the config (a DictConfig; anything else is not checked).
        source: the file or "command-line overrides", named in error messages.

    Raises:
        UnknownConfigKeyError: a key that no callable or schema accepts; the message lists the
            closest known keys.
        ConfigValueError: a ``train.*`` value of the wrong type.
    """
    if not isinstance(cfg, DictConfig):
        return
    _check_targets(cfg, "", source)
    if "train" in cfg.keys() and isinstance(cfg._get_node("train"), DictConfig):
        _check_train(cfg._get_node("train"), "", source)


def target_of(node: DictConfig) -> Any:
    """The callable a node's ``_target_`` names, or None when it cannot be imported here
    (instantiate reports that) or the node has none."""
    if "_target_" not in node.keys():
        return None
    target = node._get_node("_target_")._value()
    if isinstance(target, str):
        if "${" in target:
            return None
        try:
            return _locate_cached(target)
        except ImportError:
            return None
    return target if callable(target) else None


@functools.lru_cache(maxsize=None)
def _locate_cached(name: str) -> Any:
    return locate(name)


def target_arguments(target: Any) -> frozenset[str] | None:
    """Names ``target`` accepts as keyword arguments, or None when it takes ``**kwargs`` or its
    signature cannot be read (then any key is accepted)."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def _children(node: Any):
    if isinstance(node, DictConfig):
        return ((str(k), node._get_node(k)) for k in node.keys())
    if isinstance(node, ListConfig):
        return ((str(i), node._get_node(i)) for i in range(len(node)))
    return ()


def _check_targets(node: Any, path: str, source: str | None) -> None:
    if isinstance(node, DictConfig):
        target = target_of(node)
        allowed = target_arguments(target) if target is not None else None
        if allowed is not None:
            for key in node.keys():
                if key in _RESERVED_KEYS or key in allowed:
                    continue
                name = dotted_name(target) or getattr(target, "__name__", repr(target))
                close = difflib.get_close_matches(str(key), sorted(allowed), n=3, cutoff=0.5)
                raise UnknownConfigKeyError(
                    f"{path}{key}", [f"{path}{c}" for c in close], source=source,
                    detail=f"{name} has no argument {key!r} (its arguments: {', '.join(sorted(allowed))})")
    for name, child in _children(node):
        if isinstance(child, (DictConfig, ListConfig)):
            _check_targets(child, f"{path}{name}.", source)


def _check_train(node: DictConfig, prefix: str, source: str | None) -> None:
    for key in list(node.keys()):
        name = f"{prefix}{key}"
        kind = train_key_type(name)
        child = node._get_node(key)
        if kind is None:
            raise UnknownConfigKeyError(
                f"train.{name}", closest_train_keys(name), source=source,
                detail="the engine reads no such key (eva_core/config/train_schema.py lists them; "
                       "a project declares its own with register_train_keys)")
        if child._is_missing() or child._is_interpolation():
            continue
        if kind is SECTION or isinstance(kind, KwargsOf):
            if not isinstance(child, DictConfig) or child._is_none():
                raise ConfigValueError(f"train.{name}", _plain(child), "a mapping ({key: value, ...})",
                                       source)
            if kind is SECTION:
                _check_train(child, f"{name}.", source)
            else:
                _check_kwargs(child, kind, f"train.{name}", source)
            continue
        value = _plain(child)
        checked = coerce_value(value, kind, f"train.{name}", source)
        if not isinstance(child, (DictConfig, ListConfig)) and (
                type(checked) is not type(value) or checked != value):
            node[key] = checked


def _check_kwargs(node: DictConfig, kind: KwargsOf, path: str, source: str | None) -> None:
    try:
        target = _locate_cached(kind.target)
    except ImportError:
        return
    allowed = target_arguments(target)
    if allowed is None:
        return
    for key in node.keys():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=3, cutoff=0.5)
            raise UnknownConfigKeyError(f"{path}.{key}", [f"{path}.{c}" for c in close], source=source,
                                        detail=f"not an argument of {kind.target}")


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return None if node._is_none() else node
    return node._value()
