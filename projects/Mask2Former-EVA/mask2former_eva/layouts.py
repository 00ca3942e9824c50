"""Checkpoint layouts this project registers with ``eva_core.checkpoint.register_layout``.

``mmseg_beit_adapter``: the released ``eva_sem_seg_mask2former_*.pth`` files (and any mmseg
``EncoderDecoderMask2Former`` with EVA-01's / ViT-Adapter's ``BEiTAdapter`` backbone). Their
backbone lives under ``backbone.``:

* encoder keys (BEiT names, which are ours): ``backbone.cls_token``, ``backbone.pos_embed``,
  ``backbone.patch_embed.proj.*``, ``backbone.blocks.{i}.{norm1,attn.q_bias,attn.v_bias,attn.qkv.weight,
  attn.proj,norm2,mlp.fc1,mlp.fc2,gamma_1,gamma_2}`` (+ ``attn.relative_position_bias_table`` /
  ``rel_pos_bias.*`` in the rel-pos variants) map to ``encoder.*`` of :class:`EVAAdapter` through
  eva_core's shared renames (recomputed ``relative_position_index`` buffers are dropped);
* adapter keys keep their names: ``backbone.level_embed``, ``backbone.spm.*``,
  ``backbone.interactions.{k}.{injector,extractor,extra_extractors.{0,1}}.*``, ``backbone.up.*``,
  ``backbone.norm{1..4}.*``.

Keys outside ``backbone.`` (``decode_head.*``: the Mask2Former head) are passed through under their
own names and counted in the load report's notes; the loader then reports them as outside the
model instead of loading them into the backbone.
"""
from __future__ import annotations

from typing import Mapping

import torch

from eva_core.checkpoint import register_layout
from eva_core.checkpoint.layouts import LayoutContext, list_layouts, rename_to_eva_keys

__all__ = ["MMSEG_BACKBONE_PREFIX", "ADAPTER_KEY_PREFIXES", "convert_mmseg_beit_adapter",
           "is_mmseg_beit_adapter"]

MMSEG_BACKBONE_PREFIX = "backbone."

#: first name parts of the adapter's own parameters (the rest of ``backbone.*`` is the encoder)
ADAPTER_KEY_PREFIXES = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")


def is_mmseg_beit_adapter(sd: Mapping[str, torch.Tensor]) -> bool:
    """An mmseg segmentor whose backbone is a BEiTAdapter (interaction blocks + encoder blocks)."""
    return (f"{MMSEG_BACKBONE_PREFIX}level_embed" in sd
            and any(k.startswith(f"{MMSEG_BACKBONE_PREFIX}interactions.") for k in sd)
            and any(k.startswith(f"{MMSEG_BACKBONE_PREFIX}blocks.") for k in sd))


def _is_adapter_key(name: str) -> bool:
    return name == "level_embed" or name.startswith(ADAPTER_KEY_PREFIXES[1:])


def convert_mmseg_beit_adapter(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Map ``backbone.*`` of an mmseg BEiTAdapter checkpoint to :class:`EVAAdapter` names.

    Returns:
        Encoder tensors under ``encoder.``, adapter tensors under their own names, and every key
        outside ``backbone.`` unchanged (a note says how many and under which top-level names).
    """
    encoder: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    outside: dict[str, int] = {}
    for k, v in sd.items():
        if not k.startswith(MMSEG_BACKBONE_PREFIX):
            top = k.split(".")[0]
            outside[top] = outside.get(top, 0) + 1
            out[k] = v
            continue
        name = k[len(MMSEG_BACKBONE_PREFIX):]
        if _is_adapter_key(name):
            out[name] = v
        else:
            encoder[name] = v
    for k, v in rename_to_eva_keys(encoder, "", ctx).items():
        out[f"encoder.{k}"] = v
    if outside:
        parts = ", ".join(f"{top}.* ({n})" for top, n in sorted(outside.items()))
        ctx.notes.append(f"mmseg_beit_adapter: {sum(outside.values())} keys outside backbone.* are not "
                         f"part of the EVAAdapter backbone: {parts}")
    return out


if "mmseg_beit_adapter" not in list_layouts():  # importing twice (reload, two paths) must not fail
    register_layout("mmseg_beit_adapter", detect=is_mmseg_beit_adapter, convert=convert_mmseg_beit_adapter,
                    priority=40,
                    description="mmseg EncoderDecoderMask2Former with EVA-01's BEiTAdapter backbone "
                                "(backbone.blocks.*, backbone.spm.*, backbone.interactions.*)")
