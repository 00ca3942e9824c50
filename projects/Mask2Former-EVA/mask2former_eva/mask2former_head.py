"""``Mask2FormerHead``: pixel decoder + masked-attention decoder, and semantic inference from them."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder

__all__ = ["Mask2FormerHead", "semantic_inference"]


def semantic_inference(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Per-class scores ``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, no-object left out.

    Args:
        pred_logits: ``[B, Q, K + 1]`` class logits.
        pred_masks: ``[B, Q, H, W]`` mask logits.

    Returns:
        ``[B, K, H, W]`` scores (argmax over ``K`` is the label map).
    """
    # fp32 even under autocast: bf16 scores would tie classes whose scores differ by < 1% (argmax flips)
    with torch.autocast(device_type=pred_masks.device.type, enabled=False):
        probs = pred_logits.float().softmax(-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", probs, pred_masks.float().sigmoid())


class Mask2FormerHead(nn.Module):
    """Mask2Former's head on a 4-level feature pyramid (strides 4, 8, 16, 32).

    Args:
        in_channels: channels of the 4 backbone maps, finest first (``[embed_dim] * 4`` for
            :class:`~mask2former_eva.vit_adapter.EVAAdapter`).
        num_classes: classes ``K`` (150 for ADE20K, 171 for COCO-Stuff-164K).
        feat_channels: pixel-decoder and transformer-decoder width (1024 in the EVA release).
        out_channels: mask-feature width (1024 in the EVA release).
        num_queries: learned queries (200 in the EVA release).
        pixel_decoder_layers: deformable encoder layers (6).
        pixel_decoder_heads: deformable attention heads (32 in the EVA release).
        pixel_decoder_ffn: pixel-decoder FFN width (4096 in the EVA release).
        num_points: deformable sampling points (4).
        decoder_layers: masked-attention decoder layers (8 for EVA; 9 in the rel-pos variant).
        decoder_heads: decoder attention heads (32 in the EVA release).
        decoder_ffn: decoder FFN width (4096 in the EVA release).
        num_groups: GroupNorm groups of the pixel decoder (32).
        dropout: dropout of both decoders (0).
        grad_checkpointing: activation checkpointing of every pixel-decoder and decoder layer in
            training (memory for time, as the release's ``with_cp``).

    ``forward(features)`` returns the decoder's prediction dict (``pred_logits``, ``pred_masks`` at
    stride 4, ``aux_outputs``); see :class:`MaskedAttentionDecoder`.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, feat_channels: int = 256,
                 out_channels: int = 256, *, num_queries: int = 100, pixel_decoder_layers: int = 6,
                 pixel_decoder_heads: int = 8, pixel_decoder_ffn: int = 1024, num_points: int = 4,
                 decoder_layers: int = 9, decoder_heads: int = 8, decoder_ffn: int = 2048,
                 num_groups: int = 32, dropout: float = 0.0, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels, feat_channels, out_channels, num_layers=pixel_decoder_layers,
            num_heads=pixel_decoder_heads, num_points=num_points, ffn_channels=pixel_decoder_ffn,
            num_groups=num_groups, dropout=dropout, grad_checkpointing=grad_checkpointing)
        self.transformer_decoder = MaskedAttentionDecoder(
            num_classes, feat_channels, feat_channels, out_channels, num_queries=num_queries,
            num_heads=decoder_heads, ffn_channels=decoder_ffn, num_layers=decoder_layers, dropout=dropout,
            grad_checkpointing=grad_checkpointing)

    @property
    def num_layers(self) -> int:
        """Decoder layers (= number of auxiliary predictions)."""
        return len(self.transformer_decoder.layers)

    def forward(self, features: Sequence[torch.Tensor]) -> dict:
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale, mask_features)

    def semantic_scores(self, features: Sequence[torch.Tensor],
                        size: tuple[int, int] | None = None) -> torch.Tensor:
        """``[B, K, H, W]`` semantic scores of the last prediction, resized (bilinear) to ``size``
        when given (mmseg's order: class x mask scores at stride 4, then resized)."""
        out = self(features)
        scores = semantic_inference(out["pred_logits"], out["pred_masks"])
        if size is not None and tuple(scores.shape[-2:]) != tuple(size):
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return scores
