"""``EVAAdapter``: the EVA encoder with ViT-Adapter around it, a 4-level pyramid for dense heads.

The encoder is ``eva_core.models.eva.Eva`` itself (patch 16; global or windowed blocks as
configured), run through its public pieces (``embed``, ``rel_pos_bias``, ``blocks``) so that its
checkpoint keys, position-embedding resize and attention kernels are the core's. The adapter adds
the spatial prior module, one interaction block per group of encoder blocks
(``interaction_indexes``: ``[[0, 9], [10, 19], [20, 29], [30, 39]]`` for EVA-g), level embeddings,
a transposed-conv upsampling for the stride-4 map and a BatchNorm per output
(``docs/recipes/segmentation.md``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from eva_core.models.eva import Eva

from .adapter_modules import (AdapterDeformAttn, InteractionBlock, LayerNorm6, SpatialPriorModule,
                              deform_inputs)

__all__ = ["EVAAdapter", "check_interaction_indexes", "even_interaction_indexes"]

#: output strides of f1..f4
OUT_STRIDES = (4, 8, 16, 32)


def even_interaction_indexes(depth: int, groups: int = 4) -> list[list[int]]:
    """``groups`` contiguous ``[first, last]`` block ranges of equal size (``[[0, 9], .., [30, 39]]``
    for 40 blocks)."""
    if depth % groups:
        raise ValueError(f"cannot split {depth} blocks into {groups} equal interaction groups; pass "
                         "interaction_indexes explicitly")
    size = depth // groups
    return [[i * size, (i + 1) * size - 1] for i in range(groups)]


def check_interaction_indexes(indexes: Sequence[Sequence[int]], depth: int) -> list[list[int]]:
    """Validate that ``indexes`` are ``[first, last]`` pairs that cover blocks ``0..depth-1`` in order once.

    Raises:
        ValueError: naming the first pair that leaves a gap, overlaps, or runs past the encoder.
    """
    out = [[int(a) for a in pair] for pair in indexes]
    expected_first = 0
    for k, pair in enumerate(out):
        if len(pair) != 2 or pair[0] != expected_first or pair[1] < pair[0]:
            raise ValueError(f"interaction_indexes[{k}] = {pair}: expected [{expected_first}, last >= "
                             f"{expected_first}] so that the groups cover blocks 0..{depth - 1} in order "
                             f"(got {out})")
        expected_first = pair[1] + 1
    if expected_first != depth:
        raise ValueError(f"interaction_indexes {out} cover blocks 0..{expected_first - 1} but the encoder "
                         f"has {depth} blocks")
    return out


class EVAAdapter(nn.Module):
    """EVA encoder + ViT-Adapter; ``forward(images)`` returns ``[f1, f2, f3, f4]`` at strides 4/8/16/32.

    Args:
        encoder: an ``Eva`` with patch size 16, built without a classifier (``num_classes=0``,
            ``global_pool=""``, ``use_post_transformer_norm=False``: the adapter reads block outputs).
            A class token is carried through the blocks as in EVA's ``InteractionBlockWithCls``.
        interaction_indexes: ``[first, last]`` encoder blocks of each interaction (default: 4 equal groups;
            exactly 4 when ``add_vit_feature``).
        conv_inplane: spatial prior module width (64).
        n_points: deformable sampling points per head and level (4).
        deform_num_heads: deformable attention heads (16 for EVA-g).
        init_values: injector ``gamma`` init (0: the injector is an identity at start).
        cffn_ratio: ConvFFN hidden width / embed dim (0.25).
        deform_ratio: value width / embed dim in the deformable attention (0.5 for EVA-g).
        with_cffn: use the ConvFFN in the extractors.
        add_vit_feature: add the (resized) ViT maps of each interaction to f1..f4.
        drop_path_rate: stochastic depth of the extractors' ConvFFN (the release passes the encoder's
            rate, 0.5 for EVA-g).
        grad_checkpointing: activation checkpointing of the encoder blocks, injectors and extractors
            in training (``None``: the encoder's own setting).
        norm_layer: 2-d norm of the spatial prior module and the outputs (BatchNorm; convert to
            SyncBatchNorm under DDP).
    """

    def __init__(self, encoder: Eva, *, interaction_indexes: Sequence[Sequence[int]] | None = None,
                 conv_inplane: int = 64, n_points: int = 4, deform_num_heads: int = 6,
                 init_values: float = 0.0, cffn_ratio: float = 0.25, deform_ratio: float = 1.0,
                 with_cffn: bool = True, add_vit_feature: bool = True, drop_path_rate: float = 0.0,
                 grad_checkpointing: bool | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        if tuple(encoder.patch_size) != (16, 16):
            raise ValueError(f"EVAAdapter needs a patch-16 encoder (its grid is the stride-16 level), got "
                             f"patch size {tuple(encoder.patch_size)}; convert 14 -> 16 with the "
                             "eva_psz14to16 layout")
        if encoder.num_prefix_tokens > 1:
            raise ValueError("EVAAdapter supports at most one prefix (class) token, got "
                             f"{encoder.num_prefix_tokens}")
        self.encoder = encoder
        depth = len(encoder.blocks)
        if interaction_indexes is None:
            interaction_indexes = even_interaction_indexes(depth)
        self.interaction_indexes = check_interaction_indexes(interaction_indexes, depth)
        if add_vit_feature and len(self.interaction_indexes) != len(OUT_STRIDES):
            raise ValueError(f"add_vit_feature needs 4 interactions (one ViT map per output f1..f4), got "
                             f"interaction_indexes {self.interaction_indexes}")
        self.add_vit_feature = add_vit_feature
        dim = self.embed_dim = encoder.embed_dim
        self.out_channels = dim
        self.out_strides = OUT_STRIDES

        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_layer=norm_layer)
        last = len(self.interaction_indexes) - 1
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, deform_num_heads, n_points, norm_layer=LayerNorm6, drop_path=drop_path_rate,
                             with_cffn=with_cffn, cffn_ratio=cffn_ratio, init_values=init_values,
                             deform_ratio=deform_ratio, extra_extractor=i == last)
            for i in range(len(self.interaction_indexes))])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (norm_layer(dim) for _ in range(4))
        self.init_adapter_weights()
        if grad_checkpointing is None:
            grad_checkpointing = encoder.grad_checkpointing
        self.set_grad_checkpointing(grad_checkpointing)

    def init_adapter_weights(self) -> None:
        """ViT-Adapter's init of the new parts (the encoder keeps its own): truncated-normal 0.02
        linears, He-normal (fan-out) convs, unit norms, Deformable DETR's init for the attention,
        standard-normal level embeddings."""
        for part in (self.up, self.spm, self.interactions):
            part.apply(self._init_module)
        for m in self.modules():
            if isinstance(m, AdapterDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # He init on fan-out, as ViT-Adapter (and ResNet stems) do
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of encoder blocks, injectors and extractors (training only)."""
        self.grad_checkpointing = bool(enable)
        self.encoder.set_grad_checkpointing(enable)
        for interaction in self.interactions:
            interaction.injector.with_cp = bool(enable)
            for extractor in [interaction.extractor, *(interaction.extra_extractors or [])]:
                extractor.with_cp = bool(enable)

    def no_weight_decay(self) -> set[str]:
        """The encoder's no-decay names (prefixed) and the level embeddings."""
        return {f"encoder.{k}" for k in self.encoder.no_weight_decay()} | {"level_embed"}

    def _run_blocks(self, tokens: torch.Tensor, first: int, last: int, grid: tuple[int, int],
                    rel_pos_bias: torch.Tensor | None) -> torch.Tensor:
        for blk in self.encoder.blocks[first:last + 1]:
            if self.encoder.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(blk, tokens, grid, rel_pos_bias, use_reentrant=False)
            else:
                tokens = blk(tokens, grid, rel_pos_bias)
        return tokens

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``[f1, f2, f3, f4]``, ``[B, embed_dim, H/s, W/s]`` for ``s = 4, 8, 16, 32``.

        Args:
            images: ``[B, 3, H, W]`` with ``H`` and ``W`` multiples of 32.
        """
        inject, extract = deform_inputs(images, patch_size=16)
        c1, c2, c3, c4 = self.spm(images)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)

        tokens, grid = self.encoder.embed(images)
        n_prefix = self.encoder.num_prefix_tokens
        prefix, x = tokens[:, :n_prefix], tokens[:, n_prefix:]
        rel_pos_bias = self.encoder.rel_pos_bias(grid) if self.encoder.rel_pos_bias is not None else None

        vit_maps = []
        batch, height, width = images.shape[0], grid[0], grid[1]
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            def run_blocks(x: torch.Tensor, first: int = first, last: int = last) -> torch.Tensor:
                # the class token joins the blocks and is carried to the next group, as in EVA's
                # InteractionBlockWithCls; the injector and extractor see grid tokens only
                nonlocal prefix
                out = self._run_blocks(torch.cat([prefix, x], dim=1), first, last, grid, rel_pos_bias)
                prefix = out[:, :n_prefix]
                return out[:, n_prefix:]

            x, c = interaction(x, c, run_blocks, inject, extract)
            vit_maps.append(x.transpose(1, 2).reshape(batch, self.embed_dim, height, width))

        sizes = [h * w for h, w in inject.spatial_shapes]
        c2, c3, c4 = (level.transpose(1, 2).reshape(batch, self.embed_dim, h, w)
                      for level, (h, w) in zip(c.split(sizes, dim=1), inject.spatial_shapes))
        c1 = self.up(c2) + c1
        feats = [c1, c2, c3, c4]
        if self.add_vit_feature:
            # the i-th interaction's map (stride 16) is resized to f_i: x4, x2, x1, x0.5
            feats = [f + F.interpolate(v, size=f.shape[-2:], mode="bilinear", align_corners=False)
                     if v.shape[-2:] != f.shape[-2:] else f + v for f, v in zip(feats, vit_maps, strict=True)]
        return [norm(f) for norm, f in zip((self.norm1, self.norm2, self.norm3, self.norm4), feats)]
