"""Image classification transfer: fine-tuning wrapper, linear probe, robustness sets."""
from .model import ImageClassifier, freeze_patch_embedding

__all__ = ["ImageClassifier", "freeze_patch_embedding"]
