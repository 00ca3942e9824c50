"""Evaluators: the shared ``DatasetEvaluator`` interface and task metrics."""
from .classification import ClassificationEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "ClassificationEvaluator"]
