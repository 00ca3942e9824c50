"""COCO box and mask AP through pycocotools (detectron2's ``COCOEvaluator``).

Predictions are turned into the COCO results format (one dict per detection: ``image_id``,
``category_id``, ``bbox`` as XYWH, ``score`` and, for masks, ``segmentation`` as compressed RLE)
and scored with ``pycocotools.cocoeval.COCOeval``; metrics are reported in percent under the task
name, as detectron2 does: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"..},
"segm": {..}}``. The same functions back ``tools/coco_eval.py``, which scores a results json
written by any detector. pycocotools (the ``detection`` extra) is imported on use.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["COCO_METRICS", "COCOEvaluator", "InstancesEvaluatorBase", "instances_to_coco_json",
           "validate_coco_results", "load_coco_results", "evaluate_coco", "evaluate_coco_file",
           "metrics_markdown"]

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = ("bbox", "segm")


@contextlib.contextmanager
def _quiet_stdout():
    """pycocotools and lvis print progress to stdout; send it to the debug log instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        logger.debug(buffer.getvalue().rstrip())


def _check_tasks(tasks: Sequence[str], where: str) -> tuple[str, ...]:
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"{where}: tasks must be a non-empty subset of {TASKS}, got {tasks}")
    return tasks


def _mask_to_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
    # bytes are not JSON; pycocotools accepts the str form back
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_to_coco_json(instances: Mapping[str, Any], image_id: int,
                           category_ids: Sequence[int]) -> list[dict]:
    """One image's predictions in the COCO results format.

    Args:
        instances: ``boxes`` ``[N, 4]`` XYXY in absolute pixels, ``scores`` ``[N]``, ``classes``
            ``[N]`` contiguous ids in ``[0, len(category_ids))`` and optionally ``masks``: a bool
            ``[N, H, W]`` tensor/array or a list of N compressed RLE dicts.
        image_id: the image's id in the ground-truth json.
        category_ids: the json category id of each contiguous class (detectron2 maps the sorted
            json ids to 0..K-1).

    Returns:
        a list of ``{"image_id", "category_id", "bbox" (XYWH), "score"[, "segmentation"]}``.

    Raises:
        KeyError: a required field is missing.
        ValueError: shapes disagree, a class is out of range or masks are not boolean.
    """
    for key in ("boxes", "scores", "classes"):
        if key not in instances:
            raise KeyError(f"instances of image {image_id} have no {key!r} (keys: {sorted(instances)})")
    boxes = torch.as_tensor(instances["boxes"]).detach().cpu().double().reshape(-1, 4)
    scores = torch.as_tensor(instances["scores"]).detach().cpu().double().reshape(-1)
    classes = torch.as_tensor(instances["classes"]).detach().cpu().long().reshape(-1)
    n = boxes.shape[0]
    if scores.numel() != n or classes.numel() != n:
        raise ValueError(f"instances of image {image_id}: {n} boxes, {scores.numel()} scores and "
                         f"{classes.numel()} classes; expected one of each per detection")
    if n and (int(classes.min()) < 0 or int(classes.max()) >= len(category_ids)):
        raise ValueError(f"instances of image {image_id}: class {int(classes.max())} / {int(classes.min())}"
                         f" outside [0, {len(category_ids)}) (the dataset's {len(category_ids)} categories)")
    rles = None
    if instances.get("masks") is not None:
        masks = instances["masks"]
        if isinstance(masks, (list, tuple)):
            rles = [dict(m) for m in masks]
            if any("counts" not in m or "size" not in m for m in rles):
                raise ValueError(f"instances of image {image_id}: masks given as a list must be RLE dicts "
                                 "with 'size' and 'counts'")
        else:
            masks = torch.as_tensor(masks).detach().cpu()
            if masks.dtype != torch.bool or masks.dim() != 3:
                raise ValueError(f"instances of image {image_id}: masks must be bool [N, H, W] (threshold "
                                 f"mask probabilities first), got {masks.dtype} {tuple(masks.shape)}")
            rles = [_mask_to_rle(m) for m in masks.numpy()]
        if len(rles) != n:
            raise ValueError(f"instances of image {image_id}: {len(rles)} masks for {n} boxes")
        for r in rles:
            if isinstance(r["counts"], bytes):
                r["counts"] = r["counts"].decode("ascii")
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    results = []
    for k in range(n):
        det = {"image_id": int(image_id), "category_id": int(category_ids[int(classes[k])]),
               "bbox": [float(v) for v in xywh[k]], "score": float(scores[k])}
        if rles is not None:
            det["segmentation"] = rles[k]
        results.append(det)
    return results


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_coco_results(results: Any, source: str, *, image_ids: Sequence[int] | None = None,
                          category_ids: Sequence[int] | None = None,
                          tasks: Sequence[str] = ("bbox",)) -> list[dict]:
    """Check a COCO results list entry by entry.

    Args:
        results: the parsed results json.
        source: named in errors (the file path).
        image_ids: the ground truth's image ids (None: not checked).
        category_ids: the ground truth's category ids (None: not checked).
        tasks: ``bbox`` needs a ``bbox`` ``[x, y, w, h]`` with ``w, h >= 0``; ``segm`` needs a
            ``segmentation`` RLE dict (``size`` ``[h, w]``, ``counts``).

    Returns:
        ``results`` unchanged.

    Raises:
        ValueError: naming ``source``, the entry index and what was expected.
    """
    if not isinstance(results, list):
        raise ValueError(f"{source}: a COCO results file is a JSON list of detections, got "
                         f"{type(results).__name__}")
    images = set(image_ids) if image_ids is not None else None
    cats = set(category_ids) if category_ids is not None else None

    def fail(i: int, entry: Any, why: str) -> None:
        text = json.dumps(entry)[:200] if isinstance(entry, (dict, list)) else repr(entry)
        raise ValueError(f"{source}: entry {i} {text}: {why}")

    for i, entry in enumerate(results):
        if not isinstance(entry, dict):
            fail(i, entry, "expected a dict with image_id, category_id, score, bbox/segmentation")
        for key in ("image_id", "category_id", "score"):
            if key not in entry:
                fail(i, entry, f"missing {key!r}")
        if not isinstance(entry["image_id"], int) or (images is not None and entry["image_id"] not in images):
            fail(i, entry, f"image_id {entry['image_id']!r} is not an image of the ground truth")
        if not isinstance(entry["category_id"], int) or (cats is not None
                                                         and entry["category_id"] not in cats):
            fail(i, entry, f"category_id {entry['category_id']!r} is not a category of the ground truth")
        if not _is_number(entry["score"]):
            fail(i, entry, f"score {entry['score']!r} is not a finite number")
        if "bbox" in tasks:
            bb = entry.get("bbox")
            if (not isinstance(bb, list) or len(bb) != 4 or not all(_is_number(v) for v in bb)
                    or bb[2] < 0 or bb[3] < 0):
                fail(i, entry, f"bbox {bb!r} is not [x, y, w, h] with finite numbers and w, h >= 0")
        if "segm" in tasks:
            seg = entry.get("segmentation")
            if (not isinstance(seg, dict) or not isinstance(seg.get("counts"), (str, bytes))
                    or not isinstance(seg.get("size"), list) or len(seg["size"]) != 2):
                fail(i, entry, "segmentation is not a compressed RLE dict {'size': [h, w], 'counts': str}")
    return results


