"""detectron2's ``ROIPooler``: RoIAlign of each box on the pyramid level that suits its size.

A box of side ``sqrt(area)`` goes to level ``floor(4 + log2(sqrt(area) / 224))`` (FPN paper eq. 1,
canonical level 4 at box size 224), clamped to the levels given, and is pooled with
``torchvision.ops.roi_align(aligned=True)`` (detectron2's ``ROIAlignV2``: pixel centres at ``+0.5``).
``docs/recipes/detection.md#heads`` holds ViTDet's settings (7x7 box, 14x14 mask pooling).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torchvision.ops import roi_align

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]


def assign_boxes_to_levels(box_lists: Sequence[torch.Tensor], min_level: int, max_level: int,
                           canonical_box_size: int = 224, canonical_level: int = 4) -> torch.Tensor:
    """Index (0 = ``min_level``) of the pyramid level each box is pooled from.

    Args:
        box_lists: per image, XYXY boxes ``[Ni, 4]``.
        min_level, max_level: the levels available (level ``k`` has stride ``2**k``).
        canonical_box_size, canonical_level: a box of this side maps to this level.

    Returns:
        int64 ``[sum Ni]`` in ``[0, max_level - min_level]``.
    """
    boxes = torch.cat(list(box_lists))
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    # the 1e-8 keeps log2 finite for empty boxes, as in detectron2
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[sum Ni, 5]`` rows ``(image index, x0, y0, x1, y1)`` as ``roi_align`` reads them."""
    rows = []
    for i, boxes in enumerate(box_lists):
        rows.append(torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes], dim=1))
    return torch.cat(rows, dim=0)


class ROIPooler(nn.Module):
    """Pool a fixed-size feature per box from a feature pyramid (detectron2's ``ROIPooler``).

    Args:
        output_size: pooled side (int) or ``(h, w)``.
        scales: ``1 / stride`` of each level, finest first, each a power of 2 (ViTDet p2-p5:
            ``(1/4, 1/8, 1/16, 1/32)``).
        sampling_ratio: RoIAlign samples per bin side (0: adaptive, as detectron2's default).
        pooler_type: ``"ROIAlignV2"`` (aligned) or ``"ROIAlign"`` (legacy, not aligned).
        canonical_box_size, canonical_level: see :func:`assign_boxes_to_levels`.
    """

    def __init__(self, output_size: int | tuple[int, int], scales: Sequence[float], sampling_ratio: int = 0,
                 pooler_type: str = "ROIAlignV2", canonical_box_size: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2:
            raise ValueError(f"ROIPooler output_size={output_size!r}: expected an int or (h, w)")
        if pooler_type not in ("ROIAlignV2", "ROIAlign"):
            raise ValueError(f"ROIPooler pooler_type={pooler_type!r}: expected 'ROIAlignV2' or 'ROIAlign' "
                             "(torchvision has no ROIPool / rotated variants here)")
        scales = [float(s) for s in scales]
        if not scales:
            raise ValueError("ROIPooler needs at least one scale")
        levels = [-math.log2(s) for s in scales]
        for s, lv in zip(scales, levels):
            if not math.isclose(lv, round(lv)):
                raise ValueError(f"ROIPooler scales={scales}: {s} is not a power of 2 (1 / stride)")
        if [round(lv) for lv in levels] != list(range(round(levels[0]), round(levels[-1]) + 1)):
            raise ValueError(f"ROIPooler scales={scales}: expected consecutive levels, finest first")
        self.output_size = tuple(int(s) for s in output_size)
        self.scales = scales
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = pooler_type == "ROIAlignV2"
        self.min_level = round(levels[0])
        self.max_level = round(levels[-1])
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: Sequence[torch.Tensor], box_lists: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pool every box.

        Args:
            x: one feature map ``[B, C, Hl, Wl]`` per level, in the order of ``scales``.
            box_lists: per image (``B`` of them), XYXY boxes ``[Ni, 4]`` in input pixels.

        Returns:
            ``[sum Ni, C, out_h, out_w]``, boxes in image order.
        """
        if len(x) != len(self.scales):
            raise ValueError(f"ROIPooler got {len(x)} feature maps for {len(self.scales)} scales")
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(f"ROIPooler got {len(box_lists)} box lists for a batch of {x[0].shape[0]} "
                             "images")
        rois = convert_boxes_to_pooler_format([b.to(x[0].dtype) for b in box_lists])
        if len(x) == 1:
            return roi_align(x[0], rois, self.output_size, self.scales[0], self.sampling_ratio, self.aligned)
        level_idx = assign_boxes_to_levels(box_lists, self.min_level, self.max_level,
                                           self.canonical_box_size, self.canonical_level)
        out = x[0].new_zeros((rois.shape[0], x[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(x, self.scales)):
            inds = torch.nonzero(level_idx == level, as_tuple=True)[0]
            if inds.numel():
                out[inds] = roi_align(feat, rois[inds], self.output_size, scale, self.sampling_ratio,
                                      self.aligned).to(out.dtype)
        return out
