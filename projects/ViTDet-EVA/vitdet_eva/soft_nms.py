"""Soft-NMS (Bodla et al. 2017) as EVA's detector evaluates with it: linear decay above an IoU of 0.6.

torchvision has no soft-NMS and EVA-01's detectron2 fork called mmcv's compiled ``soft_nms``; this
is the same greedy algorithm in plain torch, batched over classes: every step takes the
highest-scoring remaining box of *each* class at once, and decays that class's other boxes by
their IoU with it:

* ``"linear"``: ``score *= 1 - iou`` where ``iou > iou_threshold`` (EVA: 0.6), else unchanged;
* ``"gaussian"``: ``score *= exp(-iou ** 2 / sigma)`` for every box;
* ``"hard"``: ``score = 0`` where ``iou > iou_threshold`` (plain NMS).

A box whose (decayed) score falls below ``min_score`` is dropped (mmcv's default 1e-3). Ties go
to the lower input index. The steps are sequential, so the loop runs ``max boxes per class``
times; each step is a few tensor ops over ``[classes, max boxes per class]``.
(``docs/recipes/detection.md#evaluation``.)
"""
from __future__ import annotations

import torch

__all__ = ["SOFT_NMS_METHODS", "soft_nms", "batched_soft_nms", "soft_nms_decay", "soft_nms_per_box"]

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


def soft_nms_decay(iou: torch.Tensor, method: str, iou_threshold: float, sigma: float) -> torch.Tensor:
    """The factor each score is multiplied by, given its IoU with the box just kept."""
    if method == "linear":
        return torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    if method == "hard":
        return torch.where(iou > iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
    raise ValueError(f"soft-NMS method={method!r}: expected one of {SOFT_NMS_METHODS}")


def _check(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, method: str, sigma: float) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"soft-NMS boxes must be [N, 4] (XYXY); got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],) or idxs.shape != (boxes.shape[0],):
        raise ValueError(f"soft-NMS: {boxes.shape[0]} boxes need scores and idxs of shape "
                         f"({boxes.shape[0]},); got {tuple(scores.shape)} and {tuple(idxs.shape)}")
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method={method!r}: expected one of {SOFT_NMS_METHODS}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"soft-NMS sigma={sigma}: the gaussian method needs sigma > 0")


