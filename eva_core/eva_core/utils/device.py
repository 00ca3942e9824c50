"""Moving nested batches between devices."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["to_device", "default_device"]


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """Recursively move every tensor inside ``obj`` to ``device``.

    Dicts, lists, tuples (named tuples included) are rebuilt with moved leaves; anything that is
    not a tensor (strings, ints, PIL images, None) is returned unchanged.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        moved = {k: to_device(v, device, non_blocking) for k, v in obj.items()}
        try:  # keep OrderedDict / custom mapping types where they rebuild from a dict
            return type(obj)(moved)
        except TypeError:
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def default_device() -> torch.device:
    """The device a process should train on: its local CUDA device if there is one, else CPU."""
    if torch.cuda.is_available():
        from .comm import get_local_rank

        return torch.device("cuda", get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")
