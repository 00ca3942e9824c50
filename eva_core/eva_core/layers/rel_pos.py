"""Decomposed relative positions (MViTv2 / ViTDet ``rel_pos_h`` / ``rel_pos_w``, ``(2S-1, head_dim)``).

The lookup and the two einsums are timm's SAM functions (``get_rel_pos``,
``get_decomposed_rel_pos_bias``). Ours differs in one step: when a table must be resized to another
grid (a detector trained at 1024 run at 1280, see ``docs/recipes/detection.md#backbone``), it is
interpolated in fp32, because timm interpolates in the table's dtype and fp16/bf16 tables lose
precision there.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
from timm.models.vision_transformer_sam import get_rel_pos as _sam_get_rel_pos

__all__ = ["resample_rel_pos", "get_rel_pos", "decomposed_rel_pos_bias", "add_decomposed_rel_pos"]


def resample_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resize a table ``(L, head_dim)`` to ``(length, head_dim)``, in fp32 (timm: table dtype)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    out = F.interpolate(rel_pos.float().t().unsqueeze(0), size=length, mode="linear")
    return out.squeeze(0).t().to(rel_pos.dtype)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings ``[q_size, k_size, head_dim]`` for one axis (timm's lookup after an fp32 resize).

    When query and key lengths differ, coordinates are scaled to the longer axis so the same physical
    offset maps to the same table entry.
    """
    return _sam_get_rel_pos(q_size, k_size, resample_rel_pos(rel_pos, 2 * max(q_size, k_size) - 1))


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_grid: Sequence[int],
    k_grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Additive attention bias ``[B, heads, Hq*Wq, Hk*Wk]`` from decomposed (height, width) positions.

    Args:
        q: unscaled queries ``[B, heads, Hq*Wq, head_dim]`` of the spatial tokens.
        rel_pos_h: table ``(2*S_h - 1, head_dim)``; resized linearly when the grid differs.
        rel_pos_w: table ``(2*S_w - 1, head_dim)``.
        q_grid: query grid ``(Hq, Wq)``.
        k_grid: key grid, defaults to ``q_grid``.
    """
    qh, qw = (int(s) for s in q_grid)
    kh, kw = (int(s) for s in (k_grid if k_grid is not None else q_grid))
    # tables resized once in fp32, then cast so the einsums run in the queries' dtype
    r_h = resample_rel_pos(rel_pos_h, 2 * max(qh, kh) - 1).to(q.dtype)
    r_w = resample_rel_pos(rel_pos_w, 2 * max(qw, kw) - 1).to(q.dtype)
    b, nh, n, d = q.shape
    bias = get_decomposed_rel_pos_bias(q.reshape(b * nh, n, d), r_h, r_w, (qh, qw), (kh, kw))
    return bias.reshape(b, nh, qh * qw, kh * kw)


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Sequence[int],
    k_size: Sequence[int],
) -> torch.Tensor:
    """detectron2's ``add_decomposed_rel_pos``: ``attn [B, Hq*Wq, Hk*Wk] + bias`` for ``q [B, Hq*Wq, C]``.

    ``B`` may fold the heads in (``batch * heads``), as in detectron2 and SAM.
    """
    bias = decomposed_rel_pos_bias(q.unsqueeze(1), rel_pos_h, rel_pos_w, q_size, k_size).squeeze(1)
    return attn + bias.to(attn.dtype)
