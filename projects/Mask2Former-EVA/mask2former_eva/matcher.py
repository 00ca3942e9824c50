"""Mask2Former's Hungarian matcher: one-to-one assignment of queries to ground-truth masks.

The cost of pairing query ``q`` with target ``t`` is
``cost_class * (-p_q[class_t]) + cost_mask * sigmoidCE(m_q, m_t) + cost_dice * dice(m_q, m_t)``,
both mask costs measured on the same ``num_points`` uniformly random points for every prediction
and target of an image (one ``torch.rand(1, num_points, 2)`` draw per image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample

__all__ = ["HungarianMatcher", "batch_sigmoid_ce_cost", "batch_dice_cost"]


def batch_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy of every prediction against every target.

    Args:
        inputs: Mask logits ``[Q, P]`` at ``P`` points.
        targets: Binary masks ``[T, P]`` at the same points.

    Returns:
        ``[Q, T]`` costs.
    """
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    # CE(x, t) = t * CE(x, 1) + (1 - t) * CE(x, 0), so all pairs are two matrix products
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|x*y| + 1) / (|x| + |y| + 1)`` of every prediction against every target.

    Args:
        inputs: Mask logits ``[Q, P]``.
        targets: Binary masks ``[T, P]``.

    Returns:
        ``[Q, T]`` costs.
    """
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """Assigns each ground-truth mask to one query by minimum total cost (scipy's Hungarian solver).

    Args:
        cost_class: Weight of the class cost (``-softmax prob`` of the target class).
        cost_mask: Weight of the sigmoid cross-entropy mask cost.
        cost_dice: Weight of the dice cost.
        num_points: Random points per image at which masks are compared.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0; "
                             "nothing to match on")
        if num_points < 1:
            raise ValueError(f"HungarianMatcher: num_points must be >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """The ``[num_queries, num_targets]`` cost matrix of each image.

        Args:
            outputs: ``{"pred_logits": [B, Q, K + 1], "pred_masks": [B, Q, h, w]}``.
            targets: One dict per image: ``{"labels": LongTensor[T], "masks": [T, H, W]}``; the
                mask resolution may differ from the predictions' (points are normalised).

        Returns:
            One float32 tensor per image, on the CPU.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of "
                             f"{pred_logits.shape[0]} images")
        costs = []
        for b, target in enumerate(targets):
            labels, tgt_mask = target["labels"], target["masks"]
            out_prob = pred_logits[b].float().softmax(-1)
            cost_class = -out_prob[:, labels]
            # fp32: the points are fp32 (bf16 coordinates would be ~1 px off) and grid_sample wants one dtype
            out_mask = pred_masks[b][:, None].float()
            tgt_mask = tgt_mask.to(out_mask)[:, None]
            # one draw per image, shared by every prediction and target, so the mask costs compare alike
            point_coords = torch.rand(1, self.num_points, 2, device=out_mask.device)
            tgt_points = point_sample(tgt_mask, point_coords.expand(tgt_mask.shape[0], -1, -1)).squeeze(1)
            out_points = point_sample(out_mask, point_coords.expand(out_mask.shape[0], -1, -1)).squeeze(1)
            # costs in fp32 even under autocast: sigmoid CE and dice lose matches to fp16 rounding
            with torch.autocast(device_type=out_points.device.type, enabled=False):
                cost = (self.cost_mask * batch_sigmoid_ce_cost(out_points, tgt_points)
                        + self.cost_class * cost_class
                        + self.cost_dice * batch_dice_cost(out_points, tgt_points))
            # NaN/inf (a diverged prediction) would make scipy raise; the largest float keeps the step
            # alive so the loss turns non-finite and the trainer's non-finite-step guard handles it
            big = torch.finfo(cost.dtype).max
            costs.append(torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).cpu())
        return costs

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match predictions to targets.

        Args:
            outputs: See :meth:`cost_matrices`.
            targets: See :meth:`cost_matrices`.

        Returns:
            One ``(query_indices, target_indices)`` pair of int64 tensors per image, each of length
            ``min(num_queries, num_targets)``, query indices ascending.
        """
        indices = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"num_points={self.num_points}")
