"""Semantic-segmentation metrics (mIoU, mAcc, aAcc) from a confusion matrix (detectron2's
``SemSegEvaluator``, mmseg's metric names)."""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data.loader import batch_num_skipped
from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "sem_seg_metrics"]

logger = logging.getLogger(__name__)

PER_CLASS_TABLE = "sem_seg_per_class.md"


def sem_seg_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """mIoU / mAcc / aAcc and per-class IoU / Acc, in percent, from a confusion matrix.

    A class absent from both the ground truth and the predictions has no IoU, and a class absent
    from the ground truth has no accuracy: their per-class values are NaN and the means skip them.
    This is the convention of detectron2's ``SemSegEvaluator``, mmseg's ``mean_iou`` (nanmean) and
    torchmetrics' ``JaccardIndex(average="macro")``. A class that is predicted but absent from the
    ground truth counts with IoU 0. (torchmetrics' ``Accuracy(average="macro")`` differs on that
    class only: it counts its accuracy as 0, where detectron2 and mmseg leave it out of mAcc.)

    Args:
        confusion: ``[C, C]`` counts, rows = ground-truth class, columns = predicted class.
        class_names: ``C`` names used in the per-class keys.

    Returns:
        ``{"mIoU", "mAcc", "aAcc", "IoU-<name>", "Acc-<name>"}``.
    """
    confusion = confusion.double()
    true_pos = confusion.diag()
    gt_count, pred_count = confusion.sum(1), confusion.sum(0)
    union = gt_count + pred_count - true_pos
    nan = torch.full_like(true_pos, math.nan)
    iou = torch.where(union > 0, true_pos / union.clamp(min=1), nan)
    acc = torch.where(gt_count > 0, true_pos / gt_count.clamp(min=1), nan)
    results = {"mIoU": float(iou.nanmean() * 100), "mAcc": float(acc.nanmean() * 100),
               "aAcc": float(true_pos.sum() / gt_count.sum() * 100)}
    for name, value in zip(class_names, iou.tolist()):
        results[f"IoU-{name}"] = value * 100
    for name, value in zip(class_names, acc.tolist()):
        results[f"Acc-{name}"] = value * 100
    return results


