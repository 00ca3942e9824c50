"""Hooks run by a :class:`~eva_core.engine.train_loop.TrainerBase` around every iteration
(detectron2 style).

Every hook is given the objects it acts on (checkpointer, evaluation function, optimizer and
scheduler, EMA, writers) when it is constructed. From the trainer it reads only public state:
``iter``, ``max_iter``, ``storage`` and, where documented, ``step_taken`` / ``nonfinite_streak``.
The trainer sets ``hook.trainer`` in ``register_hooks``; hooks run in registration order.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..evaluation.testing import flatten_results_dict, print_csv_format
from ..utils import comm
from ..utils.events import ConsoleWriter, JSONWriter, TensorboardWriter, max_memory_mb

__all__ = ["HookBase", "CallbackHook", "IterationTimer", "LRScheduler", "EMAHook", "PeriodicCheckpointer",
           "EvalHook", "PeriodicWriter", "MetricsWriter", "default_writers"]

logger = logging.getLogger("eva_core.engine")


class HookBase:
    """Base class: override any of the four methods. ``self.trainer`` is set on registration."""

    trainer: Any = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class CallbackHook(HookBase):
    """A hook made of plain functions, each called with the trainer."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._fns = dict(before_train=before_train, after_train=after_train,
                         before_step=before_step, after_step=after_step)

    def _call(self, name: str) -> None:
        if self._fns[name] is not None:
            self._fns[name](self.trainer)

    def before_train(self) -> None:
        self._call("before_train")

    def after_train(self) -> None:
        self._call("after_train")

    def before_step(self) -> None:
        self._call("before_step")

    def after_step(self) -> None:
        self._call("after_step")


class IterationTimer(HookBase):
    """Records the wall time of every iteration as ``time`` (data loading is ``data_time``)."""

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._start)


class LRScheduler(HookBase):
    """Logs the lr of the group with the largest ``lr_scale`` as ``lr`` and steps the scheduler
    after every iteration.

    Args:
        optimizer: the optimizer the trainer steps (ZeRO / DeepSpeed rebuild it: pass the
            trainer's ``optimizer``).
        scheduler: a torch lr scheduler over ``optimizer`` (e.g.
            :class:`~eva_core.optim.LRMultiplier`), a fvcore ``ParamScheduler`` (wrapped in an
            ``LRMultiplier`` over the trainer's ``max_iter`` when training starts; not
            checkpointable then), or None (only log the lr).

    Raises:
        ValueError: ``scheduler`` drives another optimizer.
    """

    def __init__(self, optimizer: Any, scheduler: Any = None):
        from fvcore.common.param_scheduler import ParamScheduler

        if (scheduler is not None and not isinstance(scheduler, ParamScheduler)
                and getattr(scheduler, "optimizer", optimizer) is not optimizer):
            raise ValueError("the lr scheduler drives another optimizer than the trainer's (ZeRO / DeepSpeed "
                             "rebuild it): build it over trainer.optimizer, or pass a fvcore ParamScheduler")
        self.optimizer = optimizer
        self.scheduler = scheduler

    def before_train(self) -> None:
        from fvcore.common.param_scheduler import ParamScheduler

        from ..optim.schedulers import LRMultiplier

        if isinstance(self.scheduler, ParamScheduler):
            self.scheduler = LRMultiplier(self.optimizer, self.scheduler, self.trainer.max_iter,
                                          last_iter=self.trainer.start_iter - 1)

    def after_step(self) -> None:
        groups = self.optimizer.param_groups
        best = max(groups, key=lambda g: (g.get("lr_scale", 1.0), len(g["params"])))
        self.trainer.storage.put_scalar("lr", best["lr"])
        if self.scheduler is not None:
            self.scheduler.step()


