"""Mask2Former's pixel decoder: deformable-attention encoder over 3 levels + an FPN step to stride 4.

The three coarsest backbone maps (strides 8/16/32) are projected to ``feat_channels`` (1x1 conv +
GroupNorm), flattened together and refined by ``num_layers`` post-norm encoder layers of
multi-scale deformable self-attention (:class:`~mask2former_eva.ms_deform_attn.MSDeformAttn`,
queries at every pixel centre of every level, keys with a sine position encoding plus a learned
level embedding) and a ReLU FFN. The finest map (stride 4) joins through a lateral 1x1 conv and a
3x3 output conv on the sum with the upsampled stride-8 result; ``mask_feature`` (1x1 conv) turns
that into the per-pixel embeddings that the queries' mask embeddings are multiplied with.

This is mmdet's ``MSDeformAttnPixelDecoder`` (used by the EVA-01 / ViT-Adapter release) and
detectron2 Mask2Former's ``MSDeformAttnPixelDecoder``; module names are ours, mapped from mmdet's
``decode_head.pixel_decoder.*`` by the ``mmseg_beit_adapter`` layout (see ``layouts.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .ms_deform_attn import MSDeformAttn

__all__ = ["MSDeformAttnPixelDecoder", "PixelDecoderEncoderLayer", "sine_position_embedding"]


def sine_position_embedding(height: int, width: int, num_feats: int, *, temperature: float = 10000.0,
                            device: torch.device | str | None = None,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's normalised sine position encoding of an unpadded ``height x width`` map.

    Rows and columns are numbered ``1..H`` / ``1..W``, scaled to ``(0, 2*pi]``, and encoded with
    ``num_feats`` interleaved sin/cos frequencies each; y comes first, then x (as DETR, mmcv's
    ``SinePositionalEncoding(normalize=True)`` and transformers' Mask2Former).

    Returns:
        ``[2 * num_feats, height, width]``.
    """
    eps, scale = 1e-6, 2 * math.pi
    # at least fp32: half-precision angles would be ~0.01 rad off at the high frequencies
    work = torch.promote_types(dtype, torch.float32)
    y = torch.arange(1, height + 1, device=device, dtype=work) / (height + eps) * scale
    x = torch.arange(1, width + 1, device=device, dtype=work) / (width + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=work)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [N] -> [N, num_feats], sin/cos interleaved
        angles = pos[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).to(dtype)


class PixelDecoderEncoderLayer(nn.Module):
    """Post-norm encoder layer: ``x = norm1(x + MSDA(x + pos))``; ``x = norm2(x + FFN(x))``.

    Args:
        dim: channel width.
        num_heads: deformable attention heads.
        num_levels: feature levels attended to.
        num_points: sampling points per head and level.
        ffn_channels: FFN hidden width.
        dropout: dropout after the attention and in the FFN.
    """

    def __init__(self, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_channels: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_channels)
        self.linear2 = nn.Linear(ffn_channels, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference_points, x, spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ffn))


