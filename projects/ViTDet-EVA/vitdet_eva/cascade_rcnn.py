"""detectron2's ``CascadeROIHeads`` with a mask head: ViTDet's 3-stage Cascade Mask R-CNN RoI heads.

Training: RPN proposals plus the gt boxes are matched (stage-0 IoU) and 512 RoIs per image sampled
(a quarter foreground at most); each stage pools them, runs its box head and predictor, and its
regressed boxes (detached, clipped, empty ones dropped) become the next stage's RoIs, matched again
at that stage's IoU (0.5 / 0.6 / 0.7). The pooled features' gradient is scaled by 1 / stages,
because all stages backpropagate into the same backbone features. Losses are
``loss_cls_stage{k}``, ``loss_box_reg_stage{k}`` and ``loss_mask`` (on stage 0's foreground RoIs).
Inference: the class scores of the three stages (each on its own RoIs, which are the same RoIs
refined) are averaged, boxes come from the last stage, then per-class NMS, and masks are predicted
for the kept boxes. EVA's evaluation options keep the names of EVA's detectron2 fork, so its
overrides work unchanged: ``model.roi_heads.use_soft_nms=True``, ``method="linear"``,
``iou_threshold=0.6``, ``override_score_thresh=0.0``, ``maskness_thresh=0.5``. Module names give
detectron2's state-dict keys ``roi_heads.box_head.{0,1,2}.*``,
``roi_heads.box_predictor.{0,1,2}.*``, ``roi_heads.mask_head.*``
(``docs/recipes/detection.md#detectron2-state-dict-names``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from torchvision.ops import box_iou, clip_boxes_to_image

from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .mask_head import maskness_rescore
from .matcher import Matcher
from .poolers import ROIPooler
from .sampling import subsample_labels
from .structures import Instances

__all__ = ["CascadeROIHeads", "add_ground_truth_to_proposals", "select_foreground_proposals"]

# objectness logit of a gt box added to the proposals: sigmoid of it is 1 - 1e-10 (detectron2's value)
_GT_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * ctx.scale, None


def add_ground_truth_to_proposals(targets: Sequence[Instances], proposals: Sequence[Instances]
                                  ) -> list[Instances]:
    """Append each image's gt boxes to its proposals (objectness logit ~23), as detectron2 does, so
    every gt box has at least one perfectly matching RoI early in training."""
    if len(targets) != len(proposals):
        raise ValueError(f"{len(targets)} target Instances for {len(proposals)} proposal Instances")
    out = []
    for tgt, prop in zip(targets, proposals):
        gt_boxes = tgt.gt_boxes.to(prop.proposal_boxes)
        boxes = torch.cat([prop.proposal_boxes, gt_boxes])
        logits = torch.cat([prop.objectness_logits,
                            prop.objectness_logits.new_full((len(gt_boxes),), _GT_LOGIT)])
        out.append(Instances(prop.image_size, proposal_boxes=boxes, objectness_logits=logits))
    return out


def select_foreground_proposals(proposals: Sequence[Instances], bg_label: int) -> list[Instances]:
    """Per image, the RoIs whose ``gt_classes`` is a foreground class (not -1, not ``bg_label``)."""
    out = []
    for p in proposals:
        fg = (p.gt_classes != -1) & (p.gt_classes != bg_label)
        out.append(p[fg.nonzero().squeeze(1)])
    return out


class CascadeROIHeads(nn.Module):
    """Cascade R-CNN box stages plus a Mask R-CNN mask branch (detectron2's ``CascadeROIHeads``).

    Args:
        num_classes: K foreground classes.
        box_in_features: feature names pooled for boxes (ViTDet: ``["p2", "p3", "p4", "p5"]``).
        box_pooler: :class:`ROIPooler` for boxes (7x7).
        box_heads: one box head per stage.
        box_predictors: one :class:`FastRCNNOutputLayers` per stage (its ``box2box_transform`` carries
            the stage's regression weights).
        proposal_matchers: one :class:`Matcher` per stage (``Matcher([iou], [0, 1])``).
        batch_size_per_image: RoIs sampled per image (512).
        positive_fraction: at most this fraction of them foreground (0.25).
        proposal_append_gt: add the gt boxes to the proposals in training.
        mask_in_features, mask_pooler, mask_head: the mask branch (``None``: boxes only).
        use_soft_nms: soft-NMS instead of the predictors' NMS at inference (EVA's evaluation: True).
        method, iou_threshold, sigma, class_wise, soft_nms_min_score: the soft-NMS settings
            (:func:`vitdet_eva.fast_rcnn.fast_rcnn_inference`; EVA: ``"linear"``, 0.6).
        override_score_thresh: replaces the predictors' ``test_score_thresh`` when given (EVA: 0.0).
        maskness_thresh: rescore each detection by its mask's maskness
            (:func:`vitdet_eva.mask_head.maskness_rescore`; EVA: 0.5); ``None``: off.
    """

    def __init__(self, *, num_classes: int, box_in_features: Sequence[str], box_pooler: ROIPooler,
                 box_heads: Sequence[nn.Module], box_predictors: Sequence[FastRCNNOutputLayers],
                 proposal_matchers: Sequence[Matcher], batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, proposal_append_gt: bool = True,
                 mask_in_features: Sequence[str] | None = None, mask_pooler: ROIPooler | None = None,
                 mask_head: nn.Module | None = None, use_soft_nms: bool = False, method: str = "linear",
                 iou_threshold: float = 0.3, sigma: float = 0.5, class_wise: bool = True,
                 soft_nms_min_score: float = 1e-3, override_score_thresh: float | None = None,
                 maskness_thresh: float | None = None):
        super().__init__()
        if not len(box_heads) == len(box_predictors) == len(proposal_matchers):
            raise ValueError(f"CascadeROIHeads needs one box head, predictor and matcher per stage; got "
                             f"{len(box_heads)} heads, {len(box_predictors)} predictors, "
                             f"{len(proposal_matchers)} matchers")
        for k, m in enumerate(proposal_matchers):
            if m.allow_low_quality_matches:
                raise ValueError(f"proposal_matchers[{k}] allows low-quality matches; cascade stages "
                                 "match proposals by IoU only")
        if (mask_head is None) != (mask_pooler is None) or (mask_head is not None and not mask_in_features):
            raise ValueError("the mask branch needs mask_in_features, mask_pooler and mask_head together")
        self.num_classes = num_classes
        self.num_cascade_stages = len(box_heads)
        self.box_in_features = list(box_in_features)
        self.box_pooler = box_pooler
        self.box_head = nn.ModuleList(box_heads)
        self.box_predictor = nn.ModuleList(box_predictors)
        self.proposal_matchers = list(proposal_matchers)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.proposal_append_gt = proposal_append_gt
        self.mask_on = mask_head is not None
        self.mask_in_features = list(mask_in_features or [])
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        if maskness_thresh is not None and mask_head is None:
            raise ValueError(f"maskness_thresh={maskness_thresh} needs the mask branch (mask_head is None)")
        self.use_soft_nms = bool(use_soft_nms)
        self.soft_nms_options = dict(method=method, iou_threshold=float(iou_threshold), sigma=float(sigma),
                                     class_wise=bool(class_wise),
                                     soft_nms_min_score=float(soft_nms_min_score))
        self.override_score_thresh = override_score_thresh
        self.maskness_thresh = maskness_thresh

    # ---- training targets -------------------------------------------------------------------
    def _sample_proposals(self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor,
                          gt_classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if gt_classes.numel() > 0:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        fg, bg = subsample_labels(gt_classes, self.batch_size_per_image, self.positive_fraction,
                                  self.num_classes)
        sampled = torch.cat([fg, bg])
        return sampled, gt_classes[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: Sequence[Instances], targets: Sequence[Instances]
                                   ) -> list[Instances]:
        """Stage-0 matching and sampling; the sampled RoIs carry ``gt_classes`` and every ``gt_*`` field
        of their matched target (``gt_boxes``, ``gt_masks``)."""
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        out = []
        for i, (prop, tgt) in enumerate(zip(proposals, targets)):
            for name in ("gt_boxes", "gt_classes"):
                if not tgt.has(name):
                    raise ValueError(f"CascadeROIHeads training needs {name} in targets[{i}]; it has "
                                     f"{sorted(tgt.get_fields())}")
            has_gt = len(tgt) > 0
            iou = box_iou(tgt.gt_boxes.to(prop.proposal_boxes), prop.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matchers[0](iou)
            sampled, gt_classes = self._sample_proposals(matched_idxs, matched_labels,
                                                         tgt.gt_classes.to(matched_idxs.device))
            prop = prop[sampled]
            prop.gt_classes = gt_classes
            if has_gt:
                targets_idx = matched_idxs[sampled]
                for name, value in tgt.get_fields().items():
                    if name.startswith("gt_") and not prop.has(name):
                        prop.set(name, value[targets_idx.to(value.device)])
            out.append(prop)
        return out

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals: list[Instances], stage: int, targets: Sequence[Instances]
                               ) -> list[Instances]:
        """Match a later stage's RoIs at that stage's IoU (no resampling)."""
        for prop, tgt in zip(proposals, targets):
            iou = box_iou(tgt.gt_boxes.to(prop.proposal_boxes), prop.proposal_boxes)
            matched_idxs, labels = self.proposal_matchers[stage](iou)
            if len(tgt) > 0:
                gt_classes = tgt.gt_classes.to(matched_idxs.device)[matched_idxs]
                gt_classes[labels == 0] = self.num_classes
                gt_boxes = tgt.gt_boxes.to(prop.proposal_boxes)[matched_idxs]
            else:
                gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = prop.proposal_boxes.new_zeros((len(prop), 4))
            prop.gt_classes = gt_classes
            prop.gt_boxes = gt_boxes
        return proposals

    def _create_proposals_from_boxes(self, boxes: Sequence[torch.Tensor], image_sizes, logits
                                     ) -> list[Instances]:
        out = []
        for b, size, logit in zip(boxes, image_sizes, logits):
            b = clip_boxes_to_image(b.detach(), size)
            if self.training:
                keep = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
                b, logit = b[keep], logit[keep]
            out.append(Instances(size, proposal_boxes=b, objectness_logits=logit))
        return out

    # ---- stages -----------------------------------------------------------------------------
    def _run_stage(self, features: list[torch.Tensor], proposals: Sequence[Instances], stage: int):
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _forward_box_stages(self, features: Mapping[str, torch.Tensor], proposals: list[Instances],
                            targets: Sequence[Instances] | None = None):
        """Run every stage; returns ``[(predictor, predictions, proposals)]`` per stage."""
        feats = [features[f] for f in self.box_in_features]
        head_outputs = []
        prev_pred_boxes = None
        image_sizes = [p.image_size for p in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes,
                                                              [p.objectness_logits for p in proposals])
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(feats, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        return head_outputs

    def _forward_box(self, features, proposals, targets=None):
        head_outputs = self._forward_box_stages(features, proposals, targets)
        if self.training:
            losses = {}
            for stage, (predictor, predictions, props) in enumerate(head_outputs):
                stage_losses = predictor.losses(predictions, props)
                losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            return losses
        scores_per_stage = [pred.predict_probs(p, props) for pred, p, props in head_outputs]
        scores = [sum(per_image) * (1.0 / self.num_cascade_stages) for per_image in zip(*scores_per_stage)]
        predictor, predictions, props = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, props)
        pred_instances, _ = fast_rcnn_inference(boxes, scores, [p.image_size for p in props],
                                                predictor.test_score_thresh, predictor.test_nms_thresh,
                                                predictor.test_topk_per_image, use_soft_nms=self.use_soft_nms,
                                                override_score_thresh=self.override_score_thresh,
                                                **self.soft_nms_options)
        return pred_instances

    def _forward_mask(self, features: Mapping[str, torch.Tensor], instances: list[Instances]):
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances = select_foreground_proposals(instances, self.num_classes)
            boxes = [i.proposal_boxes for i in instances]
        else:
            boxes = [i.pred_boxes for i in instances]
        feats = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        return self.mask_head(feats, instances)

    def forward(self, images, features: Mapping[str, torch.Tensor], proposals: Sequence[Instances],
                targets: Sequence[Instances] | None = None):
        """detectron2's ``ROIHeads.forward``.

        Args:
            images: unused (kept for detectron2's signature).
            features: pyramid maps by name.
            proposals: per image, ``Instances`` with ``proposal_boxes`` and ``objectness_logits``.
            targets: training only; per image ``gt_boxes``, ``gt_classes`` (and ``gt_masks`` with masks).

        Returns:
            Training: ``(sampled proposals, losses)``; inference: ``(instances with pred_boxes, scores,
            pred_classes, pred_masks, {})``.
        """
        del images
        if self.training:
            if targets is None:
                raise ValueError("CascadeROIHeads in training mode needs targets (per image Instances with "
                                 "gt_boxes, gt_classes, gt_masks)")
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, list(proposals))
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        if self.maskness_thresh is not None:
            pred_instances = [maskness_rescore(i, self.maskness_thresh) for i in pred_instances]
        return pred_instances, {}

    def forward_with_given_boxes(self, features: Mapping[str, torch.Tensor], instances: list[Instances]
                                 ) -> list[Instances]:
        """Predict masks for given detections (``pred_boxes``, ``pred_classes``)."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference (call model.eval() first)")
        return self._forward_mask(features, instances)
