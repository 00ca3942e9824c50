"""Helpers for torch.distributed that also work in a single process."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_dist", "get_rank", "get_world_size", "get_local_rank", "is_main_process",
           "synchronize", "all_gather_object", "reduce_mean", "shared_store"]

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


def shared_store() -> dist.Store | None:
    """The key-value store of the default process group (None in a single process).

    Every rank reads and writes it without a collective, so a rank can publish its state there
    while another rank is blocked in one (the heartbeat does). The store is the one the group
    was initialised with: a ``TCPStore`` hosted by rank 0 (``tcp://`` and ``env://``) or a
    ``FileStore`` (``file://``).
    """
    if not is_dist():
        return None
    # torch has no public getter for the default group's store; this one has existed since 1.x
    return dist.distributed_c10d._get_default_store()
