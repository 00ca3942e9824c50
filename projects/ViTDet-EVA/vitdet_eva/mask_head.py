"""detectron2's ``MaskRCNNConvUpsampleHead`` with ``mask_rcnn_loss`` and ``mask_rcnn_inference``.

ViTDet's mask head: 4 convs (256, LN) on 14x14 pooled features, a 2x deconvolution to 28x28, and a
1x1 ``predictor`` with one mask per class. The loss is the per-pixel BCE of the mask of each
foreground RoI's ground-truth class; its target is the RoI's gt mask cut out with
``roi_align(aligned=True)`` and thresholded at 0.5 (detectron2's ``BitMasks.crop_and_resize``).
At inference each detection keeps the sigmoid of its predicted class's mask; EVA's optional
"maskness" rescoring (:func:`maskness_rescore`, ``maskness_thresh``) then multiplies each score by
the mean probability of the mask's confident pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from .box_head import as_shape_spec, c2_msra_fill
from .layers import Conv2d, ShapeSpec, get_norm
from .structures import Instances

__all__ = ["MaskRCNNConvUpsampleHead", "mask_rcnn_loss", "mask_rcnn_inference", "crop_and_resize_masks",
           "paste_masks_in_image", "maskness", "maskness_rescore"]


def crop_and_resize_masks(masks: torch.Tensor, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Bool ``[N, M, M]``: each ``masks[i] [H, W]`` cut to ``boxes[i]`` (XYXY pixels), resized, >= 0.5."""
    if masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"crop_and_resize_masks: {masks.shape[0]} masks for {boxes.shape[0]} boxes")
    if masks.shape[0] == 0:
        return masks.new_zeros((0, mask_size, mask_size), dtype=torch.bool)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=torch.float32)[:, None],
                      boxes.float()], dim=1).to(masks.device)
    out = roi_align(masks.float()[:, None], rois, (mask_size, mask_size), 1.0, 0, True).squeeze(1)
    return out >= 0.5


def mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: Sequence[Instances]) -> torch.Tensor:
    """Mean per-pixel BCE between each RoI's gt-class mask logits and its cropped gt mask.

    Args:
        pred_mask_logits: ``[R, C, M, M]`` (C = K classes, or 1 for class-agnostic masks).
        instances: per image, the foreground RoIs: ``proposal_boxes``, ``gt_classes`` and
            ``gt_masks`` (bool ``[Ri, H, W]``, each RoI's matched gt mask).

    Returns:
        Scalar loss (0, still connected to the graph, when there are no RoIs).
    """
    cls_agnostic = pred_mask_logits.size(1) == 1
    mask_side = pred_mask_logits.size(2)
    if pred_mask_logits.size(2) != pred_mask_logits.size(3):
        raise ValueError(f"mask logits must be square; got {tuple(pred_mask_logits.shape)}")
    gt_classes, gt_masks = [], []
    for i, inst in enumerate(instances):
        if len(inst) == 0:
            continue
        if not inst.has("gt_masks"):
            raise ValueError(f"mask_rcnn_loss: instances[{i}] has no gt_masks; it has "
                             f"{sorted(inst.get_fields())}")
        if not cls_agnostic:
            gt_classes.append(inst.gt_classes.to(torch.int64))
        gt_masks.append(crop_and_resize_masks(inst.gt_masks, inst.proposal_boxes, mask_side))
    if not gt_masks:
        return pred_mask_logits.sum() * 0
    gt_masks = torch.cat(gt_masks).to(pred_mask_logits.device)
    if cls_agnostic:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        idx = torch.arange(pred_mask_logits.size(0), device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[idx, torch.cat(gt_classes)]
    return F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks.to(pred_mask_logits.dtype),
                                              reduction="mean")


