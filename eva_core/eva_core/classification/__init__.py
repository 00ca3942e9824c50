"""Image classification transfer: fine-tuning wrapper, linear probe, robustness sets."""
from .datasets import (EVAL_SETS, EvalSetLayoutError, ImageNetA, ImageNetR, ImageNetReaL, ImageNetSketch,
                       ImageNetV2, ImageNetVal, ObjectNet, build_eval_set)
from .linear_probe import LinearProbe, linear_probe
from .model import ImageClassifier, freeze_patch_embedding
from .robustness import evaluate_robustness, evaluate_set, table5_summary

__all__ = ["ImageClassifier", "freeze_patch_embedding", "LinearProbe", "linear_probe", "EVAL_SETS",
           "EvalSetLayoutError", "ImageNetVal", "ImageNetV2", "ImageNetReaL", "ImageNetA", "ImageNetR",
           "ImageNetSketch", "ObjectNet", "build_eval_set", "evaluate_set", "evaluate_robustness",
           "table5_summary"]
