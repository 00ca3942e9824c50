"""detectron2's ``subsample_labels``: a fixed-size, fixed-fraction random draw of positives and negatives."""
from __future__ import annotations

import torch

__all__ = ["subsample_labels"]


def subsample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float,
                     bg_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of sampled positives and negatives among ``labels [N]``.

    ``-1`` is ignored, ``bg_label`` is negative, anything else positive. At most
    ``int(num_samples * positive_fraction)`` positives are drawn; negatives fill the rest of
    ``num_samples`` as far as there are any.

    Returns:
        ``(pos_idx, neg_idx)``, 1-D int64 tensors.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
