"""EVA masked image modeling: block masks, frozen CLIP-feature teachers, the MIM model and data."""
from .data import MaskedImageDataset, MIMTransform
from .masking import BlockMaskGenerator
from .model import EvaMIM, negative_cosine_loss, pretraining_cost
from .teacher import CLIP_MEAN, CLIP_STD, ClipTeacher, EvaTeacher, FeatureTeacher, resample_token_grid

__all__ = ["BlockMaskGenerator", "EvaMIM", "negative_cosine_loss", "pretraining_cost", "FeatureTeacher",
           "ClipTeacher", "EvaTeacher", "resample_token_grid", "CLIP_MEAN", "CLIP_STD",
           "MaskedImageDataset", "MIMTransform"]
