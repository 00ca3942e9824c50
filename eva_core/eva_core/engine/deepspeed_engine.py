"""DeepSpeed as an optional engine (the paper's setup: ZeRO stage 1 with fp16 loss scaling).

:class:`DeepSpeedTrainer` is used when ``train.deepspeed`` is a DeepSpeed config dict. The trainer
keeps its hooks, loader and lr schedule; DeepSpeed owns the forward wrapper, loss scaling,
gradient accumulation, clipping and the sharded optimizer step. The Checkpointer saves the
engine's own state (optimizer shards, fp32 master weights, loss scaler) next to each checkpoint,
so a resumed run continues exactly. On CPU set ``DS_ACCELERATOR=cpu`` (gloo).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from ..utils import comm
from ..utils.device import to_device
from .amp import resolve_amp_dtype
from .train_loop import SimpleTrainer, sum_losses

__all__ = ["DeepSpeedTrainer", "initialize_deepspeed", "fill_deepspeed_config"]

logger = logging.getLogger("eva_core.engine")


def fill_deepspeed_config(config: dict, *, grad_accum_steps: int, clip_grad: float | None,
                          amp_enabled: bool, amp_dtype: torch.dtype | None) -> dict:
    """Fill the DeepSpeed keys the trainer's own settings define, refusing contradictions.

    Raises:
        ValueError: ``config`` sets ``gradient_accumulation_steps`` or ``gradient_clipping`` to a
            different value than ``train.grad_accum_steps`` / ``train.clip_grad``.
    """
    config = dict(config)
    for ds_key, value in (("gradient_accumulation_steps", grad_accum_steps),
                          ("gradient_clipping", clip_grad)):
        if value is None:
            continue
        if ds_key in config and config[ds_key] != value:
            raise ValueError(f"train.deepspeed.{ds_key}={config[ds_key]} contradicts the trainer's "
                             f"setting {value}; set one of them")
        config[ds_key] = value
    if "train_batch_size" not in config:
        config.setdefault("train_micro_batch_size_per_gpu", 1)  # only used for throughput logs
    if amp_enabled and "fp16" not in config and "bf16" not in config:
        key = "fp16" if amp_dtype == torch.float16 else "bf16"
        config[key] = {"enabled": True, **({"auto_cast": True} if key == "fp16" else {})}
    return config


def initialize_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict, **kw: Any):
    """Wrap ``model`` and ``optimizer`` in a DeepSpeed engine.

    Returns:
        ``(engine, optimizer)``: the engine to call for forward/backward/step, and the torch
        optimizer whose param groups DeepSpeed steps (the lr schedule writes into them).
    """
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError("train.deepspeed is set but deepspeed is not installed "
                          "(pip install deepspeed==0.19.8)") from e
    if comm.is_dist():
        # DeepSpeed reads these even when the process group already exists (our launcher and
        # torch.multiprocessing do not set them; torchrun does)
        os.environ.setdefault("LOCAL_RANK", str(comm.get_local_rank()))
        os.environ.setdefault("RANK", str(comm.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(comm.get_world_size()))
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    config = fill_deepspeed_config(config, **kw)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


class DeepSpeedTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` whose forward, backward and step go through a DeepSpeed engine.

    DeepSpeed owns loss scaling, gradient accumulation (its ``gradient_accumulation_steps`` is
    ``grad_accum_steps``), clipping and the sharded optimizer step; the trainer keeps its hooks,
    loader, lr schedule (written into ``optimizer``'s param groups), metrics and NaN guard.

    Args:
        model: the unwrapped model (DeepSpeed wraps it).
        data_loader, optimizer: as :class:`SimpleTrainer`.
        deepspeed_config: a DeepSpeed config dict (``train.deepspeed``); the keys the trainer's own
            settings define are filled in by :func:`fill_deepspeed_config`.
        precision: ``None`` (fp32) or ``"fp16"`` / ``"bf16"``: the DeepSpeed precision section
            added when the config has none.
        **kwargs: ``grad_accum_steps``, ``clip_grad``, ``max_nonfinite_steps``, ``device``.

    ``engine`` is the DeepSpeed engine (also ``model``); it is checkpointed by the
    :class:`~eva_core.engine.checkpointer.Checkpointer` given it as ``deepspeed_engine``.
    """

    def __init__(self, model: torch.nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer, *,
                 deepspeed_config: dict, precision: str | torch.dtype | None = None, **kwargs: Any):
        super().__init__(model, data_loader, optimizer, **kwargs)
        amp_dtype = resolve_amp_dtype(precision) if precision is not None else None
        self.engine, self.optimizer = initialize_deepspeed(
            model, optimizer, deepspeed_config, grad_accum_steps=self.grad_accum_steps,
            clip_grad=self.clip_grad, amp_enabled=amp_dtype is not None, amp_dtype=amp_dtype)
        self.model = self.engine

    def run_step(self) -> None:
        """One iteration through the DeepSpeed engine (it accumulates and steps at the boundary)."""
        engine = self.engine
        engine.train()
        data_time, loss_dicts, totals = 0.0, [], []
        skipped_before = getattr(engine, "skipped_steps", 0)
        for _ in range(self.grad_accum_steps):
            t0 = time.perf_counter()
            batch = to_device(self._next_batch(), self.device)
            data_time += time.perf_counter() - t0
            loss_dict = engine(batch)
            total = sum_losses(loss_dict)
            engine.backward(total)  # DeepSpeed divides by gradient_accumulation_steps
            engine.step()
            loss_dicts.append(loss_dict)
            totals.append(total.detach())
        finite = self._all_ranks_true(bool(torch.isfinite(torch.stack(totals)).all()))
        # DeepSpeed's fp16 optimizer skips overflowing (inf/NaN) steps itself
        self.step_taken = finite and getattr(engine, "skipped_steps", 0) == skipped_before
        grad_norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
        grad_norm = float(grad_norm) if isinstance(grad_norm, (int, float, torch.Tensor)) else None
        self._write_metrics(loss_dicts, totals, data_time, grad_norm)
        self._track_nonfinite(finite, totals)
