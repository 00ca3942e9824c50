"""Federated loss for LVIS (Zhou et al. 2021), as detectron2's ``FastRCNNOutputLayers`` computes it.

LVIS is federated: an image is exhaustively annotated only for some classes, so a sigmoid
cross-entropy over all 1203 classes would push down classes nobody looked for. The loss is
computed on a sampled class set instead: the classes present among the RoIs' ground truth, plus
classes drawn (without replacement, probability proportional to ``image_count ** 0.5``) until
``num_fed_loss_classes`` (50) are reached. The background column (index ``K``) is no sigmoid
target: a background RoI has an all-zero target row.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["get_fed_loss_cls_weights", "get_fed_loss_classes", "federated_sigmoid_ce_loss"]


def get_fed_loss_cls_weights(dataset: str | os.PathLike | Sequence | object,
                             freq_weight_power: float = 0.5) -> torch.Tensor:
    """Class weights ``image_count ** freq_weight_power``, index = contiguous class id.

    Args:
        dataset: an LVIS-format json path (its ``categories[*].image_count``, sorted by id), a
            :class:`~vitdet_eva.data.datasets.DetectionDataset` (its ``class_image_count``), or a
            list of image counts.
        freq_weight_power: 0.5 in detectron2 / EVA.

    Returns:
        float32 tensor ``[K]``.
    """
    if isinstance(dataset, (str, os.PathLike)):
        from eva_core.data.annotations import load_lvis_json

        cats = sorted(load_lvis_json(dataset)["categories"], key=lambda c: c["id"])
        counts = [c["image_count"] for c in cats]
    elif hasattr(dataset, "class_image_count"):
        counts = list(dataset.class_image_count)
    else:
        counts = list(dataset)
    if not counts:
        raise ValueError("no class image counts: the federated loss needs one weight per class")
    return torch.tensor(counts, dtype=torch.float32) ** freq_weight_power


def get_fed_loss_classes(gt_classes: torch.Tensor, num_fed_loss_classes: int, num_classes: int,
                         weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The classes the loss is computed on: the unique ground-truth classes, then classes drawn by
    ``weight`` without replacement up to ``num_fed_loss_classes`` (background never drawn).

    Args:
        gt_classes: ``[N]`` RoI targets in ``[0, num_classes]`` (``num_classes`` = background).
        num_fed_loss_classes: size of the class set (50).
        num_classes: ``K``.
        weight: ``[K]`` sampling weights.
        generator: optional RNG for the draw (the global torch RNG otherwise, as detectron2).

    Returns:
        int64 tensor of class ids (may include ``K`` when a background RoI is present).
    """
    unique_gt = torch.unique(gt_classes)
    prob = unique_gt.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique_gt) < num_fed_loss_classes:
        prob[:num_classes] = weight.float().to(prob.device)
        prob[unique_gt] = 0
        # cannot draw more classes than have a positive weight
        draws = min(num_fed_loss_classes - len(unique_gt), int((prob > 0).sum()))
        if draws == 0:  # the ground truth already holds every drawable class
            return unique_gt
        sampled = torch.multinomial(prob, draws, replacement=False, generator=generator)
        return torch.cat([unique_gt, sampled])
    return unique_gt


def federated_sigmoid_ce_loss(logits: torch.Tensor, gt_classes: torch.Tensor, num_classes: int,
                              weights: torch.Tensor, num_fed_loss_classes: int = 50,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Sigmoid cross-entropy over the sampled classes, summed and divided by the RoI count.

    Args:
        logits: ``[N, K + 1]`` class logits (last column = background, which gets no sigmoid
            loss).
        gt_classes: ``[N]`` targets in ``[0, K]``.
        num_classes: ``K``.
        weights: ``[K]`` class weights from :func:`get_fed_loss_cls_weights`.
        num_fed_loss_classes: 50.
        generator: optional RNG for the class draw.

    Returns:
        Scalar loss (0 for no RoIs).
    """
    if logits.dim() != 2 or logits.shape[1] != num_classes + 1:
        raise ValueError(f"logits must be [N, num_classes + 1] = [N, {num_classes + 1}], got "
                         f"{tuple(logits.shape)}")
    if logits.numel() == 0:
        return logits.new_zeros(())
    n = logits.shape[0]
    target = logits.new_zeros(n, num_classes + 1)
    target[torch.arange(n, device=logits.device), gt_classes] = 1
    target = target[:, :num_classes]
    loss = F.binary_cross_entropy_with_logits(logits[:, :-1], target, reduction="none")
    classes = get_fed_loss_classes(gt_classes, num_fed_loss_classes, num_classes, weights, generator)
    mask = classes.new_zeros(num_classes + 1)
    mask[classes] = 1
    return (loss * mask[:num_classes].float().view(1, num_classes)).sum() / n
