"""LVIS box and mask AP (AP, APr, APc, APf) through the ``lvis`` API, and the fixed-AP protocol.

Standard LVIS evaluation keeps the 300 highest-scoring detections of each image
(``LVISResults(max_dets=300)``). The fixed-AP protocol of the LVIS challenge (Dave et al. 2021,
"Evaluating Large-Vocabulary Object Detectors: The Devil is in the Details") instead keeps the
top ``K`` detections of each category over the whole dataset (``K = 10,000`` for LVIS v1) with no
per-image cap, so that AP no longer depends on how a detector spreads its per-image budget
across categories. Metrics are reported in percent under the task name, as detectron2 does.

``lvis`` 0.5.3 uses ``np.float``, which numpy 2 removed; :func:`_lvis_numpy_shim` restores it
(the one place this happens) before every LVIS evaluation. ``lvis`` (the ``detection`` extra) is
imported on use.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .coco import InstancesEvaluatorBase, _check_tasks, _for_task, _percent, _quiet_stdout, load_coco_results

__all__ = ["LVIS_METRICS", "FIXED_AP_DETS_PER_CLASS", "LVISEvaluator", "evaluate_lvis", "evaluate_lvis_file",
           "limit_detections_per_class"]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# Detections kept per category over the whole dataset by the fixed-AP protocol (Dave et al. 2021).
FIXED_AP_DETS_PER_CLASS = 10_000


def _lvis_numpy_shim() -> None:
    """lvis 0.5.3's ``LVISEval.accumulate`` casts with ``np.float``, removed in numpy 1.24; the
    builtin ``float`` is what that alias meant."""
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]


def limit_detections_per_class(results: Sequence[dict], max_dets_per_class: int) -> list[dict]:
    """Keep the ``max_dets_per_class`` highest-scoring detections of each category, over all
    images (ties keep their input order).

    Raises:
        ValueError: ``max_dets_per_class`` is not positive.
    """
    if max_dets_per_class <= 0:
        raise ValueError(f"max_dets_per_class must be positive, got {max_dets_per_class}")
    by_class: dict[int, list[dict]] = defaultdict(list)
    for det in results:
        by_class[det["category_id"]].append(det)
    kept = []
    for cat in sorted(by_class):
        dets = sorted(by_class[cat], key=lambda d: d["score"], reverse=True)
        if len(dets) < max_dets_per_class:
            logger.debug("category %s has %d < %d detections", cat, len(dets), max_dets_per_class)
        kept.extend(dets[:max_dets_per_class])
    return kept


def evaluate_lvis(lvis_gt: Any, results: Sequence[dict], task: str, *, max_dets_per_image: int = 300,
                  max_dets_per_class: int | None = None) -> dict[str, float]:
    """Score COCO-format detections with ``LVISEval``.

    Args:
        lvis_gt: an ``lvis.LVIS`` or the path of an LVIS ground-truth json.
        results: detections in the COCO results format (not modified).
        task: ``"bbox"`` or ``"segm"``.
        max_dets_per_image: ``LVISResults``' cap per image (300 for LVIS; -1: none).
        max_dets_per_class: when given, the fixed-AP protocol: keep the top detections of each
            category over the dataset and apply no per-image cap (``max_dets_per_image`` is
            ignored).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"}`` in percent; NaN
        where lvis reports -1 and for every metric when there is no detection.
    """
    from lvis import LVIS, LVISEval, LVISResults

    if task not in ("bbox", "segm"):
        raise ValueError(f"evaluate_lvis: task must be 'bbox' or 'segm', got {task!r}")
    _lvis_numpy_shim()
    if not isinstance(lvis_gt, LVIS):
        lvis_gt = LVIS(str(lvis_gt))
    results = _for_task(results, task)
    if max_dets_per_class is not None:
        results = limit_detections_per_class(results, max_dets_per_class)
        max_dets_per_image = -1
    if not results:
        logger.warning("LVIS %s evaluation: no detections; every metric is NaN", task)
        return {m: float("nan") for m in LVIS_METRICS}
    with _quiet_stdout():
        lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=max_dets_per_image), task)
        lvis_eval.params.max_dets = max_dets_per_image  # only shown in lvis' printout
        lvis_eval.run()
    return {m: _percent(float(lvis_eval.results[m])) for m in LVIS_METRICS}


def evaluate_lvis_file(gt_json: str | os.PathLike, results_json: str | os.PathLike,
                       tasks: Sequence[str] = ("bbox",), *, max_dets_per_image: int = 300,
                       max_dets_per_class: int | None = None) -> dict[str, dict[str, float]]:
    """Score a COCO-format results json against an LVIS ground-truth json (``tools/lvis_eval.py``).

    Args:
        gt_json: LVIS v1 ground truth.
        results_json: detections in the COCO results format.
        tasks: subset of ``("bbox", "segm")``.
        max_dets_per_image: per-image cap of standard LVIS evaluation (300).
        max_dets_per_class: when given, the fixed-AP protocol (see :func:`evaluate_lvis`).

    Returns:
        ``{task: {metric: value in percent}}``.

    Raises:
        ValueError: the results file or one of its entries is malformed (both are named).
    """
    from lvis import LVIS

    tasks = _check_tasks(tasks, "evaluate_lvis_file")
    lvis_gt = LVIS(str(gt_json))
    results = load_coco_results(results_json, image_ids=lvis_gt.get_img_ids(),
                                category_ids=lvis_gt.get_cat_ids(), tasks=tasks)
    return {task: evaluate_lvis(lvis_gt, results, task, max_dets_per_image=max_dets_per_image,
                                max_dets_per_class=max_dets_per_class) for task in tasks}


class LVISEvaluator(InstancesEvaluatorBase):
    """LVIS box / mask AP of instance predictions (detectron2's ``LVISEvaluator``), optionally
    with the fixed-AP protocol.

    ``process`` takes the same per-image predictions as :class:`~eva_core.evaluation.COCOEvaluator`
    (contiguous class ``k`` = the k-th category id of the json in sorted order).

    Args:
        dataset_json: the LVIS ground-truth json.
        tasks: ``("bbox", "segm")`` or a subset; None: from the predictions.
        output_dir: rank 0 writes ``lvis_instances_results.json`` there.
        max_dets_per_image: ``LVISResults``' cap per image (300 for LVIS).
        max_dets_per_class: fixed-AP protocol with this many detections per category over the
            dataset (no per-image cap).
        fixed_ap: shorthand for ``max_dets_per_class=10000`` (the LVIS challenge protocol).

    Results: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"},
    "segm": {..}}`` in percent, over every image of the json (LVIS' federated evaluation).
    """

    results_file = "lvis_instances_results.json"

    def __init__(self, dataset_json: str | os.PathLike, tasks: Sequence[str] | None = None,
                 output_dir: str | os.PathLike | None = None, max_dets_per_image: int = 300, *,
                 max_dets_per_class: int | None = None, fixed_ap: bool = False,
                 image_id_key: str = "image_id") -> None:
        if fixed_ap and max_dets_per_class is None:
            max_dets_per_class = FIXED_AP_DETS_PER_CLASS
        if max_dets_per_class is not None and max_dets_per_class <= 0:
            raise ValueError(f"LVISEvaluator: max_dets_per_class must be positive, got {max_dets_per_class}")
        self.max_dets_per_image = int(max_dets_per_image)
        self.max_dets_per_class = max_dets_per_class
        super().__init__(dataset_json, tasks, output_dir, image_id_key=image_id_key)

    def _load_ground_truth(self, path: str) -> Any:
        from lvis import LVIS

        return LVIS(path)

    def _category_ids(self) -> list[int]:
        return sorted(self._gt.get_cat_ids())

    def _score(self, results: list[dict], task: str, image_ids: list[int]) -> dict[str, float]:
        return evaluate_lvis(self._gt, results, task, max_dets_per_image=self.max_dets_per_image,
                             max_dets_per_class=self.max_dets_per_class)
