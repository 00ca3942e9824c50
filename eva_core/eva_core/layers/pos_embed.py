"""Absolute position-embedding resize: 2-D grids with or without prefix (CLS) tokens, and video grids.

Image grids use timm's ``resample_abs_pos_embed`` (bicubic + antialias, EVA's numerics for every
resolution change, see ``docs/recipes/encoder.md#eva-g-architecture``). Video adds a temporal axis:
an image table is repeated per frame (``docs/recipes/video.md#video-encoder``) and a ``[T, H, W]``
table is resized trilinearly, which timm has no function for.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

__all__ = [
    "resample_abs_pos_embed",
    "resample_pos_embed_grid",
    "split_pos_embed_grid",
    "resample_abs_pos_embed_3d",
    "inflate_pos_embed_to_video",
]


def _check_table(pos_embed: torch.Tensor, name: str = "pos_embed") -> None:
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"{name} must be [1, tokens, dim], got {tuple(pos_embed.shape)}")


def split_pos_embed_grid(pos_embed: torch.Tensor, name: str = "pos_embed") -> tuple[int, tuple[int, int]]:
    """``(prefix_tokens, (H, W))`` of a ``[1, P + H*W, C]`` table with a square grid and P in {0, 1}.

    Raises:
        ValueError: neither ``len`` nor ``len - 1`` is a square number.
    """
    _check_table(pos_embed, name)
    n = pos_embed.shape[1]
    for prefix in (0, 1):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix and side > 0:
            return prefix, (side, side)
    raise ValueError(f"{name}: {n} tokens is neither a square grid nor a square grid plus a CLS slot "
                     f"(shape {tuple(pos_embed.shape)})")


def resample_pos_embed_grid(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    num_prefix_tokens: int = 1,
    old_grid: Sequence[int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the spatial part of an absolute position embedding ``[1, P + H*W, C]``.

    Ours only to validate: timm's ``resample_abs_pos_embed`` (which does the resize) assumes a square
    grid when ``old_size`` is omitted and reshapes a wrong token count without a clear error.
    Prefix entries (the CLS slot) are kept; ``pos_embed`` itself is returned when the grid matches.

    Raises:
        ValueError: ``pos_embed`` is not ``[1, P + H*W, C]`` for ``old_grid`` (or a square grid).
    """
    _check_table(pos_embed)
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(max(n, 0))
        if side * side != n:
            raise ValueError(
                f"pos_embed has {n} grid tokens after {num_prefix_tokens} prefix tokens, which is not a "
                "square grid; pass old_grid=(H, W)")
        old_grid = (side, side)
    old_grid, new_grid = tuple(int(s) for s in old_grid), tuple(int(s) for s in new_grid)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"pos_embed has {n} grid tokens, expected {old_grid[0]}x{old_grid[1]}")
    if old_grid == new_grid:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix_tokens,
        interpolation=interpolation, antialias=antialias)


def inflate_pos_embed_to_video(
    pos_embed: torch.Tensor, num_frames: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Image table ``[1, P + H*W, C]`` -> video table ``[1, P + T*H*W, C]``, the grid repeated per frame.

    This is how EVA's video model starts from the image encoder: every frame sees the image
    position embedding, and the prefix (CLS) entries appear once.
    """
    _check_table(pos_embed)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    return torch.cat([prefix, grid.repeat(1, num_frames, 1)], dim=1)


def resample_abs_pos_embed_3d(
    pos_embed: torch.Tensor,
    new_size: Sequence[int],
    old_size: Sequence[int],
    num_prefix_tokens: int = 1,
    interpolation: str = "trilinear",
) -> torch.Tensor:
    """Resize a video position table ``[1, P + T*H*W, C]`` (frame-major) to ``new_size = (T', H', W')``.

    An image table (``old_size[0] == 1``) is first repeated over the new number of frames, so
    ``resample_abs_pos_embed_3d(image_table, (8, 14, 14), (1, 16, 16))`` both inflates and resizes.
    Interpolation runs in fp32 (``F.interpolate`` ``trilinear`` or ``nearest``, ``align_corners=False``);
    prefix entries are kept.

    Raises:
        ValueError: the token count does not match ``old_size`` or the sizes are not 3 numbers.
    """
    _check_table(pos_embed)
    old_size, new_size = tuple(int(s) for s in old_size), tuple(int(s) for s in new_size)
    if len(old_size) != 3 or len(new_size) != 3:
        raise ValueError(f"old_size and new_size must be (T, H, W), got {old_size} and {new_size}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_size[0] * old_size[1] * old_size[2] != n:
        raise ValueError(f"pos_embed has {n} grid tokens after {num_prefix_tokens} prefix tokens, "
                         f"expected T*H*W = {old_size[0]}x{old_size[1]}x{old_size[2]}")
    if old_size == new_size:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim, dtype = grid.shape[-1], grid.dtype
    if old_size[0] == 1 and new_size[0] > 1:
        # an image table: every frame starts from the same grid (no temporal interpolation to invent)
        grid = grid.repeat(1, new_size[0], 1)
        old_size = (new_size[0], *old_size[1:])
    if old_size != new_size:
        vol = grid.float().reshape(1, *old_size, dim).permute(0, 4, 1, 2, 3)
        kw = {} if interpolation == "nearest" else {"align_corners": False}
        vol = F.interpolate(vol, size=new_size, mode=interpolation, **kw)
        grid = vol.permute(0, 2, 3, 4, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)
