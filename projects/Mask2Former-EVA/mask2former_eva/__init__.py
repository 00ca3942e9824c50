"""Mask2Former-EVA: semantic segmentation with ViT-Adapter + Mask2Former on the EVA encoder.

Deformable attention runs in pure PyTorch (``grid_sample`` per level), so no compiled extension
is needed; see ``docs/recipes/segmentation.md``.
"""
from .criterion import SetCriterion, mask2former_weight_dict
from .matcher import HungarianMatcher
from .ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention", "HungarianMatcher", "SetCriterion",
           "mask2former_weight_dict"]
