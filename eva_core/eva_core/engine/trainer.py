"""The one iteration-based training engine (detectron2's ``SimpleTrainer`` + ``AMPTrainer``).

One :class:`Trainer` serves every task: it pulls ``grad_accum_steps`` batches per iteration from
an infinite loader, sums the ``loss*`` entries the model returns, and takes an optimizer step with
optional fp16/bf16 autocast, dynamic loss scaling, gradient clipping, EMA, DDP, ZeRO-1 (torch) or
DeepSpeed. Non-finite losses skip the step; too many in a row stop training. Everything else
(lr schedule, checkpoints, evaluation, metrics) is a hook.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from typing import Any, Iterable

import torch
from torch import nn

from ..utils import comm
from ..utils.device import default_device, to_device
from ..utils.events import EventStorage
from . import hooks as H
from .amp import autocast, build_grad_scaler, resolve_amp_dtype
from .checkpointer import Checkpointer

__all__ = ["Trainer", "sum_losses", "build_zero_optimizer"]

logger = logging.getLogger("eva_core.engine")


def sum_losses(loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (in fp32) of every entry whose key starts with ``loss``.

    Raises:
        TypeError / ValueError: the model did not return a dict with at least one ``loss*`` key.
    """
    if not isinstance(loss_dict, dict):
        raise TypeError(f"in train mode the model must return a dict of losses, got {type(loss_dict).__name__}")
    losses = [v.float() for k, v in loss_dict.items() if k.startswith("loss")]
    if not losses:
        raise ValueError(f"the model's output has no key starting with 'loss' (keys: {sorted(loss_dict)})")
    return torch.stack([l.reshape(()) for l in losses]).sum()


def build_zero_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Re-create ``optimizer`` as a torch ``ZeroRedundancyOptimizer`` (ZeRO stage 1).

    Param groups (with their ``lr_scale`` / ``weight_decay``) are kept; each rank stores the
    optimizer state of its shard only.
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


