"""Video classifier wrapper: :class:`EvaVideo` + loss + clip-wise Mixup/CutMix, as the engine trains it.

The loss handling is eva_core's :class:`~eva_core.classification.ImageClassifier` (timm Mixup / CutMix,
label smoothing, soft-target cross entropy); this module only reads the clip from ``batch["video"]``
and lets timm's Mixup see a clip ``[B, T, 3, H, W]`` as an image ``[B, T*3, H, W]``, so CutMix pastes
the same box into every frame of a clip (``docs/recipes/video.md#training-through-the-engine``).

Initial weights: ``create_video_model(checkpoint_path=...)`` (``model.net.checkpoint_path`` in the
configs) inflates an image checkpoint or resamples a video one through
:func:`video.load_video_checkpoint`. ``train.init_checkpoint`` goes through ``eva_core.load_checkpoint``,
which detects the layout from the keys; it takes video checkpoints (ours, the EVA-01 video release).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from eva_core.classification import ImageClassifier

from .data.kinetics722 import init_head_from_k722
from .evaluation import average_view_scores

__all__ = ["ClipMixup", "VideoClassifier"]


class ClipMixup:
    """timm ``Mixup`` applied to clips: ``[B, T, 3, H, W]`` is mixed as ``[B, T*3, H, W]``.

    timm's CutMix indexes ``x[:, :, y0:y1, x0:x1]``, which on a 5-D clip would cut channels and rows;
    stacking the frames into channels keeps the box spatial and identical for all frames of a clip,
    and mixup's convex combination is unchanged by the reshape.

    Args:
        mixup: a ``timm.data.Mixup`` (its ``num_classes`` and ``label_smoothing`` apply).
    """

    def __init__(self, mixup: Any):
        self.mixup = mixup
        self.num_classes = getattr(mixup, "num_classes", None)

    def __call__(self, clips: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if clips.dim() != 5:
            raise ValueError(f"ClipMixup: expected clips [B, T, 3, H, W], got {tuple(clips.shape)}")
        b, t, c, h, w = clips.shape
        mixed, target = self.mixup(clips.reshape(b, t * c, h, w), target)
        return mixed.view(b, t, c, h, w), target


class VideoClassifier(ImageClassifier):
    """Video classification model: ``EvaVideo`` (or any clip classifier) + loss (+ Mixup/CutMix).

    Args:
        net: clip classifier ``net(clips [B, T, 3, H, W]) -> logits`` with ``num_classes`` /
            ``reset_classifier`` (:class:`video.EvaVideo`).
        criterion: loss; defaults as :class:`~eva_core.classification.ImageClassifier` (soft-target
            cross entropy with ``mixup``, else cross entropy). Recipes pass
            ``timm.loss.LabelSmoothingCrossEntropy``.
        mixup: a ``timm.data.Mixup``; it is wrapped in :class:`ClipMixup`.
        num_classes: replace the head when it differs from ``net.num_classes``.
        freeze_patch_embed: stop gradients after the patch embedding.
        video_key: batch key of the clips.
        views_per_forward: in multi-view testing, views run through ``net`` at once (None: all).
        head_init_checkpoint: stage 2: a K-722 video checkpoint whose ``head`` rows initialise this
            head (``docs/recipes/video.md#stage-2-per-dataset-fine-tuning``); needs ``head_init_rows``.
        head_init_rows: the K-722 row of each class of this head: a list, or the ``k722_to_<name>.json``
            written by ``tools/make_kinetics722.py``.

    Forward:
        ``batch[video_key]`` is ``[B, T, 3, H, W]``; train mode also needs ``batch["label"]`` and
        returns ``{"loss_cls": scalar}``. Eval mode returns logits ``[B, C]`` for one view, and for
        multi-view test batches ``[B, V, T, 3, H, W]`` (4 clips x 3 crops) the mean of the V views'
        softmax ``[B, C]`` (:func:`video.average_view_scores`), so the engine's periodic evaluation
        is the paper's multi-view testing. A bare tensor is accepted in eval mode.
    """

    def __init__(self, net: nn.Module, criterion: nn.Module | None = None, mixup: Any = None,
                 num_classes: int | None = None, *, freeze_patch_embed: bool = False,
                 video_key: str = "video", views_per_forward: int | None = None,
                 head_init_checkpoint: str | os.PathLike | None = None,
                 head_init_rows: str | os.PathLike | Sequence[int] | None = None) -> None:
        super().__init__(net, criterion=criterion, mixup=ClipMixup(mixup) if mixup is not None else None,
                         num_classes=num_classes, freeze_patch_embed=freeze_patch_embed)
        self.video_key = video_key
        self.views_per_forward = views_per_forward
        if (head_init_checkpoint is None) != (head_init_rows is None):
            raise ValueError("VideoClassifier: head_init_checkpoint and head_init_rows go together, got "
                             f"checkpoint={head_init_checkpoint!r}, rows={head_init_rows!r}")
        if head_init_checkpoint is not None:
            self.init_head_from_rows(head_init_checkpoint, head_init_rows)

    def init_head_from_rows(self, checkpoint: str | os.PathLike | Mapping[str, Any],
                            rows: str | os.PathLike | Sequence[int]) -> None:
        """Copy rows of a checkpoint's ``head`` (K-722) into this head, class ``i`` <- row ``rows[i]``.

        Raises:
            KeyError: the checkpoint has no ``head.weight``, naming the file.
            ValueError: ``rows`` does not have one entry per class of this head.
        """
        from eva_core.checkpoint import load_file
        from eva_core.checkpoint.layouts import unwrap_state_dict

        source = "<state_dict>" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
        obj = checkpoint if isinstance(checkpoint, Mapping) else load_file(source)
        sd = unwrap_state_dict(obj, source=source)
        if "head.weight" not in sd:
            raise KeyError(f"{source}: no 'head.weight' to initialise the head from; keys start "
                           f"{sorted(sd)[:5]}")
        if isinstance(rows, (str, os.PathLike)):
            with open(rows, encoding="utf-8") as f:
                rows = json.load(f)
        rows = [int(r) for r in rows]
        if len(rows) != self.num_classes:
            raise ValueError(f"VideoClassifier: {len(rows)} head rows for a head of {self.num_classes} "
                             "classes; the rows file must be the k722_to_<dataset>.json of this dataset")
        new = init_head_from_k722({"weight": sd["head.weight"], "bias": sd.get("head.bias")}, rows)
        with torch.no_grad():
            self.net.head.weight.copy_(new.weight)
            if new.bias is not None:
                self.net.head.bias.copy_(new.bias)

    def _images(self, batch: Any) -> torch.Tensor:
        if torch.is_tensor(batch):
            clips = batch
        elif isinstance(batch, Mapping) and self.video_key in batch:
            clips = batch[self.video_key]
        else:
            keys = list(batch.keys()) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"VideoClassifier: batch must be a dict with a {self.video_key!r} tensor "
                           f"[B, T, 3, H, W], got {keys}")
        if clips.dim() != 5 and not (clips.dim() == 6 and not self.training):
            raise ValueError(f"VideoClassifier: {self.video_key!r} must be [B, T, 3, H, W] (or multi-view "
                             f"[B, V, T, 3, H, W] in eval mode), got {tuple(clips.shape)}")
        return clips

    def forward(self, batch: Any) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.training:
            return super().forward(batch)
        clips = self._images(batch)
        if clips.dim() == 5:
            return self.net(clips)
        b, v = clips.shape[:2]
        flat = clips.flatten(0, 1)
        logits = torch.cat([self.net(part) for part in flat.split(self.views_per_forward or flat.shape[0])])
        return average_view_scores(logits.view(b, v, -1))
