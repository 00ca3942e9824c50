"""Mask2Former-EVA: semantic segmentation with ViT-Adapter + Mask2Former on the EVA encoder.

Deformable attention runs in pure PyTorch (``grid_sample`` per level), so no compiled extension
is needed; see ``docs/recipes/segmentation.md``.
"""
from . import layouts  # noqa: F401  (registers the mmseg_beit_adapter checkpoint layout)
from .adapter_modules import (AdapterDeformAttn, ConvFFN, Extractor, Injector, InteractionBlock,
                              SpatialPriorModule, deform_inputs)
from .criterion import SetCriterion, mask2former_weight_dict
from .matcher import HungarianMatcher
from .ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention
from .vit_adapter import EVAAdapter

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention", "HungarianMatcher", "SetCriterion",
           "mask2former_weight_dict", "EVAAdapter", "SpatialPriorModule", "InteractionBlock", "Injector",
           "Extractor", "ConvFFN", "AdapterDeformAttn", "deform_inputs"]
