"""Wrapping for several processes: DDP around the model, ZeRO-1 around the optimizer.

Its own module because both :mod:`eva_core.engine.config_build` (the trainer builder) and
:mod:`eva_core.engine.defaults` (where detectron2 users look for ``create_ddp_model``, re-exported
there) need it, and ``defaults`` imports ``config_build``.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ..utils import comm

__all__ = ["create_ddp_model", "build_zero_optimizer"]


def create_ddp_model(model: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes (on this
    rank's GPU when the model is on CUDA); return it unchanged otherwise."""
    if comm.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        ddp_kwargs = {"device_ids": [p.device.index], **ddp_kwargs}
    return DistributedDataParallel(model, **ddp_kwargs)


def build_zero_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Re-create ``optimizer`` as a torch ``ZeroRedundancyOptimizer`` (ZeRO stage 1).

    Param groups (with their ``lr_scale`` / ``weight_decay``) are kept; each rank stores the
    optimizer state of its shard only.

    Raises:
        ValueError: the optimizer already has state.
    """
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if len(optimizer.state) > 0:
        raise ValueError("build_zero_optimizer needs a fresh optimizer (its state is not empty)")
    groups = [dict(g) for g in optimizer.param_groups]
    # ``defaults`` can hold derived entries the constructor does not take (AdamW's
    # decoupled_weight_decay); the groups carry every value anyway
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **defaults)