class SemSegEvaluator(DatasetEvaluator):
    """Accumulates a confusion matrix of predicted vs ground-truth label maps over a dataset.

    Pixels whose ground truth is ``ignore_label`` are left out. Each rank keeps its own matrix;
    :meth:`evaluate` sums them across ranks and returns, on rank 0,
    ``{"sem_seg": {"mIoU", "mAcc", "aAcc", "IoU-<class>", "Acc-<class>"}}`` in percent (see
    :func:`sem_seg_metrics` for classes that do not occur) and writes the per-class table
    (markdown) to ``output_dir/sem_seg_per_class.md``.

    What :meth:`process` reads:
        * ``batch[label_key]``: ground-truth label maps, an integer ``[B, H, W]`` tensor or a list of
          ``[H, W]`` tensors (images of different sizes).
        * ``batch[file_key]`` (optional): one file name per image, used in error messages.
        * ``outputs``: per-class logits (floating ``[B, C, H, W]``) or label maps (integer
          ``[B, H, W]``), either directly, under ``outputs[output_key]``, or as a list with one
          ``[C, H, W]`` / ``[H, W]`` tensor (or ``{output_key: tensor}``) per image, as detectron2's
          models return.

    Args:
        num_classes: number of classes ``C``; labels are ``0 .. C-1``.
        ignore_label: ground-truth value that marks unlabelled pixels (255 in ADE20K after
            reduce-zero-label and in COCO-Stuff).
        class_names: ``C`` names for the per-class keys (default ``"0" .. "C-1"``).
        output_dir: where the per-class table is written (None: not written, only logged).
        label_key: batch key of the ground-truth maps.
        file_key: batch key of the file names.
        output_key: key of the predictions when the model returns a dict.

    Raises:
        ValueError: at construction, a class-name list of the wrong length or with repeats; in
            :meth:`process`, a label map whose size differs from its prediction (naming the file
            and both sizes), logits with a class count other than ``num_classes``, or a label
            outside ``0 .. C-1`` that is not ``ignore_label``.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: Sequence[str] | None = None,
                 output_dir: str | os.PathLike | None = None, *, label_key: str = "sem_seg",
                 file_key: str = "file_name", output_key: str = "sem_seg") -> None:
        if int(num_classes) < 1:
            raise ValueError(f"SemSegEvaluator: num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        if 0 <= int(ignore_label) < self.num_classes:
            raise ValueError(f"SemSegEvaluator: ignore_label {ignore_label} is one of the {num_classes} "
                             "class labels; use a value outside 0 .. num_classes-1 (e.g. 255)")
        self.ignore_label = int(ignore_label)
        if class_names is None:
            class_names = [str(c) for c in range(self.num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != self.num_classes:
            raise ValueError(f"SemSegEvaluator: {len(class_names)} class_names for num_classes "
                             f"{self.num_classes}")
        if len(set(class_names)) != len(class_names):
            repeated = sorted({n for n in class_names if class_names.count(n) > 1})
            raise ValueError(f"SemSegEvaluator: class_names repeat {repeated}; per-class keys must be unique")
        self.class_names = class_names
        self.output_dir = output_dir
        self.label_key, self.file_key, self.output_key = label_key, file_key, output_key
        self.reset()

    def reset(self) -> None:
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        self._num_images = 0
        self._num_skipped: int | None = None

    # ------------------------------------------------------------------ per batch
    def _predicted_labels(self, outputs: Any) -> list[torch.Tensor]:
        """One ``[H, W]`` label map per image from whatever form the model returned."""
        if isinstance(outputs, Mapping):
            if self.output_key not in outputs:
                raise KeyError(f"SemSegEvaluator: model outputs have no {self.output_key!r} entry "
                               f"(keys: {sorted(outputs)})")
            outputs = outputs[self.output_key]
        if torch.is_tensor(outputs):
            if outputs.dim() not in (3, 4):
                raise ValueError("SemSegEvaluator: outputs must be logits [B, C, H, W] or label maps "
                                 f"[B, H, W], got shape {tuple(outputs.shape)}")
            per_image = list(outputs.unbind(0))
        else:
            per_image = [o[self.output_key] if isinstance(o, Mapping) else o for o in outputs]
        labels = []
        for pred in per_image:
            pred = pred.detach()
            if pred.dim() == 3 and pred.is_floating_point():
                if pred.shape[0] != self.num_classes:
                    raise ValueError(f"SemSegEvaluator: logits have {pred.shape[0]} classes, expected "
                                     f"num_classes {self.num_classes}")
                pred = pred.argmax(0)
            elif pred.dim() != 2 or pred.is_floating_point():
                raise ValueError("SemSegEvaluator: a prediction must be floating logits [C, H, W] or an "
                                 f"integer label map [H, W], got {pred.dtype} of shape {tuple(pred.shape)}")
            labels.append(pred.long())
        return labels

    def process(self, batch: Mapping, outputs: Any) -> None:
        skipped = batch_num_skipped(batch)
        if skipped is not None:
            self._num_skipped = (self._num_skipped or 0) + skipped
        if self.label_key not in batch:
            raise KeyError(f"SemSegEvaluator: batch has no {self.label_key!r} entry "
                           f"(batch keys: {sorted(batch.keys())})")
        gts = batch[self.label_key]
        gts = list(gts.unbind(0)) if torch.is_tensor(gts) else list(gts)
        preds = self._predicted_labels(outputs)
        if len(gts) != len(preds):
            raise ValueError(f"SemSegEvaluator: {len(preds)} predictions for {len(gts)} label maps")
        names = batch.get(self.file_key)
        for i, (pred, gt) in enumerate(zip(preds, gts)):
            name = names[i] if names is not None else f"image {self._num_images + i}"
            gt = torch.as_tensor(gt).to(pred.device).long()
            if gt.dim() == 3 and gt.shape[0] == 1:
                gt = gt[0]  # a [1, H, W] map from a channel-first label transform
            if tuple(gt.shape) != tuple(pred.shape):
                raise ValueError(f"SemSegEvaluator: {name}: label map is {tuple(gt.shape)} (H, W) but the "
                                 f"prediction is {tuple(pred.shape)}; predictions must be at the label "
                                 "map's resolution")
            self._accumulate(pred, gt, name)
        self._num_images += len(gts)

    def _accumulate(self, pred: torch.Tensor, gt: torch.Tensor, name: str) -> None:
        valid = gt != self.ignore_label
        gt, pred = gt[valid], pred[valid]
        for what, labels in (("label map", gt), ("prediction", pred)):
            bad = (labels < 0) | (labels >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(f"SemSegEvaluator: {name}: {what} holds value {int(labels[bad][0])}, "
                                 f"expected 0 .. {self.num_classes - 1} or ignore_label {self.ignore_label}")
        counts = torch.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2)
        self._confusion += counts.view(self.num_classes, self.num_classes).cpu()

    # ------------------------------------------------------------------ results
    def evaluate(self) -> dict[str, Any]:
        parts = comm.all_gather_object((self._confusion, self._num_images, self._num_skipped))
        if not comm.is_main_process():
            return {}
        confusion = sum(p[0] for p in parts)
        num_images = sum(p[1] for p in parts)
        skipped = [p[2] for p in parts if p[2] is not None]
        if int(confusion.sum()) == 0:
            logger.warning("SemSegEvaluator: no labelled pixels among %d images; no metrics", num_images)
            return {}
        results: dict[str, Any] = sem_seg_metrics(confusion, self.class_names)
        if skipped:
            results["num_skipped"] = int(sum(skipped))
        table = self.per_class_table(results)
        logger.info("Semantic segmentation on %d images:\n%s", num_images, table)
        if self.output_dir is not None:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, PER_CLASS_TABLE), "w") as f:
                f.write(table + "\n")
        return {"sem_seg": results}

    def per_class_table(self, results: Mapping[str, float]) -> str:
        """Markdown table of per-class IoU / Acc with the means as the last row."""
        def fmt(v: float) -> str:
            return "-" if math.isnan(v) else f"{v:.2f}"
        rows = ["| Class | IoU | Acc |", "|---|---|---|"]
        for n in self.class_names:
            rows.append(f"| {n} | {fmt(results[f'IoU-{n}'])} | {fmt(results[f'Acc-{n}'])} |")
        rows.append(f"| mean | {fmt(results['mIoU'])} | {fmt(results['mAcc'])} |")
        rows.append(f"\naAcc: {fmt(results['aAcc'])}")
        return "\n".join(rows)