class EMAHook(HookBase):
    """Updates an EMA of ``model``'s weights after every iteration whose optimizer step was
    taken (reads the trainer's ``step_taken``).

    Args:
        ema: a ``timm.utils.ModelEmaV3`` (anything with ``update(model, step=...)``).
        model: the unwrapped model being trained.
    """

    def __init__(self, ema: Any, model: nn.Module):
        self.ema = ema
        self.model = model

    def after_step(self) -> None:
        if self.trainer.step_taken:
            self.ema.update(self.model, step=self.trainer.iter)


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` iterations and ``model_final`` after the last.

    No checkpoint is written while the trainer is in a streak of non-finite steps (its
    ``nonfinite_streak``), and none after a failure, so the last good one is never replaced by a
    bad one. After each save (and when training starts) the trainer's ``last_checkpoint`` names
    the newest file, which a ``FloatingPointError`` then points to.

    Args:
        checkpointer: a :class:`~eva_core.engine.checkpointer.Checkpointer`.
        period: iterations between checkpoints (0 or None: only the final one).
        max_iter: the final iteration + 1 (default: the trainer's ``max_iter``).
        final_weights_format: ``"safetensors"`` also exports the final model (and EMA) weights as
            ``model_final.safetensors`` / ``model_final_ema.safetensors``.
        ema_model: the EMA module exported with ``final_weights_format="safetensors"``.
    """

    def __init__(self, checkpointer: Any, period: int | None, max_iter: int | None = None, *,
                 final_weights_format: str = "pth", ema_model: nn.Module | None = None):
        if final_weights_format not in ("pth", "safetensors"):
            raise ValueError(f"train.checkpointer.format must be 'pth' or 'safetensors', "
                             f"got {final_weights_format!r}")
        self.checkpointer = checkpointer
        self.period = int(period or 0)
        self.max_iter = max_iter
        self.final_weights_format = final_weights_format
        self.ema_model = ema_model

    def _note_last_checkpoint(self) -> None:
        last = self.checkpointer.get_checkpoint_file()
        if hasattr(self.trainer, "last_checkpoint"):
            self.trainer.last_checkpoint = str(last) if last is not None else None

    def before_train(self) -> None:
        self._note_last_checkpoint()

    def after_step(self) -> None:
        it = self.trainer.iter
        max_iter = self.max_iter if self.max_iter is not None else self.trainer.max_iter
        is_final = it + 1 >= max_iter
        is_periodic = bool(self.period) and (it + 1) % self.period == 0
        if not (is_final or is_periodic):
            return
        streak = getattr(self.trainer, "nonfinite_streak", 0)
        if streak > 0:
            logger.warning(f"Not saving a checkpoint at iteration {it}: the last {streak} steps had "
                           "non-finite losses")
            return
        if is_periodic:
            self.checkpointer.save(f"model_{it:07d}", iteration=it)
        if is_final:
            self.checkpointer.save("model_final", iteration=it)
            save_dir = self.checkpointer.save_dir
            if self.final_weights_format == "safetensors" and save_dir is not None:
                self.checkpointer.save_weights(Path(save_dir) / "model_final.safetensors")
                if self.ema_model is not None:
                    self.checkpointer.save_weights(Path(save_dir) / "model_final_ema.safetensors",
                                                   self.ema_model)
        self._note_last_checkpoint()


class EvalHook(HookBase):
    """Runs ``eval_function`` every ``period`` iterations and after the last one.

    Its results (possibly nested: ``{"coco_val": {"bbox": {"AP": ..}}}``) are flattened with
    ``/`` and every finite number is put into the trainer's storage as ``eval/<flat name>``
    (``eval/coco_val/bbox/AP``), so the writers send it to ``metrics.json`` and TensorBoard.

    Args:
        period: iterations between evaluations (0 or None: only after the last iteration).
        eval_function: takes no arguments, returns a dict of results (``{}`` on ranks > 0).
        max_iter: the final iteration + 1 (default: the trainer's ``max_iter``).

    ``last_results`` holds the results of the latest evaluation.
    """

    def __init__(self, period: int | None, eval_function: Callable[[], dict], max_iter: int | None = None):
        self.period = int(period or 0)
        self.eval_function = eval_function
        self.max_iter = max_iter
        self.last_results: dict[str, Any] = {}

    def _do_eval(self) -> None:
        results = self.eval_function() or {}
        if not isinstance(results, dict):
            raise TypeError(f"EvalHook: eval_function must return a dict, got {type(results).__name__}")
        self.last_results = results
        if results:
            logger.info(f"Evaluation at iteration {self.trainer.iter}:")
            print_csv_format(results)
        for k, v in flatten_results_dict(results).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.trainer.storage.put_scalar(f"eval/{k}", v)
        comm.synchronize()

    def after_step(self) -> None:
        it = self.trainer.iter
        max_iter = self.max_iter if self.max_iter is not None else self.trainer.max_iter
        if it + 1 >= max_iter or (self.period and (it + 1) % self.period == 0):
            self._do_eval()


def default_writers(output_dir: str | None, max_iter: int, tensorboard: bool = True) -> list:
    """Console, ``{output_dir}/metrics.json`` and TensorBoard writers on rank 0 (none elsewhere)."""
    if not comm.is_main_process():
        return []
    writers: list = [ConsoleWriter(max_iter)]
    if output_dir:
        writers.append(JSONWriter(f"{output_dir}/metrics.json"))
        if tensorboard:
            writers.append(TensorboardWriter(output_dir))
    return writers


class PeriodicWriter(HookBase):
    """Every ``period`` iterations (and after the last) writes one metrics record to each writer.

    A record holds ``iteration``, ``lr``, ``total_loss``, every ``loss*`` key, other logged scalars,
    ``time`` and ``data_time`` (window medians, seconds), ``it/s``, ``eta_seconds`` and
    ``max_mem_mb``, plus the ``eval/*`` results recorded since the previous record.

    Args:
        writers: objects with ``write(record)`` and ``close()`` (see :func:`default_writers`).
        period: iterations between records.
    """

    def __init__(self, writers: Sequence[Any], period: int = 20):
        self.writers = list(writers)
        self.period = max(int(period), 1)
        self._last_written = -1

    def record(self) -> dict[str, Any]:
        t = self.trainer
        s = t.storage
        rec: dict[str, Any] = {"iteration": t.iter}
        rec.update(s.latest_since(self._last_written + 1))
        for k in ("time", "data_time"):
            rec[k] = s.median(k)
        avg = s.avg("time")
        rec["it/s"] = 1.0 / avg if avg > 0 else float("nan")
        rec["eta_seconds"] = max(t.max_iter - t.iter - 1, 0) * rec["time"]
        rec["max_mem_mb"] = max_memory_mb()
        return {k: v for k, v in rec.items() if not (isinstance(v, float) and math.isnan(v))}

    def write(self) -> None:
        if self.trainer.iter <= self._last_written:
            return
        rec = self.record()
        for w in self.writers:
            w.write(rec)
        self._last_written = self.trainer.iter

    def after_step(self) -> None:
        t = self.trainer
        if (t.iter + 1) % self.period == 0 or t.iter + 1 >= t.max_iter:
            self.write()

    def after_train(self) -> None:
        for w in self.writers:
            w.close()


class MetricsWriter(PeriodicWriter):
    """:class:`PeriodicWriter` with :func:`default_writers` (console, ``metrics.json``, TensorBoard).

    Args:
        period: iterations between records.
        output_dir: folder of ``metrics.json`` and the TensorBoard events (None: console only).
        max_iter: for the console's ETA.
        tensorboard: also write TensorBoard events.
    """

    def __init__(self, period: int, output_dir: str | None, max_iter: int, tensorboard: bool = True):
        super().__init__(default_writers(output_dir, max_iter, tensorboard), period)
