"""Mask2Former's set criterion: Hungarian matching, then class and point-sampled mask losses.

For the final prediction and every auxiliary (intermediate decoder) prediction: match queries to
targets, then
- ``loss_ce``: cross-entropy over ``num_classes + 1`` classes on every query (unmatched queries
  target the last, no-object class, whose weight is ``eos_coef``);
- ``loss_mask``: sigmoid cross-entropy of each matched mask, averaged over its sampled points;
- ``loss_dice``: dice loss of each matched mask on the same points;
both mask losses summed over masks and divided by the mean number of target masks per rank.
Mask points are PointRend's: the most uncertain of ``num_points * oversample_ratio`` random
points plus uniform ones. Auxiliary losses carry the suffix ``_{i}`` (``loss_ce_0``, ...).
The returned losses are unweighted (as Mask2Former's); :meth:`SetCriterion.weight_losses` applies
``weight_dict``.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from eva_core.utils import comm

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

__all__ = ["SetCriterion", "sigmoid_ce_loss", "dice_loss", "mask2former_weight_dict"]


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sigmoid cross-entropy per mask (mean over points), summed over masks, divided by ``num_masks``.

    Args:
        inputs: Mask logits ``[M, P]``.
        targets: Binary targets ``[M, P]``.
        num_masks: Normaliser (the mean number of target masks per rank, at least 1).
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2|x*y| + 1) / (|x| + |y| + 1)`` per mask, summed, divided by ``num_masks``.

    Args:
        inputs: Mask logits ``[M, P]``.
        targets: Binary targets ``[M, P]``.
        num_masks: Normaliser.
    """
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def mask2former_weight_dict(class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                            num_aux: int = 0) -> dict[str, float]:
    """Loss weights for the final and ``num_aux`` auxiliary predictions (Mask2Former's names).

    Args:
        class_weight: Weight of ``loss_ce``.
        mask_weight: Weight of ``loss_mask``.
        dice_weight: Weight of ``loss_dice``.
        num_aux: Number of auxiliary predictions (decoder layers that are supervised besides the last).

    Returns:
        ``{"loss_ce": ..., "loss_mask": ..., "loss_dice": ..., "loss_ce_0": ..., ...}``.
    """
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


