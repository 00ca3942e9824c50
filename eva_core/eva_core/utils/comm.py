"""Helpers for torch.distributed that also work in a single process."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_dist", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
           "synchronize", "all_gather_object", "reduce_mean"]

_LOCAL_RANK = 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    return _LOCAL_RANK


def set_local_rank(rank: int) -> None:
    global _LOCAL_RANK
    _LOCAL_RANK = int(rank)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all ranks (no-op in a single process)."""
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list:
    """Gather a picklable object from every rank; returns a list ordered by rank."""
    if get_world_size() == 1:
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor across ranks (returns a new tensor)."""
    t = t.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return t
