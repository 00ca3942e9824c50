"""Point sampling for mask losses (PointRend's rules, as Mask2Former uses them).

Mask2Former scores masks on a few thousand points instead of every pixel. Points live in
normalised ``[0, 1] x [0, 1]`` coordinates (x first, then y), so a prediction and a target of
different resolutions are read at the same places without resizing either of them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["point_sample", "calculate_uncertainty", "get_uncertain_point_coords_with_randomness"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor,
                 align_corners: bool = False) -> torch.Tensor:
    """Bilinearly read ``input`` at ``point_coords`` (``grid_sample`` on ``[0, 1]`` coordinates).

    Args:
        input: Feature maps ``[N, C, H, W]``.
        point_coords: ``[N, P, 2]`` or ``[N, Hg, Wg, 2]`` points in ``[0, 1] x [0, 1]``, ``(x, y)``
            order. Points outside the map read zero padding, as ``grid_sample`` does.
        align_corners: Passed to ``grid_sample``; ``False`` puts 0 and 1 on the outer pixel edges.

    Returns:
        ``[N, C, P]`` for 3-d ``point_coords``, ``[N, C, Hg, Wg]`` for 4-d ones.
    """
    if point_coords.dim() not in (3, 4) or point_coords.shape[-1] != 2:
        raise ValueError(f"point_sample: point_coords must be [N, P, 2] or [N, Hg, Wg, 2], "
                         f"got shape {tuple(point_coords.shape)}")
    if input.dim() != 4 or input.shape[0] != point_coords.shape[0]:
        raise ValueError(f"point_sample: input must be [N, C, H, W] with N = {point_coords.shape[0]} "
                         f"(the points' batch), got shape {tuple(input.shape)}")
    squeeze = point_coords.dim() == 3
    if squeeze:
        point_coords = point_coords.unsqueeze(2)
    # grid_sample wants [-1, 1]
    out = F.grid_sample(input, 2.0 * point_coords - 1.0, align_corners=align_corners)
    return out.squeeze(3) if squeeze else out


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's uncertainty: ``-|logit|``, highest where the prediction is closest to 0.5.

    Args:
        logits: Class-agnostic mask logits ``[R, 1, ...]``.

    Returns:
        Uncertainty scores of the same shape.
    """
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """PointRend's training-time point selection: the most uncertain of many random points, plus
    some uniformly random ones.

    ``int(num_points * oversample_ratio)`` points are drawn uniformly; the
    ``int(importance_sample_ratio * num_points)`` most uncertain of them are kept and the rest of
    the ``num_points`` are fresh uniform points. Random numbers are drawn with ``torch.rand`` in
    that order (oversampled points, then the random remainder), as detectron2 and Mask2Former do,
    so the same seed gives the same points.

    Args:
        coarse_logits: Mask logits ``[R, 1, H, W]`` (class-agnostic).
        uncertainty_func: Maps point logits ``[R, 1, P]`` to uncertainties ``[R, 1, P]``.
        num_points: Points per mask ``P``.
        oversample_ratio: At least 1.
        importance_sample_ratio: In ``[0, 1]``.

    Returns:
        Point coordinates ``[R, P, 2]`` in ``[0, 1] x [0, 1]``.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    device = coarse_logits.device
    point_coords = torch.rand(num_boxes, num_sampled, 2, device=device)
    point_uncertainties = uncertainty_func(point_sample(coarse_logits, point_coords, align_corners=False))
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(point_uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    point_coords = torch.gather(point_coords, 1, idx[:, :, None].expand(-1, -1, 2))
    if num_random > 0:
        point_coords = torch.cat([point_coords, torch.rand(num_boxes, num_random, 2, device=device)], dim=1)
    return point_coords
