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
from .mask2former_head import Mask2FormerHead, semantic_inference
from .pixel_decoder import MSDeformAttnPixelDecoder
from .segmentor import EncoderDecoderMask2Former, build_criterion, semantic_targets
from .transformer_decoder import MaskedAttentionDecoder
from .data import (SegTestTransform, SegTrainTransform, SemSegDataset, ade20k_dataset, coco_stuff164k_dataset,
                   custom_sem_seg_dataset)
from .visualize import colorize, overlay, save_label_png, save_overlay

__all__ = ["MSDeformAttn", "multi_scale_deformable_attention", "HungarianMatcher", "SetCriterion",
           "mask2former_weight_dict", "EVAAdapter", "SpatialPriorModule", "InteractionBlock", "Injector",
           "Extractor", "ConvFFN", "AdapterDeformAttn", "deform_inputs",
           "MSDeformAttnPixelDecoder", "MaskedAttentionDecoder", "Mask2FormerHead", "semantic_inference",
           "EncoderDecoderMask2Former", "build_criterion", "semantic_targets",
           "SemSegDataset", "ade20k_dataset", "coco_stuff164k_dataset", "custom_sem_seg_dataset",
           "SegTrainTransform", "SegTestTransform", "colorize", "overlay", "save_label_png", "save_overlay"]
