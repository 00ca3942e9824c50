"""Shared building blocks of the EVA encoder and its checkpoint loader (timm-style ``layers``).

One module per idea; timm's functions are re-exported where they already compute what EVA needs,
and ours exist only where the numerics or the accepted shapes differ (each says why):

* :mod:`.pos_embed`: absolute position grids, 2-D (with/without prefix tokens) and video (``[T, H, W]``);
* :mod:`.patch_embed`: patch-kernel resample (14 -> 16) and 2-D -> 3-D kernel inflation;
* :mod:`.window`: window partition / unpartition with padding (ViTDet);
* :mod:`.rel_pos`: decomposed relative positions (``get_rel_pos``, ``add_decomposed_rel_pos``);
* :mod:`.rel_pos_bias`: BEiT relative-position bias tables and their resize;
* :mod:`.attention`: the attention kernel (sdpa / xformers / math), chosen once per module.

``eva_core.models`` and ``eva_core.checkpoint`` both import this package and never each other.
"""
from .attention import ATTN_IMPL_ENV, ATTN_IMPLS, as_additive_mask, attention_fn, resolve_attn_impl
from .patch_embed import collapse_patch_embed_3d, inflate_patch_embed_3d, resample_patch_embed
from .pos_embed import (
    inflate_pos_embed_to_video,
    resample_abs_pos_embed,
    resample_abs_pos_embed_3d,
    resample_pos_embed_grid,
    split_pos_embed_grid,
)
from .rel_pos import add_decomposed_rel_pos, decomposed_rel_pos_bias, get_rel_pos, resample_rel_pos
from .rel_pos_bias import RelativePositionBias, rel_pos_bias_from_table, rel_pos_table_size, resize_bias_table
from .window import window_partition, window_unpartition

__all__ = [
    "ATTN_IMPLS", "ATTN_IMPL_ENV", "as_additive_mask", "attention_fn", "resolve_attn_impl",
    "resample_patch_embed", "inflate_patch_embed_3d", "collapse_patch_embed_3d",
    "resample_abs_pos_embed", "resample_pos_embed_grid", "split_pos_embed_grid", "resample_abs_pos_embed_3d",
    "inflate_pos_embed_to_video",
    "get_rel_pos", "resample_rel_pos", "decomposed_rel_pos_bias", "add_decomposed_rel_pos",
    "RelativePositionBias", "rel_pos_bias_from_table", "rel_pos_table_size", "resize_bias_table",
    "window_partition", "window_unpartition",
]