def _conv_gn(in_channels: int, out_channels: int, kernel_size: int, num_groups: int, *, bias: bool,
             relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                         bias=bias),
                               nn.GroupNorm(num_groups, out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    Args:
        in_channels: channels of the backbone maps, finest first (strides 4, 8, 16, 32 for
            :class:`~mask2former_eva.vit_adapter.EVAAdapter`).
        feat_channels: width of the decoder (1024 in the EVA release, 256 in Mask2Former).
        out_channels: width of the mask features.
        num_layers: deformable encoder layers (6).
        num_heads: deformable attention heads (32 in the EVA release, 8 in Mask2Former).
        num_points: sampling points per head and level (4).
        ffn_channels: encoder FFN hidden width (4096 in the EVA release, 1024 in Mask2Former).
        num_encoder_levels: how many of the coarsest maps the encoder attends over (3).
        num_groups: GroupNorm groups (32).
        dropout: encoder dropout (0).
        grad_checkpointing: recompute each encoder layer in the backward pass instead of keeping
            its activations (training only; the release sets ``with_cp`` on these layers' FFNs).

    ``forward(features)`` returns ``(mask_features, multi_scale_features)``: the stride-4
    ``[B, out_channels, H/4, W/4]`` map and the encoder's output maps, coarsest first
    (strides 32, 16, 8), which the transformer decoder cross-attends to.
    """

    def __init__(self, in_channels: Sequence[int], feat_channels: int = 256, out_channels: int = 256, *,
                 num_layers: int = 6, num_heads: int = 8, num_points: int = 4, ffn_channels: int = 1024,
                 num_encoder_levels: int = 3, num_groups: int = 32, dropout: float = 0.0,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) <= num_encoder_levels:
            raise ValueError(f"MSDeformAttnPixelDecoder: {len(in_channels)} input maps (in_channels="
                             f"{in_channels}) for {num_encoder_levels} encoder levels; need at least one "
                             "finer map for the FPN step")
        if feat_channels % num_groups:
            raise ValueError(f"MSDeformAttnPixelDecoder: feat_channels {feat_channels} must be divisible by "
                             f"num_groups {num_groups} (GroupNorm)")
        self.in_channels = in_channels
        self.feat_channels, self.out_channels = feat_channels, out_channels
        self.num_encoder_levels = num_encoder_levels
        self.grad_checkpointing = grad_checkpointing
        # coarsest first: input_proj[0] projects the stride-32 map (mmdet's input_convs order)
        self.input_proj = nn.ModuleList(
            _conv_gn(c, feat_channels, 1, num_groups, bias=True, relu=False)
            for c in in_channels[::-1][:num_encoder_levels])
        self.level_embed = nn.Parameter(torch.zeros(num_encoder_levels, feat_channels))
        self.layers = nn.ModuleList(
            PixelDecoderEncoderLayer(feat_channels, num_heads, num_encoder_levels, num_points, ffn_channels,
                                     dropout) for _ in range(num_layers))
        num_fpn = len(in_channels) - num_encoder_levels
        # coarsest first as well: lateral_convs[0] is for the map just finer than the encoder levels
        self.lateral_convs = nn.ModuleList(
            _conv_gn(c, feat_channels, 1, num_groups, bias=False, relu=False)
            for c in in_channels[:num_fpn][::-1])
        self.output_convs = nn.ModuleList(
            _conv_gn(feat_channels, feat_channels, 3, num_groups, bias=False, relu=True)
            for _ in range(num_fpn))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """mmdet's init: Xavier-uniform input projections, Kaiming-uniform (a=1) FPN convs and
        ``mask_feature``, Xavier-normal encoder matrices, Deformable DETR's init for the
        attention, standard-normal level embeddings."""
        for seq in self.input_proj:
            nn.init.xavier_uniform_(seq[0].weight)
            nn.init.zeros_(seq[0].bias)
        fpn_convs = [s[0] for s in self.lateral_convs] + [s[0] for s in self.output_convs]
        for conv in fpn_convs + [self.mask_feature]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device,
                         dtype: torch.dtype) -> torch.Tensor:
        """Pixel centres ``((j + 0.5) / W, (i + 0.5) / H)`` of every level, ``[1, S, L, 2]``."""
        points = []
        for height, width in spatial_shapes:
            ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
            xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        return torch.cat(points)[None, :, None, :].expand(-1, -1, len(spatial_shapes), -1)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"MSDeformAttnPixelDecoder: built for {len(self.in_channels)} maps, got "
                             f"{len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"MSDeformAttnPixelDecoder: features[{i}] must be [B, {c}, H, W], got "
                                 f"{tuple(f.shape)}")
        coarse = list(features[::-1][:self.num_encoder_levels])
        projected = [proj(f) for proj, f in zip(self.input_proj, coarse)]
        shapes = [(p.shape[2], p.shape[3]) for p in projected]
        batch = projected[0].shape[0]
        tokens = torch.cat([p.flatten(2).transpose(1, 2) for p in projected], dim=1)
        pos = torch.cat([
            sine_position_embedding(h, w, self.feat_channels // 2, device=tokens.device, dtype=tokens.dtype)
            .flatten(1).transpose(0, 1) + self.level_embed[i]
            for i, (h, w) in enumerate(shapes)])[None]
        # at least fp32: under bf16 autocast (i + 0.5) / W would be off by up to half a pixel at W = 224
        ref = self.reference_points(shapes, tokens.device, torch.promote_types(tokens.dtype, torch.float32))
        ref = ref.expand(batch, -1, -1, -1)
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, pos, ref, shapes, use_reentrant=False)
            else:
                tokens = layer(tokens, pos, ref, shapes)
        outs = [t.transpose(1, 2).reshape(batch, self.feat_channels, h, w)
                for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)]
        fine = list(features[:len(self.lateral_convs)][::-1])
        for lateral, output, f in zip(self.lateral_convs, self.output_convs, fine):
            lat = lateral(f)
            # bilinear (not FPN's nearest) upsampling, as Mask2Former and mmdet do here
            outs.append(output(lat + F.interpolate(outs[-1], size=lat.shape[-2:], mode="bilinear",
                                                   align_corners=False)))
        return self.mask_feature(outs[-1]), outs[:self.num_encoder_levels]
