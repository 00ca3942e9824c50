"""detectron2's ``Matcher``: give each prediction (anchor / proposal) a ground-truth box and a label.

ViTDet's RPN uses ``Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)``: IoU < 0.3
is background, 0.3 to 0.7 is ignored, >= 0.7 is foreground, and every ground-truth box also makes
foreground of the predictions it overlaps best (ties included), whatever that IoU is.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Matcher"]


class Matcher:
    """Match an ``[M gt, N predictions]`` quality (IoU) matrix column-wise.

    Args:
        thresholds: increasing IoU thresholds splitting [0, 1] into ``len(thresholds) + 1`` bins.
        labels: the label of each bin, each in ``{-1 (ignore), 0 (negative), 1 (positive)}``.
        allow_low_quality_matches: also label 1 each gt box's best predictions (ties included).
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if len(thresholds) == 0 or thresholds[0] <= 0:
            raise ValueError(f"Matcher thresholds={thresholds}: expected a non-empty list starting above 0")
        if any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher thresholds={thresholds}: expected a non-decreasing list")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher labels={list(labels)}: each must be -1, 0 or 1")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"Matcher has {len(thresholds)} thresholds and {len(labels)} labels; expected "
                             f"{len(thresholds) + 1} labels, one per bin")
        self.thresholds = [-float("inf")] + thresholds + [float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``matches [N]`` (int64 gt index) and ``match_labels [N]`` (int8 in {-1, 0, 1}).

        With no gt boxes every prediction gets index 0 and the label of the lowest bin.
        Low-quality matches change the label only, not the matched index (detectron2's behaviour).

        Raises:
            ValueError: the matrix is not 2-D or has a negative entry.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"Matcher expects an [M, N] matrix; got shape "
                             f"{tuple(match_quality_matrix.shape)}")
        num_preds = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            matches = match_quality_matrix.new_full((num_preds,), 0, dtype=torch.int64)
            labels = match_quality_matrix.new_full((num_preds,), self.labels[0], dtype=torch.int8)
            return matches, labels
        if (match_quality_matrix < 0).any():
            raise ValueError("Matcher: the quality matrix has negative entries; expected IoU-like "
                             "values >= 0")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_full(matches.shape, 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_bin = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_bin] = label
        if self.allow_low_quality_matches:
            self._set_low_quality_matches(match_labels, match_quality_matrix)
        return matches, match_labels

    @staticmethod
    def _set_low_quality_matches(match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        """Label 1 every prediction that is some gt box's best (ties included), as Faster R-CNN does."""
        best_per_gt, _ = match_quality_matrix.max(dim=1)
        _, pred_idx = torch.nonzero(match_quality_matrix == best_per_gt[:, None], as_tuple=True)
        match_labels[pred_idx] = 1
