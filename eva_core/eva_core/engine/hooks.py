"""Hooks run by :class:`~eva_core.engine.Trainer` around every iteration (detectron2 style).

Each hook gets ``self.trainer`` before training starts and may implement ``before_train``,
``after_train``, ``before_step`` and ``after_step``. Hooks run in list order.
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from ..utils import comm
from ..utils.events import ConsoleWriter, JSONWriter, TensorboardWriter, max_memory_mb

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["HookBase", "IterationTimer", "LRScheduler", "EMAHook", "PeriodicCheckpointer",
           "EvalHook", "MetricsWriter", "CallbackHook"]

logger = logging.getLogger("eva_core.engine")


class HookBase:
    """Base class: override any of the four methods."""

    trainer: "Trainer"

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
    """Logs the lr of the group with the largest ``lr_scale`` and steps the scheduler."""

    def __init__(self, scheduler: Any = None):
        self._scheduler = scheduler

    @property
    def scheduler(self) -> Any:
        return self._scheduler if self._scheduler is not None else self.trainer.lr_scheduler

    def after_step(self) -> None:
        groups = self.trainer.optimizer.param_groups
        best = max(groups, key=lambda g: (g.get("lr_scale", 1.0), len(g["params"])))
        self.trainer.storage.put_scalar("lr", best["lr"])
        if self.scheduler is not None:
            self.scheduler.step()


class EMAHook(HookBase):
    """Updates the EMA weights after every optimizer step that was taken."""

    def after_step(self) -> None:
        t = self.trainer
        if t.ema is not None and t.step_taken:
            t.ema.update(t.unwrapped_model, step=t.iter)


class PeriodicCheckpointer(HookBase):
    """Saves ``model_{iter:07d}`` every ``period`` iterations and ``model_final`` at the end.

    No checkpoint is written while the trainer is in a streak of non-finite steps, and none after a
    failure, so the last good one is never replaced by a bad one.

    Args:
        period: iterations between checkpoints (0 or None: only the final one).
        final_weights_format: ``"safetensors"`` also exports the final model (and EMA) weights as
            ``model_final.safetensors`` / ``model_final_ema.safetensors``.
    """

    def __init__(self, period: int | None, final_weights_format: str = "pth"):
        if final_weights_format not in ("pth", "safetensors"):
            raise ValueError(f"checkpoint format must be 'pth' or 'safetensors', got {final_weights_format!r}")
        self.period = period or 0
        self.final_weights_format = final_weights_format

    def after_step(self) -> None:
        t = self.trainer
        it = t.iter
        is_final = it + 1 >= t.max_iter
        if not (is_final or (self.period and (it + 1) % self.period == 0)):
            return
        if t.nonfinite_streak > 0:
            logger.warning(f"Not saving a checkpoint at iteration {it}: the last {t.nonfinite_streak} "
                           "steps had non-finite losses")
            return
        if self.period and (it + 1) % self.period == 0:
            t.checkpointer.save(f"model_{it:07d}", iteration=it)
        if is_final:
            t.checkpointer.save("model_final", iteration=it)
            if self.final_weights_format == "safetensors" and t.checkpointer.save_dir is not None:
                t.checkpointer.save_weights(t.checkpointer.save_dir / "model_final.safetensors")
                if t.ema is not None:
                    t.checkpointer.save_weights(t.checkpointer.save_dir / "model_final_ema.safetensors",
                                                t.ema.module)


class EvalHook(HookBase):
    """Runs ``trainer.test()`` every ``period`` iterations and after the last one."""

    def __init__(self, period: int | None):
        self.period = period or 0

    def after_step(self) -> None:
        t = self.trainer
        it = t.iter
        if it + 1 >= t.max_iter or (self.period and (it + 1) % self.period == 0):
            results = t.test()
            for k, v in results.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    t.storage.put_scalar(f"eval/{k}", v)
            comm.synchronize()


class MetricsWriter(HookBase):
    """Every ``period`` iterations (and at the end) writes one record to ``metrics.json``,
    TensorBoard and the console, on rank 0.

    A record holds ``iteration``, ``lr``, ``total_loss``, every ``loss*`` key, other logged scalars,
    ``time`` and ``data_time`` (window medians, seconds), ``it/s``, ``eta_seconds`` and
    ``max_mem_mb``, plus ``eval/*`` results recorded since the previous record.
    """

    def __init__(self, period: int, output_dir: str | None, max_iter: int, tensorboard: bool = True):
        self.period = max(int(period), 1)
        self._writers: list = []
        if comm.is_main_process():
            self._writers.append(ConsoleWriter(max_iter))
            if output_dir:
                self._writers.append(JSONWriter(f"{output_dir}/metrics.json"))
                if tensorboard:
                    self._writers.append(TensorboardWriter(output_dir))
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
        for w in self._writers:
            w.write(rec)
        self._last_written = self.trainer.iter

    def after_step(self) -> None:
        t = self.trainer
        if (t.iter + 1) % self.period == 0 or t.iter + 1 >= t.max_iter:
            self.write()

    def after_train(self) -> None:
        for w in self._writers:
            w.close()