def _iou_one_to_many(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of ``box [..., 4]`` with each of ``boxes [..., M, 4]`` (torchvision's ``box_iou`` arithmetic)."""
    area1 = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    area2 = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    lt = torch.max(box[..., None, :2], boxes[..., :2])
    rb = torch.min(box[..., None, 2:], boxes[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., None] + area2 - inter
    return inter / union


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, method: str = "linear",
                     iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS within each category (``idxs``), all categories in one loop.

    Args:
        boxes: ``[N, 4]`` XYXY.
        scores: ``[N]``.
        idxs: ``[N]`` category of each box; boxes of different categories never decay each other.
        method: ``"linear"`` (EVA), ``"gaussian"`` or ``"hard"``.
        iou_threshold: IoU above which the linear / hard methods decay a score (EVA: 0.6).
        sigma: the gaussian method's width (mmcv's default 0.5).
        min_score: boxes scoring below this (before or after decay) are dropped.

    Returns:
        ``(keep, new_scores)``: indices into ``boxes`` of the kept boxes and their decayed scores, sorted
        by decayed score, highest first (ties: lower index first).
    """
    _check(boxes, scores, idxs, method, sigma)
    device = boxes.device
    empty = (torch.zeros((0,), dtype=torch.int64, device=device), scores.new_zeros((0,)))
    if boxes.shape[0] == 0:
        return empty
    # lay the boxes out as [classes, slots], each class's boxes in input order (that order breaks ties)
    _, group = torch.unique(idxs, return_inverse=True)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    row = group[order]
    slot = torch.arange(len(order), device=device) - starts[row]
    num_rows, num_slots = len(counts), int(counts.max())
    pad_boxes = boxes.new_zeros((num_rows, num_slots, 4))
    pad_boxes[row, slot] = boxes[order]
    cur = scores.new_zeros((num_rows, num_slots))
    cur[row, slot] = scores[order]
    index = torch.full((num_rows, num_slots), -1, dtype=torch.int64, device=device)
    index[row, slot] = order
    alive = torch.zeros((num_rows, num_slots), dtype=torch.bool, device=device)
    alive[row, slot] = True
    alive &= cur >= min_score
    rows = torch.arange(num_rows, device=device)
    kept_idx, kept_score = [], []
    for _ in range(num_slots):
        has = alive.any(dim=1)
        if not bool(has.any()):
            break
        best = cur.masked_fill(~alive, float("-inf")).argmax(dim=1)
        r, b = rows[has], best[has]
        kept_idx.append(index[r, b])
        kept_score.append(cur[r, b])
        alive[r, b] = False
        iou = _iou_one_to_many(pad_boxes[r, b], pad_boxes[r])
        cur[r] = cur[r] * soft_nms_decay(iou, method, iou_threshold, sigma)
        alive[r] &= cur[r] >= min_score
    if not kept_idx:
        return empty
    keep, new_scores = torch.cat(kept_idx), torch.cat(kept_score)
    # highest score first; equal scores in input order (sort by index, then a stable sort by score)
    by_index = torch.argsort(keep)
    keep, new_scores = keep[by_index], new_scores[by_index]
    by_score = torch.argsort(new_scores, descending=True, stable=True)
    return keep[by_score], new_scores[by_score]


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, method: str = "linear", iou_threshold: float = 0.3,
             sigma: float = 0.5, min_score: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-agnostic soft-NMS (every box may decay every other); see :func:`batched_soft_nms`."""
    n = boxes.shape[0] if boxes.dim() == 2 else 0
    idxs = torch.zeros((n,), dtype=torch.int64, device=boxes.device)
    return batched_soft_nms(boxes, scores, idxs, method, iou_threshold, sigma, min_score)


def soft_nms_per_box(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, method: str = "linear",
                     iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook loop, one class and one kept box at a time: the reference :func:`batched_soft_nms` is
    tested against (``tests/test_vitdet_soft_nms.py``) and timed against (``benchmarks/vitdet.py``).

    Same arguments and result as :func:`batched_soft_nms`; each IoU is torchvision's ``box_iou`` of one
    pair and each decay a Python branch, so it is slow (seconds for thousands of boxes).
    """
    from torchvision.ops import box_iou

    _check(boxes, scores, idxs, method, sigma)
    kept: list[tuple[int, torch.Tensor]] = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i in range(len(boxes)) if int(idxs[i]) == c and float(scores[i]) >= min_score]
        cur = {i: scores[i].clone() for i in members}
        while members:
            best = max(members, key=lambda i: (float(cur[i]), -i))  # highest score, then lowest index
            kept.append((best, cur[best]))
            members.remove(best)
            survivors = []
            for i in members:
                iou = box_iou(boxes[best][None], boxes[i][None])[0, 0]
                if method == "linear":
                    weight = 1.0 - iou if iou > iou_threshold else torch.ones_like(iou)
                elif method == "gaussian":
                    weight = torch.exp(-(iou * iou) / sigma)
                else:
                    weight = torch.zeros_like(iou) if iou > iou_threshold else torch.ones_like(iou)
                cur[i] = cur[i] * weight
                if float(cur[i]) >= min_score:
                    survivors.append(i)
            members = survivors
    kept.sort(key=lambda t: (-float(t[1]), t[0]))
    if not kept:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device), scores.new_zeros((0,))
    return (torch.tensor([k for k, _ in kept], dtype=torch.int64, device=boxes.device),
            torch.stack([s for _, s in kept]))
