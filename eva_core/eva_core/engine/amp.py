"""Mixed precision: autocast contexts and the fp16 dynamic loss scaler."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["resolve_amp_dtype", "autocast", "build_grad_scaler"]

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


def build_grad_scaler(device: torch.device, enabled: bool, **kwargs) -> torch.amp.GradScaler:
    """Dynamic loss scaler for fp16 (disabled for bf16/fp32, where it is a pass-through).

    Defaults follow the EVA recipe: initial scale 2^16, growth window 500 iterations.
    """
    kwargs.setdefault("init_scale", 2.0**16)
    kwargs.setdefault("growth_interval", 500)
    return torch.amp.GradScaler(device.type, enabled=enabled, **kwargs)
