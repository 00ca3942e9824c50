"""Python config files in detectron2's LazyConfig style, stored as omegaconf DictConfigs.

A config file is plain Python whose top-level dicts become the config::

    from ..common.train import train          # config files import each other
    from eva_core.config import LazyCall as L
    model = L(torch.nn.Linear)(in_features=8, out_features=2)
    train.max_iter = 100

Nothing is built until :func:`eva_core.config.instantiate` is called on a node.
"""
from __future__ import annotations

import builtins
import difflib
import functools
import inspect
import os
import types
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from .checks import check_config, target_of
from .errors import ConfigFileError, ConfigValueError, UnknownConfigKeyError
from .instantiate import dotted_name
from .train_schema import SECTION, KwargsOf, train_key_type
from .value_types import annotated_type, coerce_value, describe_type, type_of_value

__all__ = ["LazyCall", "LazyConfig", "UnknownConfigKeyError", "ConfigFileError", "ConfigValueError"]

_FLAGS = {"allow_objects": True}
_CONFIG_PACKAGE = "eva_core._lazy_config"  # marks modules created from config files
_MISSING = object()


class LazyCall:
    """Record a call without making it: ``LazyCall(f)(x=1)`` returns a config node.

    The node is a DictConfig ``{"_target_": "module.f", "x": 1}``. The target is stored as an
    importable dotted string so that a saved yaml file can be loaded and instantiated again;
    callables that cannot be re-imported (defined inside a function) are stored as objects.
    """

    def __init__(self, target: Callable | str):
        if not (callable(target) or isinstance(target, str)):
            raise TypeError(f"LazyCall expects a callable or a dotted name, got {target!r}")
        self._target = target

    def __call__(self, **kwargs: Any) -> DictConfig:
        target = self._target
        if not isinstance(target, str):
            target = dotted_name(target) or target
        return DictConfig({"_target_": target, **kwargs}, flags=_FLAGS)


L = LazyCall


