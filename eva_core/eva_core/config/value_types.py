"""Check a config value against the type its key takes, converting only where it is lossless.

``coerce_value(value, int, ...)`` returns ``value`` as the expected type or raises
:class:`~eva_core.config.errors.ConfigValueError` naming key, value and type. The rules:

- ``bool``: ``true/false``, ``yes/no``, ``on/off`` (any case) and the integers ``1/0``.
  Any other value is refused (so ``train.amp.enabled=no`` is False, never "a non-empty string").
- ``int``: integers, and floats with an integral value (``1e4``); ``2.5``, ``abc`` and booleans
  are refused.
- ``float``: floats and integers (stored as float); booleans and strings are refused.
- ``str``: strings; a number or boolean written where a string is expected stays the text as
  written (``train.amp.dtype=16`` -> ``"16"``).
- ``dict`` / ``list`` (``list[float]`` checks the elements): mappings / sequences.
- ``Optional[...]`` / unions: ``None`` where allowed, else the first member type that accepts
  the value. ``Any``: everything.

An omegaconf interpolation (``"${train.max_iter}"``) is kept as written: it is resolved later.
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig

from .errors import ConfigValueError

__all__ = ["coerce_value", "describe_type", "type_of_value", "annotated_type"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_SIMPLE = (bool, int, float, str, type(None))


class _Refused(Exception):
    pass


def _members(expected: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(expected)
    return (expected,)


def describe_type(expected: Any) -> str:
    """A readable name: ``int``, ``bool (true/false, yes/no, on/off, 1/0)``, ``float or None``."""
    names = []
    for member in _members(expected):
        if member is type(None):
            names.append("None")
        elif member is bool:
            names.append("a boolean (true/false, yes/no, on/off, 1/0)")
        elif member is int:
            names.append("an integer")
        elif member is float:
            names.append("a number (float)")
        elif member is str:
            names.append("a string")
        elif member is dict or typing.get_origin(member) is dict:
            names.append("a mapping ({key: value, ...})")
        elif member is list or typing.get_origin(member) is list:
            args = typing.get_args(member)
            names.append(f"a list of {describe_type(args[0])}" if args else "a list ([a, b, ...])")
        else:
            names.append(getattr(member, "__name__", repr(member)))
    return " or ".join(names)


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _convert(value: Any, member: Any, raw: str | None) -> Any:
    if member is Any:
        return value
    if member is type(None):
        if value is None:
            return None
        raise _Refused
    if member is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Refused
    if member is int:
        if isinstance(value, bool):
            raise _Refused
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Refused
    if member is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Refused
        return float(value)
    if member is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return raw if raw is not None else str(value)
        raise _Refused
    origin = typing.get_origin(member) or member
    if origin is dict:
        if isinstance(value, (Mapping, DictConfig)):
            return value
        raise _Refused
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, ListConfig)):
            raise _Refused
        args = typing.get_args(member)
        if not args:
            return value
        return [_convert_member(v, args[0]) for v in value]
    if isinstance(member, type):
        if isinstance(value, member):
            return value
        raise _Refused
    return value  # a form this checker does not know: accept rather than guess


def _convert_member(value: Any, expected: Any, raw: str | None = None) -> Any:
    if _is_interpolation(value):
        return value
    for member in _members(expected):
        try:
            return _convert(value, member, raw)
        except _Refused:
            continue
    raise _Refused


def coerce_value(value: Any, expected: Any, key: str, source: str | None = None,
                 raw: str | None = None, hint: str = "") -> Any:
    """``value`` converted to ``expected`` (see the module docstring for the rules).

    Args:
        value: the parsed value.
        expected: the type the key takes (``None`` or ``Any``: no check).
        key: the dotted key, for the error message.
        source: the override text or file the value came from, for the error message.
        raw: the value's text as the user wrote it (kept when a string is expected).
        hint: appended to the error message.

    Raises:
        ConfigValueError: the value does not have the expected type.
    """
    if expected is None or expected is Any:
        return value
    try:
        return _convert_member(value, expected, raw)
    except _Refused:
        raise ConfigValueError(key, value, describe_type(expected), source, hint) from None


def type_of_value(current: Any) -> Any:
    """The type an override of ``current`` must have: its scalar type, ``dict``, ``list[T]``
    when every element has the scalar type ``T``; ``Any`` for None, missing values and objects."""
    if isinstance(current, bool):
        return bool
    if isinstance(current, (int, float, str)):
        return type(current)
    if isinstance(current, (Mapping, DictConfig)):
        return dict
    if isinstance(current, (list, tuple, ListConfig)):
        kinds = {type(v) for v in current}
        if kinds == {int, float}:
            return list[float]
        if len(kinds) == 1 and next(iter(kinds)) in (bool, int, float, str):
            return list[next(iter(kinds))]
        return list
    return Any


def annotated_type(target: Any, name: str) -> Any:
    """The annotation of parameter ``name`` of ``target`` when it is made only of ``int``,
    ``float``, ``bool``, ``str`` and ``None`` (e.g. ``lr: float``, ``seed: int | None``), else None.

    Anything richer (``int | tuple[int, int]``, ``Callable``) returns None: the caller then
    falls back to the type of the current value rather than refusing a valid form.
    """
    try:
        function = target.__init__ if isinstance(target, type) else target
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references, builtins without annotations
        try:
            parameter = inspect.signature(target).parameters.get(name)
        except (TypeError, ValueError):
            return None
        hints = {name: parameter.annotation} if parameter is not None else {}
    annotation = hints.get(name, inspect.Parameter.empty)
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return None
    members = _members(annotation)
    if all(m in _SIMPLE for m in members) and any(m is not type(None) for m in members):
        return annotation
    return None
