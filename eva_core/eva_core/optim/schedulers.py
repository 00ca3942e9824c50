"""Per-iteration learning-rate schedules.

A schedule is a fvcore ``ParamScheduler``: a multiplier as a function of training progress in
[0, 1). ``LRMultiplier`` applies it to a torch optimizer every iteration, respecting the
``lr_scale`` that layer-wise lr decay puts on each param group.
"""
from __future__ import annotations

from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["LRMultiplier", "WarmupParamScheduler", "cosine_with_warmup", "step_with_warmup",
           "poly_with_warmup"]


class WarmupParamScheduler(CompositeParamScheduler):
    """Linear warmup from ``warmup_factor * scheduler(warmup_length)`` into ``scheduler``.

    Args:
        scheduler: the schedule after warmup (evaluated on the full [0, 1) progress range).
        warmup_factor: multiplier at progress 0, relative to the schedule's value at the end of
            warmup.
        warmup_length: fraction of training spent warming up.
    """

    def __init__(self, scheduler: ParamScheduler, warmup_factor: float, warmup_length: float):
        if not 0.0 <= warmup_length < 1.0:
            raise ValueError(f"warmup_length must be a fraction in [0, 1), got {warmup_length}")
        end_value = scheduler(warmup_length)
        warmup = LinearParamScheduler(warmup_factor * end_value, end_value)
        super().__init__([warmup, scheduler], interval_scaling=["rescaled", "fixed"],
                         lengths=[warmup_length, 1 - warmup_length])


def _warmup_fraction(warmup_iters: int | None, warmup_fraction: float | None, max_iter: int | None) -> float:
    if warmup_fraction is not None:
        return float(warmup_fraction)
    if warmup_iters is None:
        return 0.0
    if not max_iter:
        raise ValueError("warmup_iters needs max_iter to turn iterations into a fraction of training")
    return warmup_iters / max_iter


def _with_warmup(schedule: ParamScheduler, frac: float, warmup_factor: float) -> ParamScheduler:
    return WarmupParamScheduler(schedule, warmup_factor, frac) if frac > 0 else schedule


def cosine_with_warmup(*, max_iter: int | None = None, warmup_iters: int | None = None,
                       warmup_fraction: float | None = None, warmup_factor: float = 1e-3,
                       min_ratio: float = 0.0) -> ParamScheduler:
    """Linear warmup from ``warmup_factor`` to 1, then cosine from 1 to ``min_ratio`` over the
    remaining iterations (BEiT / EVA's per-step schedule: the peak is reached when warmup ends).

    Give the warmup as ``warmup_iters`` (with ``max_iter``) or as ``warmup_fraction``. EVA MIM:
    lr 1e-3, min lr 1e-5 -> ``min_ratio=0.01``; warmup from 1e-6 -> ``warmup_factor=1e-3``.
    """
    frac = _warmup_fraction(warmup_iters, warmup_fraction, max_iter)
    cosine = CosineParamScheduler(1.0, min_ratio)
    if frac <= 0:
        return cosine
    if frac >= 1:
        raise ValueError(f"warmup must be shorter than training, got a fraction of {frac}")
    return CompositeParamScheduler([LinearParamScheduler(warmup_factor, 1.0), cosine],
                                   interval_scaling=["rescaled", "rescaled"], lengths=[frac, 1 - frac])


def step_with_warmup(*, max_iter: int, steps: list[int], gamma: float = 0.1,
                     warmup_iters: int = 0, warmup_factor: float = 1e-3) -> ParamScheduler:
    """Piecewise constant: multiply by ``gamma`` at each iteration in ``steps`` (detectron2 style)."""
    values = [gamma ** i for i in range(len(steps) + 1)]
    schedule = MultiStepParamScheduler(values, num_updates=max_iter, milestones=list(steps))
    return _with_warmup(schedule, warmup_iters / max_iter, warmup_factor)


def poly_with_warmup(*, max_iter: int, power: float = 1.0, warmup_iters: int = 0,
                     warmup_factor: float = 1e-3) -> ParamScheduler:
    """Polynomial decay from 1 to 0 (mmseg's ``poly`` schedule, power 1 for EVA segmentation)."""
    return _with_warmup(PolynomialDecayParamScheduler(1.0, power), warmup_iters / max_iter, warmup_factor)


class LRMultiplier(LRScheduler):
    """Sets ``lr = initial_lr * multiplier(iter / max_iter) * group["lr_scale"]`` every step.

    ``initial_lr`` is each group's lr when the scheduler is created; ``lr_scale`` (default 1) is
    what layer-wise lr decay attaches to a group. Call ``step()`` once per iteration.

    Args:
        optimizer: the optimizer whose groups are driven.
        multiplier: a fvcore ``ParamScheduler`` over progress in [0, 1).
        max_iter: number of iterations the multiplier spans.
        last_iter: iteration to start at (-1 for a fresh run).
    """

    def __init__(self, optimizer: Optimizer, multiplier: ParamScheduler, max_iter: int, last_iter: int = -1):
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(f"multiplier must be a fvcore ParamScheduler, got {type(multiplier).__name__}")
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict:
        # The fvcore object is rebuilt from the config; keeping it out leaves only plain types,
        # so checkpoints load with weights_only=True.
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch,
                "_last_lr": list(getattr(self, "_last_lr", []))}

    def multiplier_at(self, iteration: int) -> float:
        return self._multiplier(min(iteration / self._max_iter, 1.0 - 1e-9))

    def get_lr(self) -> list[float]:
        m = self.multiplier_at(self.last_epoch)
        return [base * m * group.get("lr_scale", 1.0)
                for base, group in zip(self.base_lrs, self.optimizer.param_groups)]


# Re-exported so configs can write ``L(CosineParamScheduler)(...)`` from one place.
__all__ += ["CosineParamScheduler", "MultiStepParamScheduler", "ConstantParamScheduler",
            "LinearParamScheduler", "PolynomialDecayParamScheduler", "CompositeParamScheduler"]
