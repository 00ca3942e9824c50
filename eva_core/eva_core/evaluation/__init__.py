"""Evaluation: the ``DatasetEvaluator`` interface, the one inference loop, task metrics and
result formatting."""
from .classification import ClassificationEvaluator
from .coco import COCOEvaluator
from .evaluator import (DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset,
                        inference_on_datasets)
from .lvis import LVISEvaluator
from .sem_seg import SemSegEvaluator, sem_seg_metrics
from .testing import flatten_results_dict, format_results_table, print_csv_format

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "ClassificationEvaluator", "COCOEvaluator",
           "LVISEvaluator", "inference_context", "inference_on_dataset", "inference_on_datasets",
           "flatten_results_dict", "format_results_table", "print_csv_format"]
__all__ += ["SemSegEvaluator", "sem_seg_metrics"]
