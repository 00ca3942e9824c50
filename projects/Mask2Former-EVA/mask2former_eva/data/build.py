"""Batches for ``EncoderDecoderMask2Former`` and ``SemSegEvaluator``, through eva_core's loaders.

Train batch (fixed crop size): ``{"image": float [B, 3, crop, crop], "sem_seg": int64
[B, crop, crop] (255 = ignore / padding), "file_name": [B]}``.

Test batch: ``{"image": float [B, 3, h, w]`` (a list of ``[3, h_i, w_i]`` when sizes differ),
``"sem_seg": [B]`` int64 ``[H_i, W_i]`` maps at the original size, ``"ori_size": [B]`` ``(H_i, W_i)``,
``"file_name": [B]}``. The model returns per-image logits resized to ``ori_size``, which is what
``eva_core.evaluation.SemSegEvaluator.process`` compares with ``sem_seg``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from eva_core.data.loader import build_test_loader, build_train_loader

__all__ = ["collate_sem_seg_train", "collate_sem_seg_test", "build_sem_seg_train_loader",
           "build_sem_seg_test_loader"]


def collate_sem_seg_train(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-size training crops."""
    return {"image": torch.stack([s["image"] for s in samples]),
            "sem_seg": torch.stack([s["sem_seg"] for s in samples]),
            "file_name": [s["file_name"] for s in samples]}


def collate_sem_seg_test(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Test images (stacked when their sizes agree) with their original-size label maps.

    (eva_core's test loader calls it with the readable samples only and adds ``num_skipped``.)
    """
    samples = list(samples)
    images = [s["image"] for s in samples]
    same = all(im.shape == images[0].shape for im in images)
    return {"image": torch.stack(images) if same else images,
            "sem_seg": [s["sem_seg"] for s in samples],
            "ori_size": [tuple(s.get("ori_size", s["sem_seg"].shape)) for s in samples],
            "file_name": [s["file_name"] for s in samples]}


def build_sem_seg_train_loader(dataset, total_batch_size: int, *, num_workers: int = 0, seed: int = 0):
    """eva_core's infinite, resumable train loader with :func:`collate_sem_seg_train`."""
    return build_train_loader(dataset, total_batch_size, num_workers=num_workers, seed=seed,
                              collate_fn=collate_sem_seg_train)


def build_sem_seg_test_loader(dataset, batch_size: int = 1, *, num_workers: int = 0):
    """eva_core's finite, sharded test loader with :func:`collate_sem_seg_test`."""
    return build_test_loader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_sem_seg_test)



def memory_example_batch(model, cfg, batch_size: int) -> dict[str, Any]:
    """A training batch for eva_core's memory planner: crops of the config's size whose label maps
    hold ``min(num_classes, 10)`` classes in vertical stripes (about ADE20K's classes per crop), so
    the criterion sees a realistic number of target masks. The label maps are real tensors: the
    criterion's ``unique`` and the matcher's assignment read their values."""
    from omegaconf import OmegaConf

    crop = OmegaConf.select(cfg, "dataloader.train.dataset.transform.crop_size")
    if crop is None:
        raise ValueError("memory planner: the config has no dataloader.train.dataset.transform.crop_size")
    h, w = int(crop[0]), int(crop[1])
    classes = min(int(model.num_classes), 10)
    stripes = (torch.arange(w) * classes // w).expand(batch_size, h, w).clone()
    return {"image": torch.empty(batch_size, 3, h, w), "sem_seg": stripes.long()}


def _register_memory_batch() -> None:
    from eva_core.memory import register_example_batch

    from ..segmentor import EncoderDecoderMask2Former

    register_example_batch(EncoderDecoderMask2Former)(memory_example_batch)


_register_memory_batch()