class LazyConfig:
    """Load, save and override LazyConfig files (``.py`` or ``.yaml``)."""

    @staticmethod
    def load(path: str | os.PathLike, keys: str | Sequence[str] | None = None) -> Any:
        """Load a config file.

        Args:
            path: a ``.py`` file (executed; its public top-level dicts and lists become the config)
                or a ``.yaml`` file written by :meth:`save`.
            keys: return only this key (a string) or a tuple of these keys.

        Raises:
            ConfigFileError: missing file, unknown suffix, or a requested key is absent.
            UnknownConfigKeyError: a key that is not an argument of its node's ``_target_``, or a
                ``train.*`` key the engine does not read (see :func:`~eva_core.config.check_config`).
            ConfigValueError: a ``train.*`` value of the wrong type (``max_iter: 2.5``).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigFileError(f"config file not found: {path}")
        if path.suffix == ".py":
            cfg = _load_python(path)
        elif path.suffix in (".yaml", ".yml"):
            cfg = OmegaConf.load(path)
            cfg._set_flag("allow_objects", True)
        else:
            raise ConfigFileError(f"{path}: config files must end in .py, .yaml or .yml")
        check_config(cfg, source=str(path))
        if keys is None:
            return cfg
        names = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in names if k not in cfg]
        if missing:
            raise ConfigFileError(f"{path}: no top-level key(s) {missing}; it has {sorted(cfg)}")
        values = tuple(cfg[k] for k in names)
        return values[0] if isinstance(keys, str) else values

    @staticmethod
    def save(cfg: DictConfig | dict, path: str | os.PathLike) -> Path:
        """Write ``cfg`` as yaml that :meth:`load` + :func:`instantiate` turn back into it.

        Values stored as plain objects are written as config nodes when they can be re-imported:
        a module-level function or class (``activation=F.gelu``) becomes
        ``{_target_: eva_core.config.locate, name: "torch.nn.functional.gelu"}``,
        which instantiates to that same object, and ``functools.partial(f, *args, **kw)``
        becomes ``{_target_: f, _partial_: true, _args_: args, **kw}``. Anything else yaml
        cannot hold (lambdas, local functions, live modules, tensors) is replaced by a
        placeholder string and reported in a warning that names its key."""
        path = Path(path)
        bad: list[str] = []
        data = _to_yaml_data(_to_container(cfg), "", bad)
        if bad:
            warnings.warn(
                f"LazyConfig.save({path}): these values cannot be written to yaml and were saved "
                f"as placeholder strings: {', '.join(bad)}. Loading the file will not rebuild them.",
                stacklevel=2,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
        os.replace(tmp, path)
        return path

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
        """Apply ``key=value`` overrides in place and return ``cfg`` (detectron2's syntax).

        Values are read with hydra's override grammar (``3``, ``1e-4``, ``true``, ``null``,
        ``[1, 2]``, ``{enabled: true, decay: 0.5}``, ``'quoted text'``; ``None`` is accepted
        for ``null``) and checked against the type the key takes: the declared type of a
        ``train.*`` key (:mod:`eva_core.config.train_schema`), else the annotation of the
        ``_target_`` argument when it is a plain ``int``/``float``/``bool``/``str``, else the
        type of the value it replaces (see :func:`~eva_core.config.value_types.coerce_value`:
        ``no``/``off`` are False, ``2.5`` is not an integer). A key whose value is None or
        missing (``???``) takes any value. A mapping is merged key by key into the mapping it
        replaces (each key checked), unless it has a ``_target_``: then it replaces the node.
        A list replaces the list. ``+key=value`` adds a key that does not exist. The whole
        config is checked again afterwards (:func:`~eva_core.config.check_config`).

        Raises:
            UnknownConfigKeyError: a key is not in the config (message lists the closest keys).
            ConfigValueError: a value does not have the type its key takes (names key, value
                and the expected type).
            ConfigFileError: an override is not of the form ``key=value``, cannot be parsed, or
                uses a hydra feature that has no meaning here (``~key`` deletion, sweeps).
        """
        overrides = list(overrides)
        for override in overrides:
            key, value, add, raw = _parse_override(override)
            _apply_override(cfg, key, value, add=add, raw=raw, override=override)
        if overrides:
            check_config(cfg, source="the config after command-line overrides")
        return cfg

    @staticmethod
    def dump(cfg: DictConfig) -> str:
        """The yaml text :meth:`save` would write (for logs)."""
        return OmegaConf.to_yaml(OmegaConf.create(_to_yaml_data(_to_container(cfg), "", [])))


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` exists in ``cfg``, including keys whose value is omegaconf's
    missing value ``???`` (which ``OmegaConf.select`` and ``in`` treat as absent)."""
    if OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False) is not _MISSING:
        return True
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING) if parent_key else cfg
    if isinstance(parent, DictConfig):
        return leaf in parent.keys()
    if isinstance(parent, ListConfig):
        return leaf.lstrip("-").isdigit() and -len(parent) <= int(leaf) < len(parent)
    return False


def closest_keys(cfg: DictConfig, key: str, n: int = 3) -> list[str]:
    """The dotted keys of ``cfg`` most similar to ``key`` (difflib ratio)."""
    keys = list(_flat_keys(cfg))
    matches = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if matches:
        return matches
    # e.g. "model.backbone.dpeth": compare the last part with the children of the deepest
    # parent that exists, so a long shared prefix does not hide the useful candidates
    parent, _, leaf = key.rpartition(".")
    while parent and OmegaConf.select(cfg, parent, default=_MISSING) is _MISSING:
        parent, _, leaf = parent.rpartition(".")
    siblings = [k for k in keys if k.startswith(parent + ".") and "." not in k[len(parent) + 1:]] \
        if parent else [k for k in keys if "." not in k]
    names = {k.rpartition(".")[2]: k for k in siblings}
    return [names[m] for m in difflib.get_close_matches(leaf, list(names), n=n, cutoff=0.5)]


def _flat_keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, DictConfig):
        items = ((str(k), node._get_node(k)) for k in node.keys())
    elif isinstance(node, ListConfig):
        items = ((str(i), node._get_node(i)) for i in range(len(node)))
    else:
        return
    for name, child in items:
        full = f"{prefix}{name}"
        yield full
        yield from _flat_keys(child, full + ".")


