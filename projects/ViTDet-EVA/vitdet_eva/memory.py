"""The memory planner's example batch for the detector (``tools/estimate_memory.py``).

``eva_core.memory`` simulates one training step on fake tensors from a batch the model's package
registers (``register_example_batch``). A detector batch is detectron2's: a list of one dict per image,
``{"image": uint8 [3, S, S], "instances": {"gt_boxes", "gt_classes", "gt_masks"}, "height", "width"}``
at the config's LSJ crop ``S`` (``dataloader.train.dataset.mapper.image_size``), as the LSJ train mapper
gives it. The RPN's NMS and the RoI sampling depend on values the fake tensors do not have: the planner
gives them their largest output (every box kept up to the post-NMS top-k, ``batch_size_per_image``
sampled RoIs, every sampled RoI foreground for the mask head), so the detector's figure is an upper
bound (projects/ViTDet-EVA/README.md#memory). Importing :mod:`vitdet_eva` registers it.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from omegaconf import OmegaConf

from eva_core.memory import (real_mode, register_example_batch, register_inference_batch,
                             register_planning_context)

from . import cascade_rcnn, fast_rcnn, poolers, postprocessing, rpn
from .meta_arch import GeneralizedRCNN

__all__ = ["GT_INSTANCES_PER_IMAGE", "detection_example_batch", "detection_inference_batch",
           "detection_planning_context", "train_image_size"]

#: Ground-truth objects per training image in the example batch: COCO averages 7.3 objects per image and
#: LVIS 12.1; 20 is above both. Their count sizes the matcher's IoU matrices and the mask targets only
#: (a few MiB at 1280), not the RoI heads, which see ``batch_size_per_image`` RoIs whatever it is.
GT_INSTANCES_PER_IMAGE = 20


def train_image_size(cfg: Any) -> int:
    """The LSJ crop side of the config: ``dataloader.train.dataset.mapper.image_size``, or the same under a
    wrapping dataset (LVIS's repeat-factor sampling: ``dataloader.train.dataset.dataset.mapper``)."""
    for key in ("dataloader.train.dataset.mapper.image_size",
                "dataloader.train.dataset.dataset.mapper.image_size"):
        size = OmegaConf.select(cfg, key, default=None)
        if size is not None:
            return int(size)
    raise ValueError("memory planner: the config has no dataloader.train.dataset.mapper.image_size "
                     "(nor dataloader.train.dataset.dataset.mapper.image_size): the LSJ crop of the "
                     "training images")


@register_example_batch(GeneralizedRCNN)
def detection_example_batch(model: GeneralizedRCNN, cfg: Any, batch_size: int,
                            num_instances: int = GT_INSTANCES_PER_IMAGE) -> list[dict]:
    """``batch_size`` training inputs of the config's crop, each with ``num_instances`` objects.

    Boxes tile the image on a grid (every one valid and non-empty); masks fill their boxes. Classes
    cycle over the model's classes.
    """
    s = train_image_size(cfg)
    num_classes = int(model.roi_heads.num_classes)
    side = max(1, int(num_instances ** 0.5 + 0.999))
    cell = s / side
    boxes, masks = [], torch.zeros(num_instances, s, s, dtype=torch.bool)
    for i in range(num_instances):
        r, c = divmod(i, side)
        x0, y0 = c * cell, r * cell
        x1, y1 = x0 + cell * 0.8, y0 + cell * 0.8
        boxes.append([x0, y0, x1, y1])
        masks[i, int(y0):int(y1), int(x0):int(x1)] = True
    classes = torch.arange(num_instances, dtype=torch.long) % num_classes
    return [{"image": torch.zeros(3, s, s, dtype=torch.uint8), "height": s, "width": s,
             "instances": {"gt_boxes": torch.tensor(boxes, dtype=torch.float32),
                           "gt_classes": classes.clone(), "gt_masks": masks.clone()}}
            for _ in range(batch_size)]


@register_inference_batch(GeneralizedRCNN)
def detection_inference_batch(model: GeneralizedRCNN, cfg: Any, batch_size: int) -> list[dict]:
    """``batch_size`` evaluation inputs at the test mapper's size
    (``dataloader.test.dataset.mapper.image_size``:
    1536 in the ``*_1536`` configs), detections rescaled to that size."""
    size = OmegaConf.select(cfg, "dataloader.test.dataset.mapper.image_size", default=None)
    if size is None:
        raise ValueError("memory planner: the config has no dataloader.test.dataset.mapper.image_size")
    s = int(size)
    return [{"image": torch.zeros(3, s, s, dtype=torch.uint8), "height": s, "width": s}
            for _ in range(batch_size)]


def _keep_all_by_score(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                       iou_threshold: float) -> torch.Tensor:
    """NMS that suppresses nothing: every box, highest score first -- NMS's largest output."""
    return torch.argsort(scores, descending=True)


def _all_to_first_level(box_lists, min_level, max_level, canonical_box_size, canonical_level):
    """Every RoI pooled from the first level, as a REAL index tensor: the per-level split is then exact
    (all RoIs at one level, none at the others) instead of each level's largest size (every RoI at every
    level); the pooled output has one row per RoI either way."""
    with real_mode():
        return torch.zeros(sum(len(b) for b in box_lists), dtype=torch.long)


def _paste_masks_largest(masks: torch.Tensor, boxes: torch.Tensor, image_shape, threshold: float = 0.5):
    """``paste_masks_in_image`` at its largest memory without reading box values: the ``[N, h, w]`` output
    and the temporaries of ONE box covering the whole image (the loop pastes one box at a time and frees
    its temporaries before the next, so the largest box bounds them)."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    h, w = (int(v) for v in image_shape)
    out = torch.zeros((masks.shape[0], h, w), dtype=torch.bool if threshold >= 0 else torch.uint8,
                      device=masks.device)
    if masks.shape[0]:
        gx = torch.linspace(-1, 1, w, device=masks.device)
        gy = torch.linspace(-1, 1, h, device=masks.device)
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        pasted = torch.nn.functional.grid_sample(masks[:1, None].float(), grid, align_corners=False)[0, 0]
        out[0] = pasted >= threshold if threshold >= 0 else (pasted * 255).to(torch.uint8)
    return out


@register_planning_context(GeneralizedRCNN)
@contextlib.contextmanager
def detection_planning_context(model: GeneralizedRCNN, cfg: Any):
    """The detector's data-dependent steps at their largest size, without reading values.

    * NMS (RPN proposals, and test-time detections) keeps every box, so the RPN keeps its post-NMS
      top-k (``post_nms_topk``) per image;
    * the RoI pooler takes every RoI from one level (same pooled size as any split);
    * the mask head gets the most foreground RoIs the sampler can give:
      ``int(batch_size_per_image * positive_fraction)`` per image (128 of 512 in the recipe);
    * evaluation: every candidate above the score threshold kept (up to ``test_topk_per_image``), masks
      pasted with the temporaries of an image-sized box (:func:`_paste_masks_largest`).

    The RoI sampler itself needs no help: its candidates take their largest size (every anchor /
    proposal a candidate), so it samples its full ``batch_size_per_image``.
    """
    heads = model.roi_heads
    fg_cap = int(heads.batch_size_per_image * heads.positive_fraction)

    def most_foreground(proposals, bg_label):
        out = []
        for p in proposals:
            # foreground first (a real step under this context then pools only foreground RoIs: the
            # sampler gives it at least fg_cap of them when the image has that many objects)
            fg = (p.gt_classes != -1) & (p.gt_classes != bg_label)
            order = torch.argsort((~fg).to(torch.int8), stable=True)
            out.append(p[order[:min(len(p), fg_cap)]])
        return out

    patches = [(rpn, "batched_nms", _keep_all_by_score), (fast_rcnn, "batched_nms", _keep_all_by_score),
               (poolers, "assign_boxes_to_levels", _all_to_first_level),
               (cascade_rcnn, "select_foreground_proposals", most_foreground),
               (postprocessing, "paste_masks_in_image", _paste_masks_largest)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
