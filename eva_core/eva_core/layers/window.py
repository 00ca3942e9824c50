"""Non-overlapping window partition / unpartition with zero padding (ViTDet window attention).

timm's ``window_partition`` / ``window_unpartition`` (``timm.models.vision_transformer_sam``) do the
work; these wrappers only flatten each window to a token sequence, the shape attention takes.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer_sam import window_partition as _sam_window_partition
from timm.models.vision_transformer_sam import window_unpartition as _sam_window_unpartition

__all__ = ["window_partition", "window_unpartition"]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[B, H, W, C]`` -> (``[B*nW, window*window, C]``, padded ``(Hp, Wp)``), zero-padding H and W."""
    windows, padded = _sam_window_partition(x, window)
    return windows.reshape(windows.shape[0], window * window, windows.shape[-1]), padded


def window_unpartition(
    x: torch.Tensor, window: int, padded: tuple[int, int], grid: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B*nW, window*window, C]`` -> ``[B, H, W, C]``, unpadded."""
    windows = x.reshape(x.shape[0], window, window, x.shape[-1])
    return _sam_window_unpartition(windows, window, tuple(grid), tuple(padded))
