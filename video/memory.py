"""The memory planner's example batch for video classifiers (``tools/estimate_memory.py``).

``eva_core.memory`` simulates one training step on fake tensors from a batch the model's package
registers (``register_example_batch``); a video batch is ``{"video": [B, T, 3, S, S], "label": [B]}``
(docs/recipes/video.md#memory). Importing :mod:`video` registers it.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from eva_core.memory import register_example_batch

from .classification import VideoClassifier

__all__ = ["clip_geometry", "video_example_batch"]


def _select(node: Any, key: str) -> Any:
    """``key`` under a config node (None when the node is not a config or does not set it)."""
    return OmegaConf.select(node, key, default=None) if OmegaConf.is_config(node) else None


def clip_geometry(model: VideoClassifier, cfg: Any) -> tuple[int, int]:
    """Frames and frame side of a training clip: the train dataset's ``num_frames`` and its transform's
    ``size`` when the config sets them, else the encoder's stored ``num_frames`` and image size."""
    net = model.net
    dataset = _select(cfg, "dataloader.train.dataset")
    frames, size = _select(dataset, "num_frames"), _select(dataset, "transform.size")
    if frames is None:
        frames = net.num_frames
    if size is None:
        grid, patch = net.patch_embed.grid_size, net.patch_embed.patch_size
        size = grid[0] * patch[0]
    return int(frames), int(size)


@register_example_batch(VideoClassifier)
def video_example_batch(model: VideoClassifier, cfg: Any, batch_size: int) -> dict:
    """One training batch ``{"video": [B, T, 3, S, S], "label": [B]}`` of the config's clip geometry."""
    frames, size = clip_geometry(model, cfg)
    return {model.video_key: torch.empty(batch_size, frames, 3, size, size),
            "label": torch.zeros(batch_size, dtype=torch.long)}
