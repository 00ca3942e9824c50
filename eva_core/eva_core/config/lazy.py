"""Python config files in detectron2's LazyConfig style, stored as omegaconf DictConfigs.

A config file is plain Python whose top-level dicts become the config::

    from ..common.train import train          # config files import each other
    from eva_core.config import LazyCall as L
    model = L(torch.nn.Linear)(in_features=8, out_features=2)
    train.max_iter = 100

Nothing is built until :func:`eva_core.config.instantiate` is called on a node.
"""
from __future__ import annotations

import ast
import builtins
import difflib
import functools
import os
import types
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from .instantiate import dotted_name

__all__ = ["LazyCall", "LazyConfig", "UnknownConfigKeyError", "ConfigFileError"]

_FLAGS = {"allow_objects": True}
_CONFIG_PACKAGE = "eva_core._lazy_config"  # marks modules created from config files
_MISSING = object()


class UnknownConfigKeyError(KeyError):
    """An override names a key that the config does not have.

    Attributes:
        key: the dotted key from the override.
        suggestions: the closest existing dotted keys (may be empty).
    """

    def __init__(self, key: str, suggestions: Sequence[str], override: str | None = None):
        self.key, self.suggestions, self.override = key, list(suggestions), override
        super().__init__(key)

    def __str__(self) -> str:
        where = f" (in override {self.override!r})" if self.override else ""
        hint = (f" Closest existing keys: {', '.join(self.suggestions)}." if self.suggestions
                else " No similar key exists; prefix the override with '+' to add a new key.")
        return f"Unknown config key {self.key!r}{where}.{hint}"


class ConfigFileError(ValueError):
    """A config file or override could not be read; the message names it and the reason."""


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
        """Apply ``key=value`` overrides in place and return ``cfg``.

        Values are parsed as Python literals (ints, floats, lists, ``None``, ``True``...) when
        possible and kept as strings otherwise. ``+key=value`` adds a key that does not exist.

        Raises:
            UnknownConfigKeyError: a key is not in the config (message lists the closest keys).
            ConfigFileError: an override is not of the form ``key=value``.
        """
        for override in overrides:
            key, value, add = _parse_override(override)
            if not add and not has_key(cfg, key):
                raise UnknownConfigKeyError(key, closest_keys(cfg, key), override)
            OmegaConf.update(cfg, key, value, merge=True, force_add=add)
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


def _parse_override(override: str) -> tuple[str, Any, bool]:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key.lstrip("+"):
        raise ConfigFileError(f"override {override!r} is not of the form key=value")
    add = key.startswith("+")
    return key.lstrip("+"), _parse_value(text.strip()), add


def _parse_value(text: str) -> Any:
    """A Python literal when ``text`` is one (``3``, ``1e-4``, ``[1, 2]``, ``None``), else the
    string itself. ``true``/``false``/``null`` (yaml spellings) are accepted too."""
    lowered = {"true": True, "false": False, "null": None, "none": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


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
