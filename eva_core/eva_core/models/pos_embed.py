"""Position-embedding and patch-kernel resampling used by the EVA encoder and its loader.

Absolute position grids and patch kernels are resampled with timm's helpers
(``resample_abs_pos_embed``, ``resample_patch_embed``); this module adds the two relative
position forms EVA uses that timm's helpers do not cover in the shape we need:

* BEiT-style bias tables (``relative_position_bias_table``) with three extra CLS entries;
* ViTDet-style decomposed relative positions (``rel_pos_h`` / ``rel_pos_w``, shape (2S-1, head_dim)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import gen_relative_position_index, resample_abs_pos_embed, resample_patch_embed

__all__ = [
    "resample_abs_pos_embed",
    "resample_patch_embed",
    "resample_pos_embed_grid",
    "resample_rel_pos",
    "decomposed_rel_pos_bias",
    "rel_pos_bias_from_table",
    "rel_pos_table_size",
    "resize_bias_table",
]


def resample_pos_embed_grid(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    num_prefix_tokens: int = 1,
    old_grid: Sequence[int] | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the spatial part of an absolute position embedding ``[1, P + H*W, C]``.

    Prefix entries (the CLS slot) are kept as they are. ``old_grid`` defaults to a square grid.
    Returns ``pos_embed`` itself when the grid already matches, so parity at the native size is exact.

    Raises:
        ValueError: ``pos_embed`` is not ``[1, P + H*W, C]`` for a square grid and no ``old_grid`` was given.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, dim], got {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n ** 0.5))
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


def resample_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a decomposed relative-position table ``(L, head_dim)`` to ``(length, head_dim)``."""
    if rel_pos.shape[0] == length:
        return rel_pos
    # interpolate along the distance axis, computing in fp32 so fp16 tables resize accurately
    out = F.interpolate(rel_pos.float().t().unsqueeze(0), size=length, mode="linear")
    return out.squeeze(0).t().to(rel_pos.dtype)


def _rel_pos_lookup(q_len: int, k_len: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings ``[q_len, k_len, head_dim]`` for one axis.

    When query and key lengths differ, coordinates are scaled to the longer axis so that the same
    physical offset maps to the same table entry.
    """
    max_dist = 2 * max(q_len, k_len) - 1
    table = resample_rel_pos(rel_pos, max_dist)
    q_coords = torch.arange(q_len, device=rel_pos.device)[:, None] * max(k_len / q_len, 1.0)
    k_coords = torch.arange(k_len, device=rel_pos.device)[None, :] * max(q_len / k_len, 1.0)
    offsets = (q_coords - k_coords) + (k_len - 1) * max(q_len / k_len, 1.0)
    return table[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_grid: Sequence[int],
    k_grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Additive attention bias from decomposed (height, width) relative positions (ViTDet / MViTv2).

    Args:
        q: unscaled queries ``[B, heads, Hq*Wq, head_dim]`` of the spatial tokens.
        rel_pos_h: table ``(2*S_h - 1, head_dim)``; resized linearly when the grid differs.
        rel_pos_w: table ``(2*S_w - 1, head_dim)``.
        q_grid: query grid ``(Hq, Wq)``.
        k_grid: key grid, defaults to ``q_grid``.

    Returns:
        Bias ``[B, heads, Hq*Wq, Hk*Wk]`` in the dtype of ``q``.
    """
    qh, qw = q_grid
    kh, kw = k_grid if k_grid is not None else q_grid
    r_h = _rel_pos_lookup(qh, kh, rel_pos_h).to(q.dtype)  # [qh, kh, D]
    r_w = _rel_pos_lookup(qw, kw, rel_pos_w).to(q.dtype)  # [qw, kw, D]
    b, nh, _, d = q.shape
    r_q = q.reshape(b, nh, qh, qw, d)
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # [b, nh, qh, qw, kh, kw]
    return bias.reshape(b, nh, qh * qw, kh * kw)


def rel_pos_table_size(window: Sequence[int], class_token: bool) -> int:
    """Rows of a BEiT relative-position bias table for a ``window`` grid (3 extra rows for CLS)."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + (3 if class_token else 0)


def resize_bias_table(table: torch.Tensor, old: Sequence[int], new: Sequence[int], class_token: bool) -> torch.Tensor:
    """Bicubically resize the spatial rows of a BEiT bias table from window ``old`` to ``new``."""
    extra = 3 if class_token else 0
    spatial = table[: table.shape[0] - extra] if extra else table
    oh, ow = 2 * old[0] - 1, 2 * old[1] - 1
    nh, nw = 2 * new[0] - 1, 2 * new[1] - 1
    grid = spatial.float().t().reshape(1, -1, oh, ow)
    grid = F.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
    spatial = grid.reshape(-1, nh * nw).t().to(table.dtype)
    return torch.cat([spatial, table[table.shape[0] - extra:]], 0) if extra else spatial


def rel_pos_bias_from_table(
    table: torch.Tensor, table_window: Sequence[int], grid: Sequence[int], class_token: bool
) -> torch.Tensor:
    """Per-head bias ``[heads, N, N]`` from a BEiT table for a token ``grid`` (+ CLS when ``class_token``).

    The table was learned for ``table_window``; for another grid its spatial part is resized bicubically
    at run time (the CLS rows are kept).
    """
    grid = tuple(int(g) for g in grid)
    if tuple(table_window) != grid:
        table = resize_bias_table(table, table_window, grid, class_token)
    index = gen_relative_position_index(grid, class_token=class_token, device=table.device)
    n = index.shape[0]
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).contiguous()
