"""Box <-> delta encoding of detectron2 (``Box2BoxTransform``), used by the RPN and the cascade heads.

The deltas are detectron2's (R-CNN's) parametrisation: centre shifts in units of the reference
box's size and log size ratios, each multiplied by a weight (ViTDet: RPN (1, 1, 1, 1), cascade
stages (10, 10, 5, 5) / (20, 20, 10, 10) / (30, 30, 15, 15),
``docs/recipes/detection.md#heads``). Widths are ``x1 - x0`` (no legacy ``+ 1``), as in detectron2
and torchvision's ``BoxCoder``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["Box2BoxTransform", "DEFAULT_SCALE_CLAMP"]

# Caps the predicted log size ratio so exp() cannot overflow: no box grows past 1000/16 of its anchor.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """Encode ``target`` boxes relative to ``src`` boxes as ``(dx, dy, dw, dh)`` and decode them back.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the four deltas.
        scale_clamp: upper bound on ``dw``, ``dh`` (after dividing by the weights) when decoding.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"Box2BoxTransform weights={tuple(weights)}: expected 4 numbers "
                             "(wx, wy, ww, wh)")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas ``[N, 4]`` that turn each ``src_boxes[i]`` into ``target_boxes[i]`` (both XYXY ``[N, 4]``).

        Raises:
            ValueError: shapes differ or are not ``[N, 4]``.
        """
        if src_boxes.shape != target_boxes.shape or src_boxes.shape[-1] != 4 or src_boxes.dim() != 2:
            raise ValueError(f"get_deltas: src_boxes {tuple(src_boxes.shape)} and target_boxes "
                             f"{tuple(target_boxes.shape)} must both be [N, 4]")
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        src_cx = src_boxes[:, 0] + 0.5 * src_w
        src_cy = src_boxes[:, 1] + 0.5 * src_h

        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h

        wx, wy, ww, wh = self.weights
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes obtained by applying ``deltas [N, 4k]`` to ``boxes [N, 4]``; returns ``[N, 4k]``.

        ``k > 1`` holds one box per class (class-specific regression), as in detectron2.
        """
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0 or boxes.shape != (deltas.shape[0], 4):
            raise ValueError(f"apply_deltas: deltas {tuple(deltas.shape)} must be [N, 4k] and boxes "
                             f"{tuple(boxes.shape)} [N, 4]")
        deltas = deltas.float()  # exp() of half-precision deltas overflows long before the clamp
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)
