"""Multi-view testing: every video scored as the mean softmax over its temporal clips x spatial crops.

``docs/recipes/video.md#sampling-and-augmentation``: EVA tests with 4 temporal clips x 3 spatial crops.
A test dataset built with ``num_clips=4`` and ``VideoTestTransform(num_crops=3)`` yields
``batch["video"]`` of shape ``[B, 12, T, 3, H, W]``; :class:`MultiViewVideoClassifier` runs the
classifier on all views and returns the averaged class probabilities ``[B, C]``, which eva_core's
``ClassificationEvaluator`` ranks for top-1 / top-5 inside ``inference_on_dataset`` (the one eval loop).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from eva_core.data import build_test_loader
from eva_core.evaluation import ClassificationEvaluator, inference_on_dataset

__all__ = ["average_view_scores", "MultiViewVideoClassifier", "evaluate_multi_view"]


def average_view_scores(logits: torch.Tensor) -> torch.Tensor:
    """``[B, V, C]`` logits of V views -> ``[B, C]`` mean of the per-view softmax."""
    if logits.dim() != 3:
        raise ValueError(f"average_view_scores: expected logits [B, V, C], got {tuple(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


class MultiViewVideoClassifier(nn.Module):
    """Wraps a clip classifier (``model(clips [N, T, 3, H, W]) -> logits``) for multi-view testing.

    Args:
        model: the video classifier, e.g. :class:`video.EvaVideo`.
        video_key: batch key of the views.
        views_per_forward: views run through ``model`` at once (None: all of the batch), to bound memory.

    ``forward(batch)`` takes ``batch[video_key]`` as ``[B, V, T, 3, H, W]`` (or one view ``[B, T, 3, H, W]``)
    and returns the averaged probabilities ``[B, C]``.
    """

    def __init__(self, model: nn.Module, video_key: str = "video", views_per_forward: int | None = None):
        super().__init__()
        self.model = model
        self.video_key = video_key
        self.views_per_forward = views_per_forward

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        video = batch[self.video_key] if isinstance(batch, Mapping) else batch
        if video.dim() == 5:
            video = video.unsqueeze(1)
        if video.dim() != 6:
            raise ValueError(f"MultiViewVideoClassifier: {self.video_key!r} must be [B, V, T, 3, H, W] or "
                             f"[B, T, 3, H, W], got {tuple(video.shape)}")
        b, v = video.shape[:2]
        flat = video.flatten(0, 1)
        chunk = self.views_per_forward or flat.shape[0]
        logits = torch.cat([self.model(part) for part in flat.split(chunk)])
        return average_view_scores(logits.view(b, v, -1))


def evaluate_multi_view(model: nn.Module, dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0,
                        topk: tuple[int, ...] = (1, 5), views_per_forward: int | None = None,
                        amp_dtype: torch.dtype | None = None, device: Any = None) -> dict[str, Any]:
    """Top-k of ``model`` on a multi-view test ``dataset`` through ``inference_on_dataset``.

    Unreadable videos are excluded by eva_core's test loader and reported as ``num_skipped``.

    Returns:
        ``{"top1", "top5", "num_samples", "num_skipped"}`` (percent) on rank 0, ``{}`` elsewhere.
    """
    loader = build_test_loader(dataset, batch_size, num_workers=num_workers)
    wrapped = MultiViewVideoClassifier(model, views_per_forward=views_per_forward)
    return inference_on_dataset(wrapped, loader, ClassificationEvaluator(topk=topk), amp_dtype=amp_dtype,
                                device=device)