class SetCriterion(nn.Module):
    """Mask2Former's loss with deep supervision.

    Args:
        num_classes: Number of object classes ``K`` (the logits have ``K + 1``, the last no-object).
        matcher: Assigns queries to targets (a :class:`HungarianMatcher`).
        weight_dict: Weight of every loss name the criterion returns; see
            :func:`mask2former_weight_dict`.
        eos_coef: Class-loss weight of the no-object class.
        losses: Which losses to compute, from ``"labels"`` and ``"masks"``.
        num_points: Points per matched mask.
        oversample_ratio: PointRend oversampling (>= 1).
        importance_sample_ratio: Fraction of points chosen by uncertainty.
    """

    LOSSES = ("labels", "masks")

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, losses: Iterable[str] = ("labels", "masks"), num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75):
        super().__init__()
        losses = tuple(losses)
        unknown = [name for name in losses if name not in self.LOSSES]
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {unknown}; expected a subset of "
                             f"{list(self.LOSSES)}")
        if num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = losses
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # -- the two losses -------------------------------------------------------------------------

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list, num_masks: float) -> dict:
        """``loss_ce``: weighted cross-entropy; unmatched queries target the no-object class."""
        logits = outputs["pred_logits"].float()
        batch_idx, src_idx = _prediction_indices(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64,
                                    device=logits.device)
        target_classes[batch_idx, src_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def loss_masks(self, outputs: dict, targets: list[dict], indices: list, num_masks: float) -> dict:
        """``loss_mask`` and ``loss_dice`` of the matched masks on PointRend-sampled points."""
        pred_masks = outputs["pred_masks"]
        batch_idx, src_idx = _prediction_indices(indices)
        # fp32 from here: under bf16/fp16 autocast the point logits would round the sigmoid CE and
        # dice sums; only the matched masks are cast, so the cost is small
        src_masks = pred_masks[batch_idx, src_idx][:, None].float()
        # targets are on the batch's padded canvas (Mask2Former pads them to the padded image size);
        # masks of different sizes are zero-padded bottom-right to the largest, as Mask2Former does
        tgt_masks = _pad_to_largest([t["masks"] for t in targets], like=src_masks)
        tgt_masks = tgt_masks[_target_indices(indices)][:, None]
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks, calculate_uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio)
            point_labels = point_sample(tgt_masks, point_coords).squeeze(1)
        point_logits = point_sample(src_masks, point_coords).squeeze(1)
        return {"loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
                "loss_dice": dice_loss(point_logits, point_labels, num_masks)}

    # -- driver ---------------------------------------------------------------------------------

    def get_num_masks(self, targets: list[dict], device: torch.device) -> float:
        """Mean number of target masks per rank (all-reduced across ranks), at least 1."""
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        return torch.clamp(comm.reduce_mean(num_masks), min=1).item()

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            outputs: ``{"pred_logits": [B, Q, K + 1], "pred_masks": [B, Q, h, w],
                "aux_outputs": [{"pred_logits", "pred_masks"}, ...]}`` (``aux_outputs`` optional).
            targets: One dict per image: ``{"labels": LongTensor[T] in [0, K), "masks": [T, H, W]}``
                with binary masks (``T`` may be 0).

        Returns:
            Unweighted losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and ``loss_*_{i}`` for the
            ``i``-th auxiliary output.
        """
        self._check(outputs, targets, "outputs")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            self._check(aux, targets, f"outputs['aux_outputs'][{i}]")
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_masks, suffix="")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, num_masks, suffix=f"_{i}"))
        return losses

    def weight_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multiply each loss by its weight; a loss without a weight is an error, not dropped."""
        missing = [k for k in losses if k not in self.weight_dict]
        if missing:
            raise KeyError(f"SetCriterion.weight_dict has no weight for {missing}; it has "
                           f"{sorted(self.weight_dict)}")
        return {k: v * self.weight_dict[k] for k, v in losses.items()}

    def _losses(self, outputs: dict, targets: list[dict], num_masks: float, suffix: str) -> dict:
        indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            fn = self.loss_labels if name == "labels" else self.loss_masks
            losses.update({k + suffix: v for k, v in fn(outputs, targets, indices, num_masks).items()})
        return losses

    def _check(self, outputs: dict, targets: list[dict], where: str) -> None:
        for key in ("pred_logits", "pred_masks"):
            if key not in outputs:
                raise KeyError(f"SetCriterion: {where} has no {key!r}; keys are {sorted(outputs)}")
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if logits.dim() != 3 or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"SetCriterion: {where}['pred_logits'] must be [B, Q, {self.num_classes + 1}] "
                             f"(num_classes + no-object), got {tuple(logits.shape)}")
        if masks.dim() != 4 or masks.shape[:2] != logits.shape[:2]:
            raise ValueError(f"SetCriterion: {where}['pred_masks'] must be [B, Q, h, w] with B, Q = "
                             f"{tuple(logits.shape[:2])}, got {tuple(masks.shape)}")
        if len(targets) != logits.shape[0]:
            raise ValueError(f"SetCriterion: {len(targets)} targets for a batch of {logits.shape[0]} images")
        for b, t in enumerate(targets):
            labels, tmasks = t["labels"], t["masks"]
            if labels.dim() != 1 or tmasks.dim() != 3 or tmasks.shape[0] != labels.shape[0]:
                raise ValueError(f"SetCriterion: targets[{b}] needs labels [T] and masks [T, H, W] with the "
                                 f"same T, got labels {tuple(labels.shape)} and masks {tuple(tmasks.shape)}")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"SetCriterion: targets[{b}]['labels'] must be in [0, {self.num_classes}), "
                                 f"got values {labels.unique().tolist()}")


def _prediction_indices(indices: list) -> tuple[torch.Tensor, torch.Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def _target_indices(indices: list) -> tuple[torch.Tensor, torch.Tensor]:
    batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
    tgt_idx = torch.cat([tgt for _, tgt in indices])
    return batch_idx, tgt_idx


def _pad_to_largest(masks: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Stack ``[T_b, H_b, W_b]`` masks into ``[B, max T, max H, max W]``, zero-padded bottom-right."""
    num = max(m.shape[0] for m in masks)
    height = max(m.shape[1] for m in masks)
    width = max(m.shape[2] for m in masks)
    out = like.new_zeros(len(masks), num, height, width)
    for b, m in enumerate(masks):
        out[b, : m.shape[0], : m.shape[1], : m.shape[2]] = m.to(like)
    return out
