"""Mixed precision: autocast contexts and the fp16 dynamic loss scaler."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["resolve_amp_dtype", "autocast", "DynamicLossScaler", "build_grad_scaler"]

_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_amp_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp16"`` / ``"bf16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(name, torch.dtype):
        if name not in (torch.float16, torch.bfloat16):
            raise ValueError(f"train.amp.dtype must be fp16 or bf16, got {name}")
        return name
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"train.amp.dtype must be one of 'fp16', 'bf16', got {name!r}") from None


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    """``torch.autocast`` for the device type, or a null context when AMP is off."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class DynamicLossScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` with DeepSpeed's ``hysteresis`` and ``min_scale`` (EVA's fp16 recipe).

    Every step whose gradients overflow is skipped, but the scale is lowered only on the
    ``hysteresis``-th overflow (1: torch's behaviour, lower on every overflow), and never below
    ``min_scale``. The tolerance is refilled when the scale grows (after ``growth_interval`` steps
    without overflow, as in DeepSpeed), or after every good step with ``consecutive_hysteresis``.

    Args:
        device: ``"cuda"`` / ``"cpu"`` (as for ``torch.amp.GradScaler``).
        hysteresis: overflows tolerated before the scale is lowered, counted down from this (>= 1).
        min_scale: lower bound of the scale (> 0).
        consecutive_hysteresis: refill the tolerance after every step without overflow.
        **kwargs: ``torch.amp.GradScaler`` arguments (``init_scale``, ``growth_interval``, ...).
    """

    def __init__(self, device: str = "cuda", *, hysteresis: int = 1, min_scale: float = 1.0,
                 consecutive_hysteresis: bool = False, **kwargs):
        if int(hysteresis) < 1 or not min_scale > 0:
            raise ValueError(f"loss scaler needs hysteresis >= 1 and min_scale > 0, got {hysteresis}, "
                             f"{min_scale}")
        super().__init__(device, **kwargs)
        if self.is_enabled() and self.get_scale() < min_scale:
            raise ValueError(f"loss scaler init_scale {self.get_scale()} is below min_scale {min_scale}")
        self.hysteresis = int(hysteresis)
        self.min_scale = float(min_scale)
        self.consecutive_hysteresis = bool(consecutive_hysteresis)
        self.overflows_left = self.hysteresis
        self.last_step_overflowed = False

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        if not self.is_enabled():
            return
        if new_scale is not None:
            return super().update(new_scale)
        # the same per-optimizer inf checks torch's update() reads (recorded by unscale_/step)
        found = [v for state in self._per_optimizer_states.values()
                 for v in state["found_inf_per_device"].values()]
        if not found:
            raise RuntimeError("DynamicLossScaler.update(): no inf checks were recorded; call "
                               "scaler.step(optimizer) first")
        self.last_step_overflowed = bool(sum(v.item() for v in found))
        scale = self.get_scale()
        if self.last_step_overflowed:
            self.overflows_left -= 1
            if self.overflows_left > 0:  # tolerated: keep the scale, restart the growth window
                super().update(scale)
                self._growth_tracker.zero_()
                return
            self.overflows_left = self.hysteresis
            super().update()  # backoff
            if self.get_scale() < self.min_scale:
                super().update(self.min_scale)
            return
        super().update()  # counts towards growth
        if self.consecutive_hysteresis or self.get_scale() > scale:
            self.overflows_left = self.hysteresis

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state:
            state["overflows_left"] = self.overflows_left
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.overflows_left = int(state_dict.pop("overflows_left", self.hysteresis))
        super().load_state_dict(state_dict)


def build_grad_scaler(device: torch.device, enabled: bool, **kwargs) -> DynamicLossScaler:
    """Dynamic loss scaler for fp16 (disabled for bf16/fp32, where it is a pass-through).

    Defaults follow the EVA recipe: initial scale 2^16, growth window 500 iterations, hysteresis 2,
    minimum scale 1 (keys of ``train.amp.loss_scale``; see :class:`DynamicLossScaler`).
    """
    kwargs.setdefault("init_scale", 2.0**16)
    kwargs.setdefault("growth_interval", 500)
    kwargs.setdefault("hysteresis", 2)
    kwargs.setdefault("min_scale", 1.0)
    return DynamicLossScaler(device.type, enabled=enabled, **kwargs)
