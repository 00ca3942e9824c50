"""detectron2's Region Proposal Network as ViTDet configures it (``docs/recipes/detection.md#heads``).

``StandardRPNHead`` (a stack of 3x3 convs + ReLU shared by all levels, then 1x1 ``objectness_logits``
and ``anchor_deltas``; ViTDet uses two convs, ``conv_dims=(-1, -1)``, saved as ``conv.conv0`` /
``conv.conv1``) and ``RPN`` (anchor labelling with ``Matcher``, 256 sampled anchors per image, half
positive at most, losses ``loss_rpn_cls`` / ``loss_rpn_loc`` normalised by ``256 * images``, and
proposals by per-level top-k, clipping, empty-box removal, per-level NMS 0.7 and a per-image top-k).
In a full model the RPN is ``proposal_generator``, so its weights are ``proposal_generator.rpn_head.*``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from .anchor_generator import DefaultAnchorGenerator
from .box_regression import Box2BoxTransform
from .layers import Conv2d
from .matcher import Matcher
from .sampling import subsample_labels
from .structures import ImageList, Instances

__all__ = ["StandardRPNHead", "RPN", "find_top_rpn_proposals"]


class StandardRPNHead(nn.Module):
    """Objectness logits and anchor deltas per level from shared 3x3 convs.

    Args:
        in_channels: channels of every input level (the pyramid's 256).
        num_anchors: cell anchors per position (3: ratios 0.5 / 1 / 2).
        box_dim: deltas per anchor.
        conv_dims: output channels of each hidden conv (``-1``: same as input). One conv is saved as
            ``conv``, several as ``conv.conv0``, ``conv.conv1``, ... (detectron2's names).
    """

    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4,
                 conv_dims: Sequence[int] = (-1,)):
        super().__init__()
        if len(conv_dims) == 0:
            raise ValueError("StandardRPNHead conv_dims is empty; expected at least one conv, e.g. (-1, -1)")
        channels = in_channels
        if len(conv_dims) == 1:
            out = channels if conv_dims[0] == -1 else conv_dims[0]
            self.conv = self._rpn_conv(channels, out)
            channels = out
        else:
            self.conv = nn.Sequential()
            for k, dim in enumerate(conv_dims):
                out = channels if dim == -1 else dim
                if out <= 0:
                    raise ValueError(f"StandardRPNHead conv_dims[{k}]={dim}: expected -1 or a positive width")
                self.conv.add_module(f"conv{k}", self._rpn_conv(channels, out))
                channels = out
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * box_dim, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @staticmethod
    def _rpn_conv(in_channels: int, out_channels: int) -> Conv2d:
        return Conv2d(in_channels, out_channels, kernel_size=3, padding=1, activation=nn.ReLU())

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: logits ``[B, A, Hi, Wi]`` and deltas ``[B, A * box_dim, Hi, Wi]``."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def _nonempty(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    # detectron2's Boxes.nonempty keeps sides strictly > threshold; torchvision's remove_small_boxes keeps >=,
    # which would keep zero-area boxes at min_box_size 0.
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)


def find_top_rpn_proposals(
    proposals: Sequence[torch.Tensor],
    pred_objectness_logits: Sequence[torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """detectron2's proposal selection.

    Per level keep the ``pre_nms_topk`` highest-scoring boxes; per image clip them to the image,
    drop boxes with a side <= ``min_box_size``, run NMS within each level and keep the
    ``post_nms_topk`` best over all levels.

    Args:
        proposals: per level, decoded boxes ``[N, Hi * Wi * A, 4]``.
        pred_objectness_logits: per level, logits ``[N, Hi * Wi * A]``.
        image_sizes: ``(h, w)`` of each image before padding.

    Returns:
        One ``Instances`` per image with ``proposal_boxes [K, 4]`` and ``objectness_logits [K]``,
        sorted by decreasing logit.

    Raises:
        FloatingPointError: a non-finite box or score while training (training has diverged).
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)
    topk_scores, topk_proposals, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, pred_objectness_logits)):
        k = min(pre_nms_topk, logits_l.shape[1])
        scores_l, idx = logits_l.topk(k, dim=1)
        topk_proposals.append(boxes_l[batch_idx[:, None], idx])
        topk_scores.append(scores_l)
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    all_scores = torch.cat(topk_scores, dim=1)
    all_boxes = torch.cat(topk_proposals, dim=1)
    all_levels = torch.cat(level_ids)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, levels = all_boxes[n], all_scores[n], all_levels
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(valid.all()):
            if training:
                raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        boxes = clip_boxes_to_image(boxes, image_size)
        keep = _nonempty(boxes, min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_topk]
        results.append(Instances(image_size, proposal_boxes=boxes[keep], objectness_logits=scores[keep]))
    return results


