"""BEiT relative-position bias tables (``relative_position_bias_table``, ``(2H-1)(2W-1) [+ 3], heads``).

The index is timm's ``gen_relative_position_index``. A table learned for one window is resized
bicubically on its ``(2H-1, 2W-1)`` grid, CLS rows kept: for square source windows that is timm's
``resize_rel_pos_bias_table_simple``; ours only adds non-square source windows, which timm infers as
square. timm's ``resize_rel_pos_bias_table`` (unilm's geometric-progression resample) gives other
numbers and is not what the encoder uses at run time.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import gen_relative_position_index, resize_rel_pos_bias_table_simple

__all__ = ["rel_pos_table_size", "resize_bias_table", "rel_pos_bias_from_table", "RelativePositionBias"]


def rel_pos_table_size(window: Sequence[int], class_token: bool) -> int:
    """Rows of a BEiT relative-position bias table for a ``window`` grid (3 extra rows for CLS)."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + (3 if class_token else 0)


def resize_bias_table(
    table: torch.Tensor, old: Sequence[int], new: Sequence[int], class_token: bool
) -> torch.Tensor:
    """Bicubically resize the spatial rows of a BEiT table from window ``old`` to ``new`` (fp32 math).

    Square ``old`` windows go through timm's ``resize_rel_pos_bias_table_simple``; ours handles
    non-square ones (timm assumes a square source). CLS rows are kept.
    """
    old, new = tuple(int(s) for s in old), tuple(int(s) for s in new)
    if old == new:
        return table
    extra = 3 if class_token else 0
    if table.shape[0] != rel_pos_table_size(old, class_token):
        raise ValueError(f"bias table has {table.shape[0]} rows, expected "
                         f"{rel_pos_table_size(old, class_token)} "
                         f"for window {old}{' + 3 CLS rows' if class_token else ''}")
    if old[0] == old[1]:
        shape = (rel_pos_table_size(new, class_token), table.shape[1])
        return resize_rel_pos_bias_table_simple(table.float(), new, shape).to(table.dtype)
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

    The table was learned for ``table_window``; for another grid its spatial part is resized
    bicubically at run time (the CLS rows are kept).
    """
    grid = tuple(int(g) for g in grid)
    if tuple(table_window) != grid:
        table = resize_bias_table(table, table_window, grid, class_token)
    index = gen_relative_position_index(grid, class_token=class_token, device=table.device)
    n = index.shape[0]
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).contiguous()


class RelativePositionBias(nn.Module):
    """BEiT-style learned relative-position bias shared by all blocks (``rel_pos_bias.*``).

    Args:
        window_size: token grid the table is learned for.
        num_heads: attention heads.
        class_token: the sequence starts with a CLS token (3 extra table rows).
    """

    def __init__(self, window_size: Sequence[int], num_heads: int, class_token: bool = True):
        super().__init__()
        self.window_size = tuple(int(w) for w in window_size)
        self.class_token = class_token
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(rel_pos_table_size(self.window_size, class_token), num_heads))

    def forward(self, grid_size: Sequence[int]) -> torch.Tensor:
        """Bias ``[heads, N, N]`` for a token grid (table resized when it differs from ``window_size``)."""
        return rel_pos_bias_from_table(self.relative_position_bias_table, self.window_size, grid_size,
                                       self.class_token)