def load_coco_results(path: str | os.PathLike, **kwargs: Any) -> list[dict]:
    """Read and check a COCO results json (see :func:`validate_coco_results` for ``kwargs``).

    Raises:
        ValueError: the file is not JSON or an entry is malformed (file and entry are named).
    """
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return validate_coco_results(results, str(path), **kwargs)


def _for_task(results: Sequence[dict], task: str) -> list[dict]:
    """Copies of the detections as the library should see them for ``task``.

    For ``segm`` the box is dropped: with a box present, pycocotools and lvis take the box area
    (not the mask area) for the small/medium/large split (detectron2 does the same).
    """
    out = copy.deepcopy(list(results))
    if task == "segm":
        for det in out:
            det.pop("bbox", None)
            if "segmentation" not in det:
                raise ValueError(f"segm evaluation: detection {det} has no 'segmentation'")
    return out


def _mean_valid(precision: np.ndarray) -> float:
    """pycocotools' summary: the mean over entries that are not -1 (absent), -1 if none."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _percent(value: float) -> float:
    return float(value * 100) if value >= 0 else float("nan")


def evaluate_coco(coco_gt: Any, results: Sequence[dict], task: str, *, max_dets_per_image: int = 100,
                  image_ids: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Score COCO-format detections with ``COCOeval``.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or the path of a ground-truth json.
        results: detections in the COCO results format (not modified).
        task: ``"bbox"`` or ``"segm"``.
        max_dets_per_image: the last entry of ``params.maxDets`` (``[1, 10, max]``); AP is read
            at it, as detectron2 does.
        image_ids: restrict the evaluation to these images (default: every ground-truth image).
        class_names: names of the ground truth's categories in sorted-id order; when given,
            ``AP-<name>`` is reported per category.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"[, "AP-<name>"...]}`` in percent, NaN where
        pycocotools reports -1 (nothing to score) and for every metric when there is no detection.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _check_tasks([task], "evaluate_coco")
    if not isinstance(coco_gt, COCO):
        with _quiet_stdout():
            coco_gt = COCO(str(coco_gt))
    metrics = {m: float("nan") for m in COCO_METRICS}
    if class_names is not None:
        metrics.update({f"AP-{name}": float("nan") for name in class_names})
    results = _for_task(results, task)
    if not results:
        logger.warning("COCO %s evaluation: no detections; every metric is NaN", task)
        return metrics
    with _quiet_stdout():
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), task)
        coco_eval.params.maxDets = [1, 10, int(max_dets_per_image)]
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
        coco_eval.evaluate()
        coco_eval.accumulate()
    # Read AP at the last maxDets entry, as pycocotools' summarize() does for its default 100
    # (summarize() itself assumes 100 and reports -1 for any other cap).
    p, precision = coco_eval.params, coco_eval.eval["precision"]  # [T, R, K, A, M]
    iou50, iou75 = (int(np.where(np.isclose(p.iouThrs, t))[0][0]) for t in (0.5, 0.75))
    area = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}
    metrics["AP"] = _percent(_mean_valid(precision[:, :, :, area["all"], -1]))
    metrics["AP50"] = _percent(_mean_valid(precision[iou50, :, :, area["all"], -1]))
    metrics["AP75"] = _percent(_mean_valid(precision[iou75, :, :, area["all"], -1]))
    metrics["APs"] = _percent(_mean_valid(precision[:, :, :, area["small"], -1]))
    metrics["APm"] = _percent(_mean_valid(precision[:, :, :, area["medium"], -1]))
    metrics["APl"] = _percent(_mean_valid(precision[:, :, :, area["large"], -1]))
    if class_names is not None:
        if len(class_names) != len(p.catIds):
            raise ValueError(f"evaluate_coco: {len(class_names)} class names for {len(p.catIds)} categories")
        for k, name in enumerate(class_names):
            metrics[f"AP-{name}"] = _percent(_mean_valid(precision[:, :, k, area["all"], -1]))
    return metrics


def evaluate_coco_file(gt_json: str | os.PathLike, results_json: str | os.PathLike,
                       tasks: Sequence[str] = ("bbox",), *, max_dets_per_image: int = 100,
                       per_class: bool = True) -> dict[str, dict[str, float]]:
    """Score a COCO results json against a COCO ground-truth json (``tools/coco_eval.py``).

    Every image of the ground truth counts (an image without detections lowers recall).

    Returns:
        ``{task: {metric: value in percent}}``.

    Raises:
        ValueError: the results file or one of its entries is malformed (both are named).
    """
    from pycocotools.coco import COCO

    tasks = _check_tasks(tasks, "evaluate_coco_file")
    with _quiet_stdout():
        coco_gt = COCO(str(gt_json))
    category_ids = sorted(coco_gt.getCatIds())
    results = load_coco_results(results_json, image_ids=coco_gt.getImgIds(), category_ids=category_ids,
                                tasks=tasks)
    names = [coco_gt.cats[c]["name"] for c in category_ids] if per_class else None
    return {task: evaluate_coco(coco_gt, results, task, max_dets_per_image=max_dets_per_image,
                                class_names=names) for task in tasks}


def metrics_markdown(results: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """A markdown table of ``{task: {metric: value}}``: one row per metric, one column per task."""
    tasks = list(results)
    names: list[str] = []
    for task in tasks:
        names += [m for m in results[task] if m not in names]
    lines = [f"## {title}", ""] if title else []
    lines += ["| metric | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in names:
        cells = [f"{results[t][m]:.3f}" if m in results[t] else "" for t in tasks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_DETECTRON2_FIELDS = {"pred_boxes": "boxes", "scores": "scores", "pred_classes": "classes",
                      "pred_masks": "masks"}


def _prediction_mapping(instances: Any) -> Mapping[str, Any]:
    """A mapping as :func:`instances_to_coco_json` reads it, from itself or from a detectron2-style
    ``Instances`` (``get_fields()`` with ``pred_boxes`` (a tensor or a ``Boxes`` with ``.tensor``),
    ``scores``, ``pred_classes``, ``pred_masks``), which detection models return."""
    if isinstance(instances, Mapping):
        return instances
    if not callable(getattr(instances, "get_fields", None)):
        raise ValueError(f"'instances' must be a dict (boxes, scores, classes[, masks]) or a "
                         f"detectron2-style Instances with get_fields(); got {type(instances).__name__}")
    fields = instances.get_fields()
    out = {ours: fields[theirs] for theirs, ours in _DETECTRON2_FIELDS.items() if theirs in fields}
    if "boxes" in out:
        out["boxes"] = getattr(out["boxes"], "tensor", out["boxes"])
    return out


class InstancesEvaluatorBase(DatasetEvaluator):
    """Collects per-image instance predictions as COCO results, gathers them across ranks and
    scores them on rank 0. Subclasses load the ground truth and score one task.

    Args:
        dataset_json: path of the ground-truth json.
        tasks: subset of ``("bbox", "segm")``; None: ``bbox``, plus ``segm`` when the
            predictions carry masks (detectron2's rule).
        output_dir: where rank 0 writes the gathered results json.
        image_id_key: key of the image id in a prediction dict or in the batch.
    """

    results_file = "instances_results.json"

    def __init__(self, dataset_json: str | os.PathLike, tasks: Sequence[str] | None = None,
                 output_dir: str | os.PathLike | None = None, *, image_id_key: str = "image_id") -> None:
        self.dataset_json = str(dataset_json)
        self.tasks = None if tasks is None else _check_tasks(tasks, type(self).__name__)
        self.output_dir = None if output_dir is None else str(output_dir)
        self.image_id_key = image_id_key
        self._gt = self._load_ground_truth(self.dataset_json)
        self.category_ids = self._category_ids()
        self.reset()

    # subclass hooks -------------------------------------------------------------------
    def _load_ground_truth(self, path: str) -> Any:
        raise NotImplementedError

    def _category_ids(self) -> list[int]:
        raise NotImplementedError

    def _score(self, results: list[dict], task: str, image_ids: list[int]) -> dict[str, float]:
        raise NotImplementedError

    # DatasetEvaluator -----------------------------------------------------------------
    def reset(self) -> None:
        self._image_ids: list[int] = []
        self._results: list[dict] = []
        self._has_masks = False

    def _image_id(self, batch: Any, output: Mapping, index: int) -> int:
        if self.image_id_key in output:
            return int(output[self.image_id_key])
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and index < len(batch) \
                and isinstance(batch[index], Mapping) and self.image_id_key in batch[index]:
            return int(batch[index][self.image_id_key])
        if isinstance(batch, Mapping) and self.image_id_key in batch:
            return int(torch.as_tensor(batch[self.image_id_key]).reshape(-1)[index])
        raise KeyError(f"{type(self).__name__}: prediction {index} of the batch has no {self.image_id_key!r} "
                       "and the batch gives none (a list of dicts with it, or a dict with a list)")

    def process(self, batch: Any, outputs: Any) -> None:
        if isinstance(outputs, Mapping):
            outputs = [outputs]
        for i, out in enumerate(outputs):
            if not isinstance(out, Mapping) or "instances" not in out:
                raise ValueError(f"{type(self).__name__}: each output must be a dict with 'instances', got "
                                 f"{type(out).__name__}{sorted(out) if isinstance(out, Mapping) else ''}")
            image_id = self._image_id(batch, out, i)
            instances = _prediction_mapping(out["instances"])
            dets = instances_to_coco_json(instances, image_id, self.category_ids)
            self._has_masks |= instances.get("masks") is not None
            self._image_ids.append(image_id)
            self._results.extend(dets)

    def evaluate(self) -> dict[str, Any]:
        image_ids = [i for part in comm.all_gather_object(self._image_ids) for i in part]
        results = [d for part in comm.all_gather_object(self._results) for d in part]
        has_masks = any(comm.all_gather_object(self._has_masks))
        if not comm.is_main_process():
            return {}
        if not image_ids:
            logger.warning("%s: no predictions to evaluate", type(self).__name__)
            return {}
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, self.results_file)
            with open(path, "w") as f:
                json.dump(results, f)
            logger.info("Saved %d detections to %s", len(results), path)
        tasks = self.tasks or (("bbox", "segm") if has_masks else ("bbox",))
        if "segm" in tasks and results and not all("segmentation" in d for d in results):
            raise ValueError(f"{type(self).__name__}: task 'segm' requested but the predictions have "
                             "no masks")
        return {task: self._score(results, task, sorted(set(image_ids))) for task in tasks}


class COCOEvaluator(InstancesEvaluatorBase):
    """COCO box / mask AP of instance predictions (detectron2's ``COCOEvaluator``).

    ``process(batch, outputs)`` takes ``outputs`` as a list with one dict per image:
    ``{"image_id": int (or found in the batch), "instances": {"boxes": [N, 4] XYXY absolute,
    "scores": [N], "classes": [N] contiguous ids, "masks": bool [N, H, W] or RLE list}}``.
    Contiguous class ``k`` is the k-th category id of the json in sorted order.

    Args:
        dataset_json: the COCO ground-truth json.
        tasks: ``("bbox", "segm")`` or a subset; None: from the predictions.
        output_dir: rank 0 writes ``coco_instances_results.json`` there.
        max_dets_per_image: COCOeval's detection cap per image (100 for COCO).
        per_class: also report ``AP-<category name>`` per task.

    Results: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<name>"...}, "segm": {..}}``
    in percent, over the images that were processed.
    """

    results_file = "coco_instances_results.json"

    def __init__(self, dataset_json: str | os.PathLike, tasks: Sequence[str] | None = None,
                 output_dir: str | os.PathLike | None = None, max_dets_per_image: int = 100, *,
                 per_class: bool = True, image_id_key: str = "image_id") -> None:
        self.max_dets_per_image = int(max_dets_per_image)
        self.per_class = per_class
        super().__init__(dataset_json, tasks, output_dir, image_id_key=image_id_key)

    def _load_ground_truth(self, path: str) -> Any:
        from pycocotools.coco import COCO

        with _quiet_stdout():
            return COCO(path)

    def _category_ids(self) -> list[int]:
        return sorted(self._gt.getCatIds())

    def _score(self, results: list[dict], task: str, image_ids: list[int]) -> dict[str, float]:
        names = ([self._gt.cats[c]["name"] for c in self.category_ids] if self.per_class else None)
        return evaluate_coco(self._gt, results, task, max_dets_per_image=self.max_dets_per_image,
                             image_ids=image_ids, class_names=names)
