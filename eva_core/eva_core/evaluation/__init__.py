"""Evaluation: the ``DatasetEvaluator`` interface, the one inference loop, task metrics and
result formatting."""
from .classification import ClassificationEvaluator
from .evaluator import (DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset,
                        inference_on_datasets)
from .testing import flatten_results_dict, format_results_table, print_csv_format

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "ClassificationEvaluator", "inference_context",
           "inference_on_dataset", "inference_on_datasets", "flatten_results_dict",
           "format_results_table", "print_csv_format"]
