"""The training loop, in detectron2's shape: :class:`TrainerBase` (hooks around iterations),
:class:`SimpleTrainer` (one optimizer step per iteration) and :class:`AMPTrainer` (mixed precision).

The trainers know the model, its data and its optimizer, nothing else. The lr schedule,
checkpoints, evaluation, EMA and metric writing are hooks that are given the objects they act on
(:mod:`eva_core.engine.hooks`); :func:`eva_core.engine.defaults.default_hooks` composes them from a
config.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from typing import Any, Iterable

import torch
from torch import nn

from ..utils import comm
from ..utils.device import to_device
from ..utils.events import EventStorage
from .amp import build_grad_scaler, resolve_amp_dtype
from .checkpointer import unwrap_model

__all__ = ["TrainerBase", "SimpleTrainer", "AMPTrainer", "sum_losses"]

logger = logging.getLogger("eva_core.engine")


def sum_losses(loss_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (in fp32) of every entry whose key starts with ``loss``.

    Raises:
        TypeError / ValueError: the model did not return a dict with at least one ``loss*`` key.
    """
    if not isinstance(loss_dict, dict):
        raise TypeError(f"in train mode the model must return a dict of losses, "
                        f"got {type(loss_dict).__name__}")
    losses = [v.float() for k, v in loss_dict.items() if k.startswith("loss")]
    if not losses:
        raise ValueError(f"the model's output has no key starting with 'loss' (keys: {sorted(loss_dict)})")
    return torch.stack([loss.reshape(()) for loss in losses]).sum()