class Trainer:
    """Iteration-based trainer.

    Args:
        model: returns a dict of scalar losses in train mode (``model(batch)``).
        data_loader: iterable of batches (infinite, e.g. ``eva_core.data.build_train_loader``;
            a finite one is restarted when exhausted). Its ``state_dict`` is checkpointed.
        optimizer: a torch optimizer over ``model``'s parameters.
        lr_scheduler: a fvcore ``ParamScheduler`` (wrapped in ``LRMultiplier``) or a torch lr
            scheduler stepped once per iteration.
        max_iter: number of iterations to train.
        device: defaults to this rank's CUDA device, else CPU.
        amp_enabled / amp_dtype: autocast with ``"fp16"`` (plus dynamic loss scaling) or ``"bf16"``.
        grad_accum_steps: micro-batches per iteration (DDP syncs gradients only on the last).
        clip_grad: max global gradient norm (None: no clipping).
        ema_decay: keep a ``timm.utils.ModelEmaV3`` of the weights with this decay.
        output_dir: where checkpoints, ``metrics.json`` and TensorBoard events go.
        checkpoint_period / max_to_keep / checkpoint_format: see ``PeriodicCheckpointer``.
        eval_period / evaluator / test_loader: periodic evaluation (and after the last iteration).
        log_period: iterations between metric records.
        max_nonfinite_steps: stop after this many consecutive non-finite steps.
        ddp_kwargs: passed to ``DistributedDataParallel`` when the world size is > 1.
        zero_stage: 1 shards optimizer state with ``ZeroRedundancyOptimizer``.
        deepspeed_config: a DeepSpeed config dict: train through a DeepSpeed engine instead.
        init_checkpoint: weights loaded by ``resume_or_load`` when not resuming.
        allow_pickle: let checkpoint loading unpickle arbitrary types (trusted files only).
        grad_scaler_kwargs: fp16 loss-scaler arguments (``train.amp.loss_scale``): ``init_scale``,
            ``growth_interval``, ``hysteresis``, ``min_scale``, ... (see ``amp.DynamicLossScaler``).
        extra_hooks: hooks appended after the default ones.
        tensorboard: write TensorBoard events next to ``metrics.json``.
    """

    def __init__(self, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *,
                 lr_scheduler: Any = None, max_iter: int, device: str | torch.device | None = None,
                 amp_enabled: bool = False, amp_dtype: str = "fp16", grad_accum_steps: int = 1,
                 clip_grad: float | None = None, ema_decay: float | None = None,
                 output_dir: str | None = None, checkpoint_period: int | None = 0,
                 max_to_keep: int | None = None, checkpoint_format: str = "pth",
                 eval_period: int | None = 0, evaluator: Any = None, test_loader: Iterable | None = None,
                 log_period: int = 20, max_nonfinite_steps: int = 20, ddp_kwargs: dict | None = None,
                 zero_stage: int = 0, deepspeed_config: dict | None = None,
                 init_checkpoint: str | None = None, allow_pickle: bool = False,
                 grad_scaler_kwargs: dict | None = None, extra_hooks: list | None = None,
                 tensorboard: bool = True):
        if max_iter <= 0 or grad_accum_steps < 1 or max_nonfinite_steps < 1:
            raise ValueError(f"need max_iter > 0, grad_accum_steps >= 1, max_nonfinite_steps >= 1; got "
                             f"{max_iter}, {grad_accum_steps}, {max_nonfinite_steps}")
        if zero_stage not in (0, 1):
            raise ValueError(f"train.zero_stage must be 0 or 1 (torch ZeroRedundancyOptimizer), got "
                             f"{zero_stage}; use train.deepspeed for stage 2")
        self.device = torch.device(device) if device is not None else default_device()
        self.max_iter = int(max_iter)
        self.grad_accum_steps = int(grad_accum_steps)
        self.clip_grad = clip_grad
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.amp_enabled = bool(amp_enabled)
        self.amp_dtype = resolve_amp_dtype(amp_dtype)
        self.output_dir = output_dir
        self.init_checkpoint = init_checkpoint
        self.data_loader = data_loader
        self.evaluator, self.test_loader = evaluator, test_loader
        self.iter = self.start_iter = 0
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.step_taken = False
        self.storage = EventStorage(0)
        self.last_eval_results: dict[str, Any] = {}
        self._data_iter = None

        model.to(self.device)
        self.unwrapped_model = model
        self.deepspeed = None
        if deepspeed_config is not None:
            from .deepspeed_engine import initialize_deepspeed

            self.deepspeed, optimizer = initialize_deepspeed(
                model, optimizer, deepspeed_config, grad_accum_steps=self.grad_accum_steps,
                clip_grad=clip_grad, amp_enabled=self.amp_enabled, amp_dtype=self.amp_dtype)
            self.model = self.deepspeed
        else:
            if zero_stage == 1 and comm.get_world_size() > 1:
                optimizer = build_zero_optimizer(optimizer)
            self.model = self._wrap_ddp(model, ddp_kwargs or {})
        self.optimizer = optimizer
        self.lr_scheduler = self._build_lr_scheduler(lr_scheduler)
        self.scaler = build_grad_scaler(self.device, self.amp_enabled and self.amp_dtype == torch.float16
                                        and self.deepspeed is None, **(grad_scaler_kwargs or {}))
        self.ema = None
        if ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=float(ema_decay))

        loader_state = data_loader if hasattr(data_loader, "state_dict") and hasattr(data_loader, "load_state_dict") else None
        self.checkpointer = Checkpointer(
            model, output_dir, max_to_keep=max_to_keep, allow_pickle=allow_pickle,
            optimizer=optimizer if self.deepspeed is None else None, scheduler=self.lr_scheduler,
            scaler=self.scaler if self.scaler.is_enabled() else None, ema=self.ema,
            data_loader=loader_state, deepspeed_engine=self.deepspeed)
        self._hooks: list[H.HookBase] = []
        self.register_hooks([
            H.IterationTimer(),
            H.LRScheduler(),
            H.EMAHook(),
            H.PeriodicCheckpointer(checkpoint_period, checkpoint_format),
            H.EvalHook(eval_period) if evaluator is not None and test_loader is not None else None,
            H.MetricsWriter(log_period, output_dir, self.max_iter, tensorboard=tensorboard),
            *(extra_hooks or []),
        ])

    # ------------------------------------------------------------------ setup
    def _wrap_ddp(self, model: nn.Module, ddp_kwargs: dict) -> nn.Module:
        if comm.get_world_size() == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            ddp_kwargs = {"device_ids": [self.device.index], **ddp_kwargs}
        return DistributedDataParallel(model, **ddp_kwargs)

    def _build_lr_scheduler(self, lr_scheduler: Any) -> Any:
        from fvcore.common.param_scheduler import ParamScheduler

        from ..optim.schedulers import LRMultiplier

        if isinstance(lr_scheduler, ParamScheduler):
            return LRMultiplier(self.optimizer, lr_scheduler, self.max_iter)
        if lr_scheduler is not None and getattr(lr_scheduler, "optimizer", self.optimizer) is not self.optimizer:
            raise ValueError("lr_scheduler drives another optimizer than the trainer's (ZeRO / DeepSpeed "
                             "rebuild it): pass a fvcore ParamScheduler instead")
        return lr_scheduler

    def register_hooks(self, hooks: list[H.HookBase | None]) -> None:
        """Append hooks (``None`` entries are skipped); they run in list order."""
        for h in hooks:
            if h is not None:
                h.trainer = self
                self._hooks.append(h)

    # ---------------------------------------------------------- checkpoints
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``last_checkpoint`` in ``output_dir`` if ``resume`` and it exists; otherwise
        load ``init_checkpoint`` model weights (if set) and start at iteration 0."""
        self.checkpointer.remove_stale_temp_files()
        comm.synchronize()
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            extra = self.checkpointer.load(path)
            self.start_iter = int(extra["iteration"]) + 1
            logger.info(f"Resumed from {path}: continuing at iteration {self.start_iter}")
            return
        self.start_iter = 0
        if self.init_checkpoint:
            load_model_weights(self.unwrapped_model, self.init_checkpoint,
                               allow_pickle=self.checkpointer.allow_pickle)

    # ----------------------------------------------------------------- train
    def train(self) -> dict[str, Any]:
        """Run iterations ``start_iter .. max_iter-1``; returns the last evaluation results."""
        logger.info(f"Starting training from iteration {self.start_iter} to {self.max_iter}")
        self.storage = EventStorage(self.start_iter)
        self._data_iter = None
        self._failed = False
        self.iter = self.start_iter
        try:
            self._call_hooks("before_train")
            for self.iter in range(self.start_iter, self.max_iter):
                self.storage.iter = self.iter
                self._call_hooks("before_step")
                self.run_step()
                self._call_hooks("after_step")
            self.iter = self.max_iter
        except BaseException:
            self._failed = True
            raise
        finally:
            self._call_hooks("after_train")
        return self.last_eval_results

    def _call_hooks(self, stage: str) -> None:
        for h in self._hooks:
            getattr(h, stage)()

    def _next_batch(self) -> Any:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        try:
            return next(self._data_iter)
        except StopIteration:  # finite loader: start another pass
            self._data_iter = iter(self.data_loader)
            return next(self._data_iter)

    def _sync_context(self, micro_step: int):
        # DDP all-reduces gradients only on the last micro-batch of an accumulation.
        if micro_step < self.grad_accum_steps - 1 and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def run_step(self) -> None:
        """One iteration: ``grad_accum_steps`` forward/backward passes and (maybe) a step."""
        if self.deepspeed is not None:
            from .deepspeed_engine import deepspeed_step

            return deepspeed_step(self)
        self.model.train()
        data_time, loss_dicts, totals = 0.0, [], []
        for micro in range(self.grad_accum_steps):
            t0 = time.perf_counter()
            batch = to_device(self._next_batch(), self.device)
            data_time += time.perf_counter() - t0
            with self._sync_context(micro):
                with autocast(self.device, self.amp_enabled, self.amp_dtype):
                    loss_dict = self.model(batch)
                total = sum_losses(loss_dict)
                # backward even when non-finite: DDP ranks must all join the gradient all-reduce
                self.scaler.scale(total / self.grad_accum_steps).backward()
            loss_dicts.append(loss_dict)
            totals.append(total.detach())
        finite = self._all_ranks_true(bool(torch.isfinite(torch.stack(totals)).all()))
        grad_norm = self._unscale_clip_and_norm() if finite else None
        if finite and grad_norm is not None and not self.scaler.is_enabled() and not math.isfinite(grad_norm):
            finite = False  # with fp16 the scaler skips overflow steps and lowers the scale itself
        self.step_taken = finite
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # an fp16 overflow makes the scaler skip the step (and maybe lower the scale)
            self.step_taken = not self.scaler.last_step_overflowed
        self.optimizer.zero_grad(set_to_none=True)
        self._record_step(loss_dicts, totals, data_time, grad_norm)
        self._track_nonfinite(finite, totals)

    def _all_ranks_true(self, flag: bool) -> bool:
        if comm.get_world_size() == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item() > 0)

    def _unscale_clip_and_norm(self) -> float:
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.unwrapped_model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        norm_value = norm.item()  # the one host sync of the step's gradient bookkeeping
        if self.clip_grad is not None and math.isfinite(norm_value):
            torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad, norm)
        return norm_value

    def _record_step(self, loss_dicts: list[dict], totals: list[torch.Tensor], data_time: float,
                     grad_norm: float | None) -> None:
        names = [k for k, v in loss_dicts[0].items()
                 if isinstance(v, torch.Tensor) and v.numel() == 1]
        # stay on the device until after the cross-rank mean: one device -> host copy per step
        values = torch.stack([torch.stack([d[k].detach().float().reshape(()) for k in names])
                              for d in loss_dicts]).mean(0) if names else torch.zeros(0, device=self.device)
        values = torch.cat([values.to(self.device), torch.stack(totals).float().mean().reshape(1).to(self.device)])
        values = comm.reduce_mean(values).cpu()
        for k, v in zip(names + ["total_loss"], values.tolist()):
            self.storage.put_scalar(k, v)
        self.storage.put_scalar("data_time", data_time)
        if grad_norm is not None:
            self.storage.put_scalar("grad_norm", grad_norm)
        if self.scaler.is_enabled():
            self.storage.put_scalar("loss_scale", self.scaler.get_scale())

    def _track_nonfinite(self, finite: bool, totals: list[torch.Tensor]) -> None:
        if finite:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.storage.put_scalar("nonfinite_steps", self.nonfinite_total)
        logger.warning(f"Non-finite loss or gradient at iteration {self.iter} (losses "
                       f"{[t.item() for t in totals]}): optimizer step skipped "
                       f"({self.nonfinite_streak} in a row, limit {self.max_nonfinite_steps})")
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            last = self.checkpointer.get_checkpoint_file()
            raise FloatingPointError(
                f"Training stopped at iteration {self.iter}: {self.nonfinite_streak} consecutive steps "
                f"with non-finite loss or gradients (train.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}). Last good checkpoint: "
                f"{last if last is not None else 'none saved'}")

    # ------------------------------------------------------------------ test
    def test(self) -> dict[str, Any]:
        """Evaluate the model (and its EMA as ``ema/<metric>``) on ``test_loader``."""
        if self.evaluator is None or self.test_loader is None:
            return {}
        results = dict(self._evaluate(self.unwrapped_model))
        if self.ema is not None:
            results.update({f"ema/{k}": v for k, v in self._evaluate(self.ema.module).items()})
        self.last_eval_results = results
        if results:
            logger.info(f"Evaluation at iteration {self.iter}: {results}")
        return results

    @torch.no_grad()
    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        self.evaluator.reset()
        try:
            for batch in self.test_loader:
                batch = to_device(batch, self.device)
                with autocast(self.device, self.amp_enabled, self.amp_dtype):
                    outputs = model(batch)
                self.evaluator.process(batch, outputs)
            return self.evaluator.evaluate() or {}
        finally:
            model.train(was_training)

    # ---------------------------------------------------------------- config
    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "Trainer":
        """Build a trainer from a detectron2-style LazyConfig (see docs/DESIGN.md)."""
        from .config_build import trainer_kwargs_from_config

        return cls(**{**trainer_kwargs_from_config(cfg), **overrides})


def load_model_weights(model: nn.Module, path: str, allow_pickle: bool = False) -> None:
    """Load ``train.init_checkpoint`` into ``model`` through ``eva_core.load_checkpoint`` when it
    exists (it maps foreign layouts), else a plain non-strict load of the unwrapped state dict."""
    try:
        from eva_core import load_checkpoint
    except ImportError:
        load_checkpoint = None
    if load_checkpoint is not None:
        load_checkpoint(model, path, allow_pickle=allow_pickle)
        return
    from ..checkpoint.io import load_file

    sd = load_file(path, allow_pickle=allow_pickle)
    for key in ("model", "module", "model_ema", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    result = model.load_state_dict(sd, strict=False)
    logger.info(f"Loaded {path}: missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
