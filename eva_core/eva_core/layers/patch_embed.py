"""Patch-embedding kernels: spatial resample (14 -> 16) and 2-D <-> 3-D (video tubelet) conversion.

The spatial resample is timm's ``resample_patch_embed`` (FlexiViT pseudo-inverse resize), which is
what produced EVA's ``eva_psz14to16`` file (``docs/recipes/encoder.md#patch-14-to-16-conversion``).
Inflation to a video kernel copies the image kernel along time and divides by the tubelet size, so a
clip of identical frames embeds exactly like the image (I3D initialisation); timm has no 3-D helper.
"""
from __future__ import annotations

import torch
from timm.layers import resample_patch_embed

__all__ = ["resample_patch_embed", "inflate_patch_embed_3d", "collapse_patch_embed_3d"]


def inflate_patch_embed_3d(weight: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """Image kernel ``[D, C, kh, kw]`` -> video kernel ``[D, C, T, kh, kw]`` (copied along T, divided by T).

    Raises:
        ValueError: ``weight`` is not 4-D or ``tubelet_size < 1``.
    """
    if weight.ndim != 4:
        raise ValueError(f"an image patch kernel is [D, C, kh, kw], got shape {tuple(weight.shape)}")
    if tubelet_size < 1:
        raise ValueError(f"tubelet_size must be >= 1, got {tubelet_size}")
    return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


def collapse_patch_embed_3d(weight: torch.Tensor) -> torch.Tensor:
    """Video kernel ``[D, C, T, kh, kw]`` -> image kernel ``[D, C, kh, kw]`` (sum over T).

    The exact inverse of :func:`inflate_patch_embed_3d`; for any video kernel it gives the image
    kernel whose response to one frame equals the video kernel's response to T copies of it.

    Raises:
        ValueError: ``weight`` is not 5-D.
    """
    if weight.ndim != 5:
        raise ValueError(f"a video patch kernel is [D, C, T, kh, kw], got shape {tuple(weight.shape)}")
    return weight.sum(dim=2)