def maskness(mask_probs: torch.Tensor, maskness_thresh: float = 0.5) -> torch.Tensor:
    """EVA's mask quality ``[D]``: the mean of the probabilities above ``maskness_thresh`` in each mask.

    Args:
        mask_probs: ``[D, 1, M, M]`` (or ``[D, M, M]``) mask probabilities (after the sigmoid).
        maskness_thresh: pixels with a probability strictly above it count as inside the mask.

    Returns:
        ``[D]``: ``sum(p * (p > t)) / count(p > t)``; 0 for a mask with no pixel above ``t``.
    """
    probs = mask_probs.flatten(1).float()
    inside = probs > maskness_thresh
    count = inside.sum(dim=1)
    total = (probs * inside).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def maskness_rescore(instances: Instances, maskness_thresh: float = 0.5) -> Instances:
    """Multiply ``scores`` by :func:`maskness` of ``pred_masks`` and re-sort, highest score first.

    EVA-01 evaluates masks this way (``model.roi_heads.maskness_thresh=0.5``): a confident class
    score on a blurry mask drops below a sharper mask's. Applied after top-k, so it reorders the
    detections but does not change which are kept. Returns a new ``Instances``.
    """
    if not instances.has("pred_masks") or not instances.has("scores"):
        raise ValueError(f"maskness_rescore needs scores and pred_masks; the instances have "
                         f"{sorted(instances.get_fields())}")
    scores = instances.scores * maskness(instances.pred_masks, maskness_thresh).to(instances.scores)
    order = torch.argsort(scores, descending=True, stable=True)
    out = instances[order]
    out.scores = scores[order]
    return out


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: Sequence[Instances]) -> None:
    """Set ``pred_masks [Di, 1, M, M]`` (probabilities of each detection's ``pred_classes`` mask) in place."""
    cls_agnostic = pred_mask_logits.size(1) == 1
    if cls_agnostic:
        mask_probs = pred_mask_logits.sigmoid()
    else:
        num_masks = pred_mask_logits.shape[0]
        classes = (torch.cat([i.pred_classes for i in pred_instances]) if pred_instances
                   else pred_mask_logits.new_zeros((0,), dtype=torch.int64))
        idx = torch.arange(num_masks, device=pred_mask_logits.device)
        mask_probs = pred_mask_logits[idx, classes][:, None].sigmoid()
    for prob, inst in zip(mask_probs.split([len(i) for i in pred_instances], dim=0), pred_instances):
        inst.pred_masks = prob


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, image_shape: tuple[int, int],
                         threshold: float = 0.5) -> torch.Tensor:
    """Paste ``M x M`` box-relative mask probabilities into the image (detectron2's ``paste_masks_in_image``).

    Each image pixel centre ``(x + 0.5, y + 0.5)`` inside (or half a mask cell around) its box is
    sampled bilinearly from the mask (``grid_sample``, ``align_corners=False``, zeros outside), then
    thresholded. Only the box's neighbourhood is computed, one box at a time, so memory stays
    ``O(box area)`` at 1536 x 1536 with 1000 detections.

    Args:
        masks: ``[N, M, M]`` (or ``[N, 1, M, M]``) probabilities.
        boxes: ``[N, 4]`` XYXY in image pixels.
        image_shape: ``(h, w)``.
        threshold: >= 0: bool masks ``prob >= threshold``; < 0: uint8 ``prob * 255``.

    Returns:
        ``[N, h, w]`` bool (or uint8).
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"paste_masks_in_image: {masks.shape[0]} masks for {boxes.shape[0]} boxes")
    img_h, img_w = (int(s) for s in image_shape)
    dtype = torch.bool if threshold >= 0 else torch.uint8
    out = torch.zeros((masks.shape[0], img_h, img_w), dtype=dtype, device=masks.device)
    for i, (mask, box) in enumerate(zip(masks.float(), boxes.float())):
        x0, y0, x1, y1 = box.tolist()
        if x1 <= x0 or y1 <= y0:
            continue  # an empty box has an empty mask
        # one pixel of margin: bilinear sampling reaches half a mask cell outside the box
        xa, ya = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
        xb, yb = min(int(math.ceil(x1)) + 1, img_w), min(int(math.ceil(y1)) + 1, img_h)
        if xb <= xa or yb <= ya:
            continue
        gx = ((torch.arange(xa, xb, device=masks.device, dtype=torch.float32) + 0.5) - x0) / (x1 - x0) * 2 - 1
        gy = ((torch.arange(ya, yb, device=masks.device, dtype=torch.float32) + 0.5) - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        pasted = F.grid_sample(mask[None, None], grid, align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = pasted >= threshold if threshold >= 0 else (pasted * 255).to(torch.uint8)
    return out


class MaskRCNNConvUpsampleHead(nn.Sequential):
    """Convs (+ norm + ReLU), a 2x ``deconv`` (+ ReLU) and a 1x1 ``predictor`` (detectron2's names).

    Args:
        input_shape: pooled feature shape (channels used).
        num_classes: K; one mask per class (1 with ``cls_agnostic_mask``).
        conv_dims: channels of each ``mask_fcn`` conv, then of the deconv (last entry).
        conv_norm: ``"LN"`` in ViTDet; a normed conv has no bias.
        cls_agnostic_mask: predict one mask for every class.
        loss_weight: multiplies ``loss_mask``.
    """

    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: Sequence[int],
                 conv_norm: str = "", cls_agnostic_mask: bool = False, loss_weight: float = 1.0):
        super().__init__()
        if len(conv_dims) < 1:
            raise ValueError("MaskRCNNConvUpsampleHead conv_dims must have at least 1 entry (the deconv's)")
        self.loss_weight = float(loss_weight)
        self.conv_norm_relus = []
        cur_channels = as_shape_spec(input_shape).channels
        for k, conv_dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(cur_channels, conv_dim, kernel_size=3, stride=1, padding=1, bias=not conv_norm,
                          norm=get_norm(conv_norm, conv_dim), activation=nn.ReLU())
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            cur_channels = conv_dim
        self.deconv = nn.ConvTranspose2d(cur_channels, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU())
        num_mask_classes = 1 if cls_agnostic_mask else num_classes
        self.predictor = Conv2d(conv_dims[-1], num_mask_classes, kernel_size=1, stride=1, padding=0)
        for layer in self.conv_norm_relus + [self.deconv]:
            c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[R, C, 2S, 2S]`` from pooled features ``[R, Cin, S, S]``."""
        for layer in self:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor, instances: list[Instances]):
        """Training: ``{"loss_mask": ...}`` for the foreground RoIs; inference: ``instances`` with
        ``pred_masks`` set."""
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances
