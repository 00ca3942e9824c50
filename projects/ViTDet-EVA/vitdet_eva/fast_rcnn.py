"""detectron2's ``FastRCNNOutputLayers``: class scores and box deltas per RoI, their losses and inference.

Losses are detectron2's: ``loss_cls`` is softmax cross-entropy averaged over the sampled RoIs (or
sigmoid CE / the federated loss for LVIS, ``vitdet_eva.data.federated``); ``loss_box_reg`` is the
smooth-L1 (L1 at beta 0) of the foreground RoIs' deltas, summed and divided by the number of
*all* sampled RoIs, so background RoIs dilute it. Inference keeps, per class, boxes scoring above
``test_score_thresh``, runs per-class NMS (``torchvision.ops.batched_nms``) and keeps the top
``test_topk_per_image`` (``docs/recipes/detection.md#heads``). EVA's evaluation options are keyword
arguments of :func:`fast_rcnn_inference` with the names of EVA's detectron2 fork (set on
``model.roi_heads``): ``use_soft_nms`` with ``method`` / ``iou_threshold`` / ``sigma`` /
``class_wise`` (``vitdet_eva.soft_nms``) and ``override_score_thresh``
(``docs/recipes/detection.md#evaluation``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import (batched_nms, clip_boxes_to_image, complete_box_iou_loss, distance_box_iou_loss,
                             generalized_box_iou_loss)

from .box_head import as_shape_spec
from .box_regression import Box2BoxTransform
from .data.federated import federated_sigmoid_ce_loss
from .layers import ShapeSpec
from .soft_nms import batched_soft_nms
from .structures import Instances

# detectron2's box_reg_loss_type values other than "smooth_l1": losses on the decoded boxes
_BOX_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss,
                   "ciou": complete_box_iou_loss}

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]


def fast_rcnn_inference(boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                        image_shapes: Sequence[tuple[int, int]], score_thresh: float, nms_thresh: float,
                        topk_per_image: int, *, use_soft_nms: bool = False, method: str = "linear",
                        iou_threshold: float = 0.3, sigma: float = 0.5, class_wise: bool = True,
                        soft_nms_min_score: float = 1e-3, override_score_thresh: float | None = None
                        ) -> tuple[list[Instances], list[torch.Tensor]]:
    """Per image: threshold, per-class NMS (or soft-NMS), top-k (detectron2's ``fast_rcnn_inference``).

    Args:
        boxes: per image ``[R, 4]`` (class-agnostic) or ``[R, 4K]``.
        scores: per image ``[R, K + 1]`` (last column background).
        image_shapes: per image ``(h, w)`` to clip boxes to.
        score_thresh, nms_thresh, topk_per_image: as the names say (``topk < 0``: keep all).
        use_soft_nms: soft-NMS (:func:`vitdet_eva.soft_nms.batched_soft_nms`) instead of NMS at
            ``nms_thresh``; the kept detections carry their decayed scores. EVA: True, linear, 0.6.
        method, iou_threshold, sigma: the soft-NMS decay (EVA's fork: ``"linear"``, 0.3, 0.5 by default).
        class_wise: soft-NMS within each class (True) or across all classes (False, EVA-02's fork
            default; its README turns it on).
        soft_nms_min_score: decayed scores below it are dropped (mmcv's ``min_score``, 1e-3).
        override_score_thresh: replaces ``score_thresh`` when given (EVA evaluates with 0.0).

    Returns:
        ``(instances, kept_indices)``: ``Instances`` with ``pred_boxes [D, 4]``, ``scores [D]``,
        ``pred_classes [D]``, and for each the index of the RoI each detection came from.
    """
    if override_score_thresh is not None:
        score_thresh = override_score_thresh
    soft = (dict(method=method, iou_threshold=iou_threshold, sigma=sigma, class_wise=class_wise,
                 min_score=soft_nms_min_score) if use_soft_nms else None)
    results = [fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image, soft)
               for b, s, shape in zip(boxes, scores, image_shapes)]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(boxes: torch.Tensor, scores: torch.Tensor, image_shape: tuple[int, int],
                                     score_thresh: float, nms_thresh: float, topk_per_image: int,
                                     soft_nms: dict | None = None) -> tuple[Instances, torch.Tensor]:
    """One image of :func:`fast_rcnn_inference` (``soft_nms``: the soft-NMS settings, None = NMS)."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_shape).view(-1, num_bbox_reg_classes, 4)
    filter_mask = scores > score_thresh
    filter_inds = filter_mask.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]
    if soft_nms is None:
        keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
        new_scores = scores[keep]
    else:
        classes = filter_inds[:, 1] if soft_nms["class_wise"] else torch.zeros_like(filter_inds[:, 1])
        opts = soft_nms
        keep, new_scores = batched_soft_nms(boxes, scores, classes, opts["method"], opts["iou_threshold"],
                                            opts["sigma"], opts["min_score"])
    if topk_per_image >= 0:
        keep, new_scores = keep[:topk_per_image], new_scores[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], new_scores, filter_inds[keep]
    result = Instances(image_shape, pred_boxes=boxes, scores=scores, pred_classes=filter_inds[:, 1])
    roi_index = filter_inds[:, 0]
    if not valid.all():
        roi_index = valid.nonzero()[:, 0][roi_index]
    return result, roi_index


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on the box head's output: ``cls_score`` (K + 1) and ``bbox_pred`` (4 or 4K).

    Args:
        input_shape: the box head's output shape (ViTDet: ``ShapeSpec(channels=1024)``).
        box2box_transform: the stage's delta encoding (weights per cascade stage).
        num_classes: K foreground classes.
        test_score_thresh: minimum score kept at inference (ViTDet's cascade: 0.05).
        test_nms_thresh: per-class NMS IoU.
        test_topk_per_image: detections kept per image.
        cls_agnostic_bbox_reg: one box per RoI instead of one per class (ViTDet: True).
        smooth_l1_beta: 0 is L1.
        box_reg_loss_type: ``"smooth_l1"`` on the deltas (ViTDet) or ``"giou"`` / ``"diou"`` / ``"ciou"`` on
            the decoded boxes (torchvision's losses).
        use_sigmoid_ce: sigmoid cross-entropy instead of softmax.
        use_fed_loss: the federated loss (implies sigmoid CE); needs ``get_fed_loss_cls_weights``.
        fed_loss_num_classes: classes in the federated loss (50).
        get_fed_loss_cls_weights: a callable returning the ``[K]`` class weights (called once here).
        loss_weight: a float for every loss or a dict ``{"loss_cls": .., "loss_box_reg": ..}``.
    """

    def __init__(self, input_shape: ShapeSpec | int, *, box2box_transform: Box2BoxTransform, num_classes: int,
                 test_score_thresh: float = 0.0, test_nms_thresh: float = 0.5, test_topk_per_image: int = 100,
                 cls_agnostic_bbox_reg: bool = False, smooth_l1_beta: float = 0.0,
                 box_reg_loss_type: str = "smooth_l1",
                 use_sigmoid_ce: bool = False, use_fed_loss: bool = False, fed_loss_num_classes: int = 50,
                 get_fed_loss_cls_weights: Callable[[], torch.Tensor] | None = None,
                 loss_weight: float | dict[str, float] = 1.0):
        super().__init__()
        input_shape = as_shape_spec(input_shape)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        if num_classes < 1:
            raise ValueError(f"FastRCNNOutputLayers num_classes={num_classes}: expected >= 1")
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_bbox_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        self.bbox_pred = nn.Linear(input_size, num_bbox_reg_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)
        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = float(smooth_l1_beta)
        if box_reg_loss_type != "smooth_l1" and box_reg_loss_type not in _BOX_IOU_LOSSES:
            raise ValueError(f"box_reg_loss_type={box_reg_loss_type!r}: expected 'smooth_l1' or one of "
                             f"{sorted(_BOX_IOU_LOSSES)}")
        self.box_reg_loss_type = box_reg_loss_type
        self.test_score_thresh = float(test_score_thresh)
        self.test_nms_thresh = float(test_nms_thresh)
        self.test_topk_per_image = int(test_topk_per_image)
        self.use_fed_loss = bool(use_fed_loss)
        self.use_sigmoid_ce = bool(use_sigmoid_ce) or self.use_fed_loss
        self.fed_loss_num_classes = int(fed_loss_num_classes)
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_cls": float(loss_weight), "loss_box_reg": float(loss_weight)}
        self.loss_weight = dict(loss_weight)
        if self.use_fed_loss:
            if get_fed_loss_cls_weights is None:
                raise ValueError("use_fed_loss=True needs get_fed_loss_cls_weights (a callable returning "
                                 "[num_classes] weights, e.g. vitdet_eva.data.get_fed_loss_cls_weights)")
            weights = torch.as_tensor(get_fed_loss_cls_weights(), dtype=torch.float32)
            if weights.shape != (num_classes,):
                raise ValueError(f"get_fed_loss_cls_weights returned shape {tuple(weights.shape)}; expected "
                                 f"({num_classes},), one weight per class")
            self.register_buffer("fed_loss_cls_weights", weights, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [R, K + 1], proposal_deltas [R, 4 or 4K])`` from box features ``[R, ...]``."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: Sequence[Instances]
               ) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_box_reg`` for sampled RoIs.

        Args:
            predictions: the output of :meth:`forward`.
            proposals: per image, ``Instances`` with ``proposal_boxes``, ``gt_classes`` (``K`` =
                background) and ``gt_boxes``.
        """
        scores, proposal_deltas = predictions
        if len(proposals):
            gt_classes = torch.cat([p.gt_classes for p in proposals])
            proposal_boxes = torch.cat([p.proposal_boxes for p in proposals])
            for i, p in enumerate(proposals):
                # only foreground RoIs read gt_boxes; an image without gt has none (detectron2)
                has_fg = bool(((p.gt_classes >= 0) & (p.gt_classes < self.num_classes)).any())
                if has_fg and not p.has("gt_boxes"):
                    raise ValueError(f"FastRCNNOutputLayers.losses: proposals[{i}] has foreground RoIs "
                                     "but no gt_boxes")
            gt_boxes = torch.cat([p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes for p in proposals])
        else:
            gt_classes = scores.new_zeros((0,), dtype=torch.int64)
            proposal_boxes = gt_boxes = scores.new_zeros((0, 4))
        if self.use_sigmoid_ce:
            loss_cls = self.sigmoid_cross_entropy_loss(scores, gt_classes)
        else:
            loss_cls = (F.cross_entropy(scores, gt_classes, reduction="mean") if gt_classes.numel()
                        else scores.sum() * 0.0)
        losses = {"loss_cls": loss_cls,
                  "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def sigmoid_cross_entropy_loss(self, pred_class_logits: torch.Tensor, gt_classes: torch.Tensor
                                   ) -> torch.Tensor:
        """Sigmoid CE summed over classes and divided by the RoI count (federated when enabled)."""
        if pred_class_logits.numel() == 0:
            return pred_class_logits.sum() * 0.0
        if self.use_fed_loss:
            return federated_sigmoid_ce_loss(pred_class_logits, gt_classes, self.num_classes,
                                             self.fed_loss_cls_weights, self.fed_loss_num_classes)
        n = pred_class_logits.shape[0]
        target = F.one_hot(gt_classes, self.num_classes + 1)[:, : self.num_classes].to(pred_class_logits)
        loss = F.binary_cross_entropy_with_logits(pred_class_logits[:, :-1], target, reduction="none")
        return loss.sum() / n

    def box_reg_loss(self, proposal_boxes: torch.Tensor, gt_boxes: torch.Tensor, pred_deltas: torch.Tensor,
                     gt_classes: torch.Tensor) -> torch.Tensor:
        """Smooth-L1 of the foreground deltas, summed, divided by ``max(#sampled RoIs, 1)``."""
        box_dim = proposal_boxes.shape[1]
        fg_inds = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes), as_tuple=True)[0]
        if pred_deltas.shape[1] == box_dim:
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        if self.box_reg_loss_type in _BOX_IOU_LOSSES:
            pred_boxes = self.box2box_transform.apply_deltas(fg_pred_deltas, proposal_boxes[fg_inds])
            loss = _BOX_IOU_LOSSES[self.box_reg_loss_type](pred_boxes, gt_boxes[fg_inds], reduction="sum")
            return loss / max(gt_classes.numel(), 1.0)
        gt_deltas = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        if self.smooth_l1_beta < 1e-5:
            loss = F.l1_loss(fg_pred_deltas, gt_deltas, reduction="sum")
        else:
            loss = F.smooth_l1_loss(fg_pred_deltas, gt_deltas, beta=self.smooth_l1_beta, reduction="sum")
        return loss / max(gt_classes.numel(), 1.0)

    def inference(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: Sequence[Instances]
                  ) -> tuple[list[Instances], list[torch.Tensor]]:
        """Detections per image (see :func:`fast_rcnn_inference`)."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        return fast_rcnn_inference(boxes, scores, [p.image_size for p in proposals], self.test_score_thresh,
                                   self.test_nms_thresh, self.test_topk_per_image)

    def predict_boxes(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: Sequence[Instances]
                      ) -> list[torch.Tensor]:
        """Per image, the regressed boxes ``[Ri, 4]`` (agnostic) or ``[Ri, 4K]``."""
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        num_prop = [len(p) for p in proposals]
        proposal_boxes = torch.cat([p.proposal_boxes for p in proposals])
        boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return list(boxes.split(num_prop))

    def predict_probs(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: Sequence[Instances]
                      ) -> list[torch.Tensor]:
        """Per image, class probabilities ``[Ri, K + 1]`` (softmax, or sigmoid with sigmoid CE)."""
        scores, _ = predictions
        num_inst = [len(p) for p in proposals]
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return list(probs.split(num_inst, dim=0))