@functools.lru_cache(maxsize=1)
def _overrides_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse_override(override: str) -> tuple[str, Any, bool, str]:
    """``(key, value, add, raw value text)`` of one override, parsed by hydra's grammar."""
    from hydra.errors import HydraException

    key, sep, text = override.partition("=")
    if not sep or not key.strip().lstrip("+~"):
        raise ConfigFileError(f"override {override!r} is not of the form key=value")
    try:
        (parsed,) = _overrides_parser().parse_overrides([override])
    except HydraException as e:
        raise ConfigFileError(f"cannot parse override {override!r}: {e}. Values use hydra's "
                              f"syntax: 3, 1e-4, true, null, [1, 2], {{a: 1}}, 'quoted text'") from None
    if parsed.is_delete():
        raise ConfigFileError(f"override {override!r}: deleting keys (~key) is not supported")
    if parsed.is_sweep_override():
        raise ConfigFileError(f"override {override!r}: a comma-separated value is a hydra sweep, "
                              f"which a single run cannot apply; write a list as [a, b] or quote "
                              f"text that contains commas")
    value, raw = parsed.value(), text.strip()
    if isinstance(value, str) and raw in ("None", "none"):
        value = None  # Python's spelling of null
    return parsed.key_or_group, value, parsed.is_add() or parsed.is_force_add(), raw


def _apply_override(cfg: DictConfig, key: str, value: Any, *, add: bool, raw: str | None,
                    override: str) -> None:
    if add:
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        return
    if not has_key(cfg, key):
        raise UnknownConfigKeyError(key, closest_keys(cfg, key), override)
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    current = parent._get_node(int(leaf) if isinstance(parent, ListConfig) else leaf)
    if isinstance(value, dict) and isinstance(current, DictConfig) and not current._is_none() \
            and "_target_" not in value:
        for sub_key, sub_value in value.items():  # merge: each key is checked like key.sub=value
            _apply_override(cfg, f"{key}.{sub_key}", sub_value, add=False, raw=None, override=override)
        return
    expected, hint = _expected_type(cfg, key, parent, leaf, current)
    value = coerce_value(value, expected, key, f"override {override!r}", raw=raw, hint=hint)
    if isinstance(value, dict) and "_target_" in value:
        OmegaConf.update(cfg, key, value, merge=False)  # a new _target_ replaces the whole node
    else:
        OmegaConf.update(cfg, key, value, merge=True)


def _expected_type(cfg: DictConfig, key: str, parent: Any, leaf: str, current: Any) -> tuple[Any, str]:
    """The type an override of ``key`` must have, and a hint for the error message."""
    if key.startswith("train.") and "train" in cfg.keys():
        kind = train_key_type(key[len("train."):])
        if kind is SECTION or isinstance(kind, KwargsOf):
            return dict, ""
        if kind is not None:
            return kind, ""
    if current._is_missing() or current._is_none() or current._is_interpolation():
        return Any, ""
    if isinstance(parent, DictConfig):
        target = target_of(parent)
        annotation = annotated_type(target, leaf) if target is not None else None
        if annotation is not None:
            return annotation, (f"{dotted_name(target) or target} annotates its argument {leaf!r} "
                                f"as {describe_type(annotation)}")
    value = current if isinstance(current, (DictConfig, ListConfig)) else current._value()
    expected = type_of_value(value)
    if expected is not Any and isinstance(parent, DictConfig) and _defaults_to_none(target_of(parent), leaf):
        expected = Optional[expected]  # an argument whose default is None takes null (an optional file)
    hint = ""
    if expected is int:
        hint = (f"the config holds the integer {value!r} here; if this key takes fractional "
                f"values, write it as {float(value)!r} in the config file")
    return expected, hint


def _defaults_to_none(target: Any, name: str) -> bool:
    """Whether ``target``'s parameter ``name`` has the default None."""
    if target is None:
        return False
    try:
        parameter = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is None


def _to_container(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return cfg


_YAML_SCALARS = (bool, int, float, str, type(None))


def _to_yaml_data(obj: Any, where: str, bad: list[str]) -> Any:
    """Copy of ``obj`` with only yaml-safe values; records the path of each replaced value."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            path = f"{where}.{k}" if where else str(k)
            if k == "_target_" and not isinstance(v, str) and dotted_name(v):
                v = dotted_name(v)
            out[k] = _to_yaml_data(v, path, bad)
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_yaml_data(v, f"{where}.{i}", bad) for i, v in enumerate(obj)]
    if isinstance(obj, _YAML_SCALARS):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    node = _importable_node(obj, where, bad)
    if node is not None:
        return node
    bad.append(where)
    return f"<unserializable {type(obj).__name__}: {_short_repr(obj)}>"


_LOCATE = "eva_core.config.locate"
_RESERVED_KEYS = ("_target_", "_partial_", "_args_")


def _importable_node(obj: Any, where: str, bad: list[str]) -> dict | None:
    """A config node that instantiates back to ``obj`` (an importable function or class, or a
    ``functools.partial`` of one), or None when ``obj`` is neither."""
    if isinstance(obj, functools.partial):
        target = dotted_name(obj.func)
        if target is None or any(k in _RESERVED_KEYS for k in obj.keywords):
            return None
        node: dict = {"_target_": target, "_partial_": True}
        if obj.args:
            node["_args_"] = _to_yaml_data(list(obj.args), f"{where}._args_", bad)
        node.update(_to_yaml_data(dict(obj.keywords), where, bad))
        return node
    if isinstance(obj, type) or callable(obj):
        name = dotted_name(obj)
        if name is not None:
            return {"_target_": _LOCATE, "name": name}
    return None


def _short_repr(obj: Any, limit: int = 80) -> str:
    text = " ".join(repr(obj).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# executing python config files


def _load_python(path: Path) -> DictConfig:
    namespace = _exec_config_file(path.resolve())
    cfg = {name: value for name, value in namespace.items()
           if not name.startswith("_") and isinstance(value, (DictConfig, ListConfig, dict, list))}
    return DictConfig(cfg, flags=_FLAGS)


def _exec_config_file(path: Path) -> dict:
    """Run a config file and return its global namespace. Relative imports inside it load
    sibling config files (each import gets a fresh copy, so importers never share state)."""
    try:
        source = path.read_text()
        code = compile(source, str(path), "exec")
    except (OSError, SyntaxError) as e:
        raise ConfigFileError(f"cannot read config file {path}: {e}") from e
    namespace = {"__file__": str(path), "__name__": f"{_CONFIG_PACKAGE}.{_module_id(path)}",
                 "__package__": _CONFIG_PACKAGE}
    with _relative_imports_load_config_files():
        exec(code, namespace)
    return namespace


def _module_id(path: Path) -> str:
    return path.stem + "_" + uuid.uuid4().hex[:8]


def _config_module(path: Path) -> types.ModuleType:
    module = types.ModuleType(f"{_CONFIG_PACKAGE}.{path.stem}")
    namespace = _exec_config_file(path)
    for name, value in namespace.items():
        if isinstance(value, dict) and not isinstance(value, DictConfig) and not name.startswith("__"):
            value = DictConfig(value, flags=_FLAGS)
        setattr(module, name, value)
    return module


def _resolve_relative(importer_file: str, name: str, level: int) -> Path:
    base = Path(importer_file).parent
    for _ in range(level - 1):
        base = base.parent
    return base.joinpath(*name.split(".")) if name else base


_import_depth = 0


@contextmanager
def _relative_imports_load_config_files():
    """Patch ``__import__`` so that ``from ..common.train import train`` in a config file
    executes ``../common/train.py`` as a config file."""
    global _import_depth
    original = builtins.__import__

    def config_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 or not globals or globals.get("__package__") != _CONFIG_PACKAGE:
            return original(name, globals, locals, fromlist, level)
        target = _resolve_relative(globals["__file__"], name, level)
        if target.with_suffix(".py").is_file():
            return _config_module(target.with_suffix(".py"))
        if target.is_dir():  # `from ..common import train`: each name is a file in the folder
            package = types.ModuleType(f"{_CONFIG_PACKAGE}.{target.name}")
            for item in fromlist or ():
                file = target / f"{item}.py"
                if not file.is_file():
                    raise ImportError(f"{globals['__file__']}: relative import of {item!r} "
                                      f"from {name or '.'!r}: {file} does not exist")
                setattr(package, item, _config_module(file))
            return package
        raise ImportError(f"{globals['__file__']}: relative import {'.' * level}{name} "
                          f"names {target}.py, which does not exist")

    if _import_depth == 0:
        builtins.__import__ = config_import
    _import_depth += 1
    try:
        yield
    finally:
        _import_depth -= 1
        if _import_depth == 0:
            builtins.__import__ = original
