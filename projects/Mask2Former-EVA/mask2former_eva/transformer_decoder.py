"""Mask2Former's masked-attention transformer decoder with per-layer (deep-supervision) predictions.

``num_queries`` learned queries (content ``query_feat`` + positional ``query_embed``) pass through
``num_layers`` post-norm layers of masked cross-attention, self-attention and a ReLU FFN. Layer
``i`` cross-attends to the pixel decoder's level ``i % num_levels`` (coarsest first), restricted to
the pixels where the previous prediction's mask is on (``sigmoid >= 0.5`` after bilinear resizing
to that level); a query whose mask is empty everywhere attends to all pixels instead. Before the
first layer and after every layer the queries are layer-normed (``post_norm``) and predict class
logits (``num_classes + 1``, the last no-object) and mask logits (``mask_embed`` MLP dotted with
the per-pixel mask features): ``num_layers + 1`` predictions, the last is the output, the others
are auxiliary outputs for deep supervision.

This is mmdet's ``Mask2FormerHead`` decoder part (the EVA-01 / ViT-Adapter release) and
transformers' ``Mask2FormerMaskedAttentionDecoder``; see ``layouts.py`` for the key mapping.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .pixel_decoder import sine_position_embedding

__all__ = ["MaskedAttentionDecoder", "MaskedAttentionDecoderLayer", "attention_mask_from_masks"]


def attention_mask_from_masks(mask_logits: torch.Tensor, size: tuple[int, int],
                              num_heads: int) -> torch.Tensor:
    """Masked attention's mask: ``True`` (blocked) where the resized mask's sigmoid is below 0.5.

    Rows (queries) that would be blocked everywhere are opened completely, so that a query with an
    empty mask still attends (Mask2Former's rule; a fully blocked row would give NaN).

    Args:
        mask_logits: ``[B, Q, h, w]`` mask logits of the previous prediction.
        size: ``(H, W)`` of the level the next layer attends to.
        num_heads: attention heads (the mask is repeated per head).

    Returns:
        Bool ``[B * num_heads, Q, H * W]`` (``nn.MultiheadAttention``'s ``attn_mask`` layout), detached.
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    blocked = resized.flatten(2).sigmoid() < 0.5  # [B, Q, HW]
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)


class MaskedAttentionDecoderLayer(nn.Module):
    """Post-norm layer: masked cross-attention, self-attention, FFN (each ``x = norm(x + f(x))``).

    Positions: ``query_pos`` is added to the queries of both attentions and to the keys of the
    self-attention, ``memory_pos`` to the keys of the cross-attention; values carry none.

    Args:
        dim: width.
        num_heads: attention heads.
        ffn_channels: FFN hidden width.
        dropout: attention and FFN dropout.
    """

    def __init__(self, dim: int, num_heads: int, ffn_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_channels)
        self.linear2 = nn.Linear(ffn_channels, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``[B, Q, C]``; ``memory``/``memory_pos``: ``[B, HW, C]``; ``attn_mask``: bool
        ``[B * heads, Q, HW]`` (``True`` = blocked) or ``None``."""
        out = self.cross_attn(x + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
                              need_weights=False)[0]
        x = self.norm1(x + self.dropout(out))
        q = x + query_pos
        x = self.norm2(x + self.dropout(self.self_attn(q, q, x, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout(ffn))


class MaskedAttentionDecoder(nn.Module):
    """Queries, decoder layers and the class / mask predictors of Mask2Former.

    Args:
        num_classes: object / stuff classes ``K``; the class logits have ``K + 1`` entries.
        in_channels: width of the pixel decoder's multi-scale maps.
        hidden_dim: decoder width (1024 in the EVA release); maps of another width get a 1x1
            projection (``input_proj``), equal widths none (as mmdet, unless ``enforce_input_proj``).
        mask_dim: width of the mask features (``mask_embed``'s output).
        num_queries: learned queries (200 in the EVA release).
        num_heads: attention heads (32 in the EVA release, 8 in Mask2Former).
        ffn_channels: FFN hidden width (4096 in the EVA release, 2048 in Mask2Former).
        num_layers: decoder layers (8 for EVA; 9 in the rel-pos variant and in Mask2Former).
        num_levels: pixel-decoder levels used round-robin (3).
        dropout: attention / FFN dropout (0).
        enforce_input_proj: add the 1x1 projections even when the widths agree.
        grad_checkpointing: recompute each decoder layer in the backward pass (training only).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, hidden_dim: int = 256, mask_dim: int = 256,
                 *, num_queries: int = 100, num_heads: int = 8, ffn_channels: int = 2048, num_layers: int = 9,
                 num_levels: int = 3, dropout: float = 0.0, enforce_input_proj: bool = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if num_classes < 1 or num_queries < 1 or num_layers < 1:
            raise ValueError(f"MaskedAttentionDecoder: num_classes ({num_classes}), num_queries "
                             f"({num_queries}) and num_layers ({num_layers}) must be positive")
        self.num_classes, self.num_queries, self.num_heads = num_classes, num_queries, num_heads
        self.num_levels, self.hidden_dim = num_levels, hidden_dim
        self.grad_checkpointing = grad_checkpointing
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim or enforce_input_proj
            else nn.Identity() for _ in range(num_levels))
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(MaskedAttentionDecoderLayer(hidden_dim, num_heads, ffn_channels, dropout)
                                    for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(hidden_dim)
        self.cls_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, mask_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """mmdet's init: Xavier-normal matrices in the decoder layers, Kaiming-uniform (a=1) input
        projections; embeddings and predictors keep PyTorch's defaults."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)

    def predict(self, queries: torch.Tensor,
                mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, Q, K + 1]`` and mask logits ``[B, Q, H, W]`` from decoder states."""
        normed = self.post_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed), mask_features)
        return self.cls_embed(normed), masks

    def forward(self, multi_scale_features: Sequence[torch.Tensor], mask_features: torch.Tensor) -> dict:
        """Run the decoder.

        Args:
            multi_scale_features: ``num_levels`` maps ``[B, in_channels, h_l, w_l]``, coarsest first.
            mask_features: ``[B, mask_dim, H, W]`` per-pixel embeddings (stride 4).

        Returns:
            ``{"pred_logits": [B, Q, K + 1], "pred_masks": [B, Q, H, W], "aux_outputs": [...]}``,
            ``aux_outputs`` holding the ``num_layers`` earlier predictions (first = before any layer)
            in the same form, as :class:`~mask2former_eva.criterion.SetCriterion` reads them.
        """
        if len(multi_scale_features) != self.num_levels:
            raise ValueError(f"MaskedAttentionDecoder: built for {self.num_levels} levels, got "
                             f"{len(multi_scale_features)} maps")
        batch = mask_features.shape[0]
        memories, positions, sizes = [], [], []
        for i, (proj, feat) in enumerate(zip(self.input_proj, multi_scale_features)):
            h, w = feat.shape[-2:]
            sizes.append((h, w))
            memories.append(proj(feat).flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            pos = sine_position_embedding(h, w, self.hidden_dim // 2, device=feat.device, dtype=feat.dtype)
            positions.append(pos.flatten(1).transpose(0, 1)[None].expand(batch, -1, -1))
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        x = self.query_feat.weight[None].expand(batch, -1, -1)

        logits, masks = self.predict(x, mask_features)
        predictions = [(logits, masks)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            attn_mask = attention_mask_from_masks(masks, sizes[level], self.num_heads)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, query_pos, memories[level], positions[level], attn_mask,
                               use_reentrant=False)
            else:
                x = layer(x, query_pos, memories[level], positions[level], attn_mask)
            logits, masks = self.predict(x, mask_features)
            predictions.append((logits, masks))
        return {"pred_logits": logits, "pred_masks": masks,
                "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]}
