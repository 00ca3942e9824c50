"""ViTDet-EVA: detectron2's ViTDet on the EVA encoder (``projects/ViTDet-EVA/README.md``).

Importing the package registers its checkpoint layouts (``hf_vitdet``).
"""
from . import layouts  # noqa: F401  (registers checkpoint layouts)
from .anchor_generator import DefaultAnchorGenerator
from .backbone import Backbone, LastLevelMaxPool, SimpleFeaturePyramid, ViT
from .box_head import FastRCNNConvFCHead
from .box_regression import Box2BoxTransform
from .cascade_rcnn import CascadeROIHeads
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .layers import Conv2d, LayerNorm, ShapeSpec, get_norm
from .mask_head import (MaskRCNNConvUpsampleHead, mask_rcnn_inference, mask_rcnn_loss, maskness,
                        maskness_rescore, paste_masks_in_image)
from .matcher import Matcher
from .meta_arch import GeneralizedRCNN
from .poolers import ROIPooler
from .postprocessing import detector_postprocess
from .rpn import RPN, StandardRPNHead, find_top_rpn_proposals
from .sampling import subsample_labels
from .soft_nms import batched_soft_nms, soft_nms
from .structures import ImageList, Instances

__all__ = ["Backbone", "ViT", "SimpleFeaturePyramid", "LastLevelMaxPool", "Conv2d", "LayerNorm", "ShapeSpec",
           "get_norm", "ImageList", "Instances", "Box2BoxTransform", "DefaultAnchorGenerator", "Matcher",
           "subsample_labels", "StandardRPNHead", "RPN", "find_top_rpn_proposals"]
__all__ += ["ROIPooler", "FastRCNNConvFCHead", "FastRCNNOutputLayers", "fast_rcnn_inference",
            "MaskRCNNConvUpsampleHead", "mask_rcnn_loss", "mask_rcnn_inference", "paste_masks_in_image",
            "CascadeROIHeads"]
__all__ += ["soft_nms", "batched_soft_nms", "maskness", "maskness_rescore"]
__all__ += ["GeneralizedRCNN", "detector_postprocess"]