class TrainerBase:
    """Iterations with hooks: ``before_train``, then ``before_step`` / ``run_step`` /
    ``after_step`` for every iteration, then ``after_train`` (also after an exception).

    Public state that hooks may read: ``iter`` (the current iteration), ``start_iter``,
    ``max_iter`` and ``storage`` (an :class:`~eva_core.utils.events.EventStorage` of scalars).
    """

    def __init__(self) -> None:
        self._hooks: list = []
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0
        self.storage = EventStorage(0)

    def register_hooks(self, hooks: Iterable[Any]) -> None:
        """Append hooks (``None`` entries are skipped); they run in registration order.

        Each hook gets a weak reference to this trainer as ``hook.trainer`` (hooks are owned by
        the trainer, so a strong one would be a reference cycle).
        """
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1``."""
        logger.info(f"Starting training from iteration {start_iter} to {max_iter}")
        self.iter = self.start_iter = int(start_iter)
        self.max_iter = int(max_iter)
        self.storage = EventStorage(self.start_iter)
        try:
            self.before_train()
            for self.iter in range(self.start_iter, self.max_iter):
                self.storage.iter = self.iter
                self.before_step()
                self.run_step()
                self.after_step()
            # after the loop ``iter`` is max_iter, as in detectron2 (the loop variable stops one short)
            self.iter = self.max_iter
        finally:
            self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One iteration = ``grad_accum_steps`` forward/backward passes, then one optimizer step.

    The losses are the ``loss*`` entries of the dict ``model(batch)`` returns (summed in fp32).
    Gradients of the micro-batches accumulate (a DDP model all-reduces only on the last one),
    the global gradient norm is logged as ``grad_norm`` and clipped to ``clip_grad``. A step whose
    loss or gradient is not finite on any rank is skipped (weights and optimizer state untouched);
    ``max_nonfinite_steps`` of them in a row stop training with a ``FloatingPointError``.

    Args:
        model: returns a dict of scalar losses in train mode; may be wrapped in
            ``DistributedDataParallel`` (see :func:`eva_core.engine.defaults.create_ddp_model`).
        data_loader: iterable of batches (infinite, e.g. ``eva_core.data.build_train_loader``; a
            finite one is restarted when exhausted).
        optimizer: a torch optimizer over the model's parameters.
        grad_accum_steps: micro-batches per iteration.
        clip_grad: max global gradient norm (None: no clipping).
        max_nonfinite_steps: stop after this many consecutive non-finite steps.
        device: where batches go (default: the device of the model's first parameter).

    Public state (for hooks): ``step_taken`` (the last iteration changed the weights),
    ``nonfinite_streak`` (consecutive non-finite iterations up to the last one),
    ``nonfinite_total`` and ``last_checkpoint`` (the newest complete checkpoint file of the run,
    named in the error when training stops; :class:`~eva_core.engine.hooks.PeriodicCheckpointer`
    keeps it up to date).
    """

    def __init__(self, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *,
                 grad_accum_steps: int = 1, clip_grad: float | None = None, max_nonfinite_steps: int = 20,
                 device: str | torch.device | None = None):
        super().__init__()
        if grad_accum_steps < 1 or max_nonfinite_steps < 1:
            raise ValueError(f"need grad_accum_steps >= 1 and max_nonfinite_steps >= 1, got grad_accum_steps="
                             f"{grad_accum_steps}, max_nonfinite_steps={max_nonfinite_steps}")
        if clip_grad is not None and not clip_grad > 0:
            raise ValueError(f"clip_grad must be a positive max gradient norm or None, got {clip_grad!r}")
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.grad_accum_steps = int(grad_accum_steps)
        self.clip_grad = clip_grad
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)
        self.step_taken = False
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.last_checkpoint: str | None = None
        self._data_iter = None

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model inside DDP / DeepSpeed wrappers."""
        return unwrap_model(self.model)

    def train(self, start_iter: int, max_iter: int) -> None:
        self._data_iter = None  # a new pass starts from the loader's (possibly restored) position
        super().train(start_iter, max_iter)

    # ----------------------------------------------------------------- one step
    def run_step(self) -> None:
        """One iteration: ``grad_accum_steps`` forward/backward passes and (maybe) a step."""
        self.model.train()
        data_time, loss_dicts, totals = 0.0, [], []
        for micro in range(self.grad_accum_steps):
            t0 = time.perf_counter()
            batch = to_device(self._next_batch(), self.device)
            data_time += time.perf_counter() - t0
            with self._sync_context(micro):
                with self._autocast():
                    loss_dict = self.model(batch)
                total = sum_losses(loss_dict)
                # backward even when non-finite: DDP ranks must all join the gradient all-reduce
                self._backward(total / self.grad_accum_steps)
            loss_dicts.append(loss_dict)
            totals.append(total.detach())
        finite = self._all_ranks_true(bool(torch.isfinite(torch.stack(totals)).all()))
        grad_norm = self._clip_and_norm() if finite else None
        if grad_norm is not None and not math.isfinite(grad_norm) and not self._scaler_handles_overflow:
            finite = False  # (an fp16 scaler instead skips the step and lowers its scale itself)
        self.step_taken = self._optimizer_step() if finite else False
        self.optimizer.zero_grad(set_to_none=True)
        self._write_metrics(loss_dicts, totals, data_time, grad_norm)
        self._track_nonfinite(finite, totals)

    def _next_batch(self) -> Any:
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        try:
            return next(self._data_iter)
        except StopIteration:  # finite loader: start another pass
            self._data_iter = iter(self.data_loader)
            return next(self._data_iter)

    def _sync_context(self, micro_step: int):
        # DDP all-reduces gradients only on the last micro-batch of an accumulation
        if micro_step < self.grad_accum_steps - 1 and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _autocast(self):
        return contextlib.nullcontext()

    #: AMPTrainer's fp16 loss scaler skips overflowing steps itself (not counted as non-finite)
    _scaler_handles_overflow = False

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _unscale(self) -> None:
        """Bring gradients to their true scale before the norm is taken (AMP)."""

    def _clip_and_norm(self) -> float:
        self._unscale()
        params = [p for p in self.unwrapped_model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        norm_value = norm.item()  # the one host sync of the step's gradient bookkeeping
        if self.clip_grad is not None and math.isfinite(norm_value):
            torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad, norm)
        return norm_value

    def _optimizer_step(self) -> bool:
        """Step the optimizer; returns whether the weights changed."""
        self.optimizer.step()
        return True

    def _all_ranks_true(self, flag: bool) -> bool:
        if comm.get_world_size() == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item() > 0)

    # -------------------------------------------------------------- bookkeeping
    def _write_metrics(self, loss_dicts: list[dict], totals: list[torch.Tensor], data_time: float,
                       grad_norm: float | None) -> None:
        """Put the rank-averaged losses (every scalar tensor the model returned, and
        ``total_loss``), ``data_time`` and ``grad_norm`` into ``storage``."""
        names = [k for k, v in loss_dicts[0].items() if isinstance(v, torch.Tensor) and v.numel() == 1]
        # stay on the device until after the cross-rank mean: one device -> host copy per step
        values = torch.stack([torch.stack([d[k].detach().float().reshape(()) for k in names])
                              for d in loss_dicts]).mean(0) if names else torch.zeros(0, device=self.device)
        total = torch.stack(totals).float().mean().reshape(1)
        values = torch.cat([values.to(self.device), total.to(self.device)])
        values = comm.reduce_mean(values).cpu()
        for k, v in zip(names + ["total_loss"], values.tolist()):
            self.storage.put_scalar(k, v)
        self.storage.put_scalar("data_time", data_time)
        if grad_norm is not None:
            self.storage.put_scalar("grad_norm", grad_norm)

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
            raise FloatingPointError(
                f"Training stopped at iteration {self.iter}: {self.nonfinite_streak} consecutive steps "
                f"with non-finite loss or gradients (train.max_nonfinite_steps="
                f"{self.max_nonfinite_steps}). Last good checkpoint: "
                f"{self.last_checkpoint if self.last_checkpoint is not None else 'none saved'}")


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with the forward pass under ``torch.autocast``.

    With fp16 the loss is scaled by EVA's dynamic loss scaler
    (:class:`~eva_core.engine.amp.DynamicLossScaler`: DeepSpeed's hysteresis and minimum scale);
    a step whose scaled gradients overflow is skipped and the scale lowered by the scaler, which
    does not count as a non-finite step. bf16 needs no scaler.

    Args:
        *args, **kwargs: as :class:`SimpleTrainer`.
        precision: ``"fp16"`` / ``"float16"`` or ``"bf16"`` / ``"bfloat16"`` (or a torch dtype).
        grad_scaler: an fp16 loss scaler; by default
            :func:`~eva_core.engine.amp.build_grad_scaler` with ``loss_scale`` as its arguments.
        loss_scale: ``train.amp.loss_scale`` (``init_scale``, ``growth_interval``,
            ``hysteresis``, ``min_scale``), used when ``grad_scaler`` is not given.

    ``grad_scaler`` is public (checkpointed as ``scaler`` when enabled); ``loss_scale`` is logged.
    """

    def __init__(self, model: nn.Module, data_loader: Iterable, optimizer: torch.optim.Optimizer, *,
                 precision: str | torch.dtype = "fp16", grad_scaler: Any = None,
                 loss_scale: dict | None = None, **kwargs: Any):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = resolve_amp_dtype(precision)
        if grad_scaler is None:
            fp16 = self.precision == torch.float16
            grad_scaler = build_grad_scaler(self.device, fp16, **(loss_scale or {}))
        self.grad_scaler = grad_scaler

    @property
    def _scaler_handles_overflow(self) -> bool:  # type: ignore[override]
        return self.grad_scaler.is_enabled()

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def _unscale(self) -> None:
        self.grad_scaler.unscale_(self.optimizer)

    def _optimizer_step(self) -> bool:
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        # an fp16 overflow makes the scaler skip the step (and maybe lower the scale)
        return not getattr(self.grad_scaler, "last_step_overflowed", False)

    def _write_metrics(self, *args: Any) -> None:
        super()._write_metrics(*args)
        if self.grad_scaler.is_enabled():
            self.storage.put_scalar("loss_scale", self.grad_scaler.get_scale())
