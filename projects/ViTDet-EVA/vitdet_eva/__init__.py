"""ViTDet-EVA: detectron2's ViTDet on the EVA encoder (``projects/ViTDet-EVA/README.md``).

Importing the package registers its checkpoint layouts (``hf_vitdet``).
"""
from . import layouts  # noqa: F401  (registers checkpoint layouts)
from .backbone import Backbone, LastLevelMaxPool, SimpleFeaturePyramid, ViT
from .layers import Conv2d, LayerNorm, ShapeSpec, get_norm
from .structures import ImageList

__all__ = ["Backbone", "ViT", "SimpleFeaturePyramid", "LastLevelMaxPool", "Conv2d", "LayerNorm", "ShapeSpec",
           "get_norm", "ImageList"]
