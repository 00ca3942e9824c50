"""Checkpoint layouts this project registers with ``eva_core.checkpoint.register_layout``.

``hf_vitdet``: Hugging Face transformers' ``VitDetModel`` / ``VitDetBackbone`` state dicts
(``embeddings.position_embeddings``, ``embeddings.projection.*``, ``encoder.layer.{i}.attention.*``)
map onto :class:`vitdet_eva.backbone.ViT` (whose names are detectron2's / EVA-01's). Their full
``qkv.bias`` is split by eva_core's shared renames (the k part cannot change attention).
``detectron2_detector``: a whole detectron2 ViTDet detector (``backbone.net.*`` plus
``backbone.simfp_*``, ``proposal_generator.*``, ``roi_heads.*``, e.g. ``eva_coco_det.pth``): keys keep
their names, so every part loads into :class:`vitdet_eva.meta_arch.GeneralizedRCNN`; eva_core's built-in
``detectron2`` layout reads only the encoder out of such a file (an EVA encoder elsewhere, e.g. a
classifier, initialised from a detector) and stays the layout of files that hold just ``backbone.net.*``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from eva_core.checkpoint import register_layout
from eva_core.checkpoint.layouts import LayoutContext, list_layouts, rename_to_eva_keys

__all__ = ["HF_VITDET_RENAMES", "convert_hf_vitdet", "convert_detectron2_detector"]

#: Hugging Face name fragment -> ours, applied in order to each key
HF_VITDET_RENAMES = (
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.", "blocks."),
    (".attention.", ".attn."),
)


def _is_hf_vitdet(sd: Mapping[str, torch.Tensor]) -> bool:
    return "embeddings.projection.weight" in sd and any(k.startswith("encoder.layer.") for k in sd)


def convert_hf_vitdet(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Rename a transformers ``VitDet*`` state dict to ours (``residual`` conv blocks are refused)."""
    residual = sorted(k for k in sd if ".residual." in k)
    if residual:
        raise ValueError(f"hf_vitdet checkpoint has residual (conv propagation) blocks, e.g. {residual[0]}: "
                         "the EVA encoder has none (build the VitDet config with residual_block_indices=[])")
    out = {}
    for k, v in sd.items():
        for old, new in HF_VITDET_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return rename_to_eva_keys(out, "", ctx)


if "hf_vitdet" not in list_layouts():  # importing twice (reload, two paths) must not fail
    register_layout("hf_vitdet", detect=_is_hf_vitdet, convert=convert_hf_vitdet, priority=30,
                    description="transformers VitDetModel / VitDetBackbone (embeddings.*, encoder.layer.*)")


_DETECTOR_PARTS = ("backbone.simfp_", "proposal_generator.", "roi_heads.")


def _is_detectron2_detector(sd: Mapping[str, torch.Tensor]) -> bool:
    has_encoder = any(k.startswith(("backbone.net.blocks.", "backbone.net.patch_embed.")) for k in sd)
    return has_encoder and any(k.startswith(_DETECTOR_PARTS) for k in sd)


def convert_detectron2_detector(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Keep a detectron2 detector's keys (only eva_core's shared renames apply: a full ``qkv.bias``
    of an upstream ViTDet file becomes ``q_bias`` / ``v_bias``)."""
    return rename_to_eva_keys(sd, "", ctx)


if "detectron2_detector" not in list_layouts():
    # above the built-in detectron2 layout (30), which would keep the encoder only
    register_layout("detectron2_detector", detect=_is_detectron2_detector,
                    convert=convert_detectron2_detector, priority=40,
                    description="a whole detectron2 ViTDet detector (backbone.net.*, backbone.simfp_*, "
                                "proposal_generator.*, roi_heads.*)")
