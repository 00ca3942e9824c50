"""Every ``train.*`` key the engine reads, with its type: the one place that defines them.

The defaults live in ``configs/common/train.py``; this module says which keys exist and what each
accepts, so that a typo (``train.max_itr``) or a wrong type (``train.max_iter=2.5``) in a config
file or an override is refused before anything runs. Projects that read keys of their own under
``train`` add them with :func:`register_train_keys`::

    from eva_core.config import register_train_keys
    register_train_keys({"detection.mask_on": bool, "detection.num_stages": int})

Types are the usual Python / ``typing`` forms: ``int``, ``float``, ``bool``, ``str``, ``dict``
(a mapping whose own keys are not checked), ``list[float]``, ``Optional[int]``... A key that holds
other keys (``amp``, ``checkpointer``) is a :data:`SECTION`; :class:`KwargsOf` marks a section
whose keys are the keyword arguments of a callable (``train.ddp`` -> torch's
``DistributedDataParallel``).
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping, Optional, Union

__all__ = ["SECTION", "KwargsOf", "TRAIN_KEYS", "register_train_keys", "train_key_type",
           "closest_train_keys"]


class _Section:
    """Marker: the key holds named sub-keys, each listed in the schema."""

    def __repr__(self) -> str:
        return "SECTION"


SECTION = _Section()


class KwargsOf:
    """Marker: the key holds keyword arguments of the callable named ``target`` (checked against
    its signature when the config is checked)."""

    def __init__(self, target: str):
        self.target = target

    def __repr__(self) -> str:
        return f"KwargsOf({self.target!r})"


# docs/DESIGN.md "train keys"; what engine/config_build.py and engine/defaults.py read
TRAIN_KEYS: dict[str, Any] = {
    "output_dir": Optional[str],
    "init_checkpoint": Optional[str],
    "max_iter": int,
    "amp": SECTION,
    "amp.enabled": bool,
    "amp.dtype": str,
    "amp.loss_scale": SECTION,
    "amp.loss_scale.init_scale": float,
    "amp.loss_scale.growth_interval": int,
    "amp.loss_scale.hysteresis": int,
    "amp.loss_scale.min_scale": float,
    "ddp": KwargsOf("torch.nn.parallel.DistributedDataParallel"),
    "checkpointer": SECTION,
    "checkpointer.period": Optional[int],
    "checkpointer.max_to_keep": Optional[int],
    "checkpointer.format": str,
    "eval_period": Optional[int],
    "log_period": int,
    "device": Optional[str],
    "seed": Optional[int],
    "grad_accum_steps": int,
    "clip_grad": Optional[float],
    "ema": SECTION,
    "ema.enabled": bool,
    "ema.decay": float,
    "zero_stage": int,
    "deepspeed": Optional[dict],
    "max_nonfinite_steps": int,
    "deterministic": bool,
    "cudnn_benchmark": bool,
    "allow_pickle": bool,
    "dist_timeout": Optional[float],
    "heartbeat_timeout": float,
    "min_loaded": SECTION,
    "min_loaded.init": Union[float, str],
    "min_loaded.eval": Union[float, str],
}


def register_train_keys(keys: Mapping[str, Any] | None = None, **more: Any) -> None:
    """Declare extra ``train.*`` keys that a project's code reads.

    Args:
        keys: dotted key (relative to ``train``) -> type, e.g. ``{"detection.mask_on": bool}``.
            The parent sections (``detection``) are declared too.
        **more: the same for keys without dots (``register_train_keys(warmup_iters=int)``).

    Raises:
        ValueError: a key is already declared with another type, or is declared as both a
            value and a section.
    """
    for key, kind in {**dict(keys or {}), **more}.items():
        key = key[len("train."):] if key.startswith("train.") else key
        parts = key.split(".")
        for i in range(1, len(parts)):
            _declare(".".join(parts[:i]), SECTION)
        _declare(key, kind)


def _declare(key: str, kind: Any) -> None:
    old = TRAIN_KEYS.get(key, kind)
    if old is not kind and old != kind:
        raise ValueError(f"register_train_keys: train.{key} is already declared as {old!r}, "
                         f"cannot declare it as {kind!r}")
    TRAIN_KEYS[key] = kind


def train_key_type(key: str) -> Any:
    """The declared type of ``train.<key>`` (``key`` without the ``train.`` prefix), or None
    when the key is not declared. Keys below a ``dict`` or :class:`KwargsOf` entry are open."""
    if key in TRAIN_KEYS:
        return TRAIN_KEYS[key]
    parent = key
    while "." in parent:
        parent = parent.rpartition(".")[0]
        kind = TRAIN_KEYS.get(parent)
        if kind is not None and kind is not SECTION:
            return Any
    return None


def closest_train_keys(key: str, n: int = 3) -> list[str]:
    """The declared ``train.*`` keys most similar to ``key`` (full dotted names)."""
    key = key[len("train."):] if key.startswith("train.") else key
    names = list(TRAIN_KEYS)
    matches = difflib.get_close_matches(key, names, n=n, cutoff=0.6)
    if not matches:  # compare only the last part among the siblings
        parent, _, leaf = key.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in names if k.rpartition(".")[0] == parent}
        matches = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.5)]
    return [f"train.{m}" for m in matches]