def _pair(value, name: str) -> dict[bool, int]:
    if isinstance(value, (int, float)):
        return {True: int(value), False: int(value)}
    if len(value) != 2:
        raise ValueError(f"RPN {name}={value!r}: expected (train, test)")
    return {True: int(value[0]), False: int(value[1])}


class RPN(nn.Module):
    """detectron2's ``RPN`` (keyword arguments and defaults as there).

    Args:
        in_features: pyramid levels to use, e.g. ``["p2", "p3", "p4", "p5", "p6"]``.
        head: the ``StandardRPNHead``.
        anchor_generator: a ``DefaultAnchorGenerator`` with one stride per level.
        anchor_matcher: labels anchors against gt boxes by IoU.
        box2box_transform: anchor -> box deltas (ViTDet: weights (1, 1, 1, 1)).
        batch_size_per_image: anchors sampled per image for the losses.
        positive_fraction: at most this fraction of them positive.
        pre_nms_topk: ``(train, test)`` boxes kept per level before NMS (ViTDet: 2000, 1000).
        post_nms_topk: ``(train, test)`` boxes kept per image after NMS (ViTDet: 1000, 1000).
        nms_thresh: NMS IoU threshold.
        min_box_size: proposals with a side <= this are dropped.
        anchor_boundary_thresh: ``>= 0`` ignores anchors reaching further than this outside the image
            (``-1``: keep all, detectron2's default).
        loss_weight: a float for both losses or a dict by loss name.
        box_reg_loss_type: ``"smooth_l1"`` (with ``smooth_l1_beta`` 0 this is L1, ViTDet's setting).
        smooth_l1_beta: smooth-L1 transition point.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: StandardRPNHead,
        anchor_generator: DefaultAnchorGenerator,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: float | Mapping[str, float] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ):
        super().__init__()
        if box_reg_loss_type != "smooth_l1":
            raise ValueError(f"RPN box_reg_loss_type={box_reg_loss_type!r}: only 'smooth_l1' is implemented "
                             "(ViTDet's setting)")
        if len(in_features) != anchor_generator.num_features:
            raise ValueError(f"RPN in_features={list(in_features)} has {len(in_features)} levels but "
                             f"the anchor generator has {anchor_generator.num_features} strides")
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.pre_nms_topk = _pair(pre_nms_topk, "pre_nms_topk")
        self.post_nms_topk = _pair(post_nms_topk, "post_nms_topk")
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = float(anchor_boundary_thresh)
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_rpn_cls": float(loss_weight), "loss_rpn_loc": float(loss_weight)}
        self.loss_weight = dict(loss_weight)
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        pos_idx, neg_idx = subsample_labels(label, self.batch_size_per_image, self.positive_fraction, 0)
        label.fill_(-1)
        label.scatter_(0, pos_idx, 1)
        label.scatter_(0, neg_idx, 0)
        return label

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: Sequence[torch.Tensor], gt_instances: Sequence[Instances]
                                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: sampled anchor labels ``[R]`` (1, 0, -1 ignore) and matched gt boxes ``[R, 4]``."""
        anchors = torch.cat(list(anchors))
        gt_labels, matched_gt_boxes = [], []
        for i, inst in enumerate(gt_instances):
            if not inst.has("gt_boxes"):
                raise ValueError(f"RPN training needs gt_boxes in gt_instances[{i}]; it has "
                                 f"{sorted(inst.get_fields())}")
            gt_boxes = inst.gt_boxes.to(anchors)
            matched_idxs, labels = self.anchor_matcher(box_iou(gt_boxes, anchors))
            labels = labels.to(device=anchors.device)
            if self.anchor_boundary_thresh >= 0:
                h, w = inst.image_size
                t = self.anchor_boundary_thresh
                inside = ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] < w + t)
                          & (anchors[:, 3] < h + t))
                labels[~inside] = -1
            labels = self._subsample_labels(labels)
            matched = torch.zeros_like(anchors) if len(gt_boxes) == 0 else gt_boxes[matched_idxs]
            gt_labels.append(labels)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes

    def losses(self, anchors: Sequence[torch.Tensor], pred_objectness_logits: Sequence[torch.Tensor],
               gt_labels: Sequence[torch.Tensor], pred_anchor_deltas: Sequence[torch.Tensor],
               gt_boxes: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss_rpn_cls`` (sigmoid CE over sampled anchors) and ``loss_rpn_loc`` (smooth-L1 over positives),
        both summed and divided by ``batch_size_per_image * num_images`` as in detectron2."""
        num_images = len(gt_labels)
        labels = torch.stack(list(gt_labels))
        pos_mask = labels == 1
        all_anchors = torch.cat(list(anchors))
        gt_deltas = torch.stack([self.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes])
        loss_loc = F.smooth_l1_loss(torch.cat(list(pred_anchor_deltas), dim=1)[pos_mask], gt_deltas[pos_mask],
                                    beta=self.smooth_l1_beta, reduction="sum")
        valid = labels >= 0
        loss_cls = F.binary_cross_entropy_with_logits(torch.cat(list(pred_objectness_logits), dim=1)[valid],
                                                      labels[valid].to(torch.float32), reduction="sum")
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def _decode_proposals(self, anchors: Sequence[torch.Tensor], pred_anchor_deltas: Sequence[torch.Tensor]
                          ) -> list[torch.Tensor]:
        num_images = pred_anchor_deltas[0].shape[0]
        proposals = []
        for anchors_l, deltas_l in zip(anchors, pred_anchor_deltas):
            box_dim = anchors_l.shape[1]
            flat_anchors = anchors_l.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, box_dim)
            boxes = self.box2box_transform.apply_deltas(deltas_l.reshape(-1, box_dim), flat_anchors)
            proposals.append(boxes.view(num_images, -1, box_dim))
        return proposals

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas,
                          image_sizes) -> list[Instances]:
        """Proposals per image; no gradient flows into them (detectron2 treats them as constants)."""
        with torch.no_grad():
            proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            logits = [x.detach() for x in pred_objectness_logits]
            return find_top_rpn_proposals(proposals, logits, image_sizes, self.nms_thresh,
                                          self.pre_nms_topk[self.training], self.post_nms_topk[self.training],
                                          self.min_box_size, self.training)

    def forward(self, images: ImageList, features: Mapping[str, torch.Tensor],
                gt_instances: Sequence[Instances] | None = None,
                ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """Proposals for each image and, in training, the two RPN losses.

        Raises:
            KeyError: a level of ``in_features`` is missing from ``features``.
            ValueError: training without ``gt_instances``.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"RPN in_features {missing} are not among the backbone's outputs "
                           f"{sorted(features)}")
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)
        logits, deltas = self.rpn_head(feats)
        # [B, A, H, W] -> [B, H*W*A], [B, A*4, H, W] -> [B, H*W*A, 4]: the anchors' order (y, x, cell anchor).
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        box_dim = self.anchor_generator.box_dim
        deltas = [x.view(x.shape[0], -1, box_dim, *x.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, -2)
                  for x in deltas]
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN in training mode needs gt_instances (one Instances with gt_boxes "
                                 "per image)")
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        proposals = self.predict_proposals(anchors, logits, deltas, images.image_sizes)
        return proposals, losses
