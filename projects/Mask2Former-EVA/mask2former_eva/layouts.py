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

Converted backbone keys keep the ``backbone.`` prefix (``backbone.blocks.*``, ``backbone.spm.*``, ...):
the loader then finds the encoder under ``backbone.`` and the adapter keys either as the
segmentor's own ``backbone.*`` parameters (:class:`~mask2former_eva.segmentor.EncoderDecoderMask2Former`)
or, for a bare :class:`EVAAdapter`, as its top-level names; the head's keys count as outside a bare
adapter.

``decode_head.*`` (mmdet's ``Mask2FormerHead`` as the release builds it: ``MSDeformAttnPixelDecoder``
and a ``DetrTransformerDecoder`` of mmcv ``BaseTransformerLayer``s with operation order
cross-attention, norm, self-attention, norm, FFN, norm) map onto
:class:`~mask2former_eva.mask2former_head.Mask2FormerHead` by :data:`HEAD_KEY_RULES`:

=====================================================  ================================================
mmdet (``decode_head.``)                                ours (``decode_head.``)
=====================================================  ================================================
``pixel_decoder.input_convs.{i}.conv`` / ``.gn``        ``pixel_decoder.input_proj.{i}.0`` / ``.1``
``pixel_decoder.level_encoding.weight``                 ``pixel_decoder.level_embed``
``pixel_decoder.encoder.layers.{n}.attentions.0``       ``pixel_decoder.layers.{n}.self_attn``
``pixel_decoder.encoder.layers.{n}.norms.{0,1}``        ``pixel_decoder.layers.{n}.norm{1,2}``
``...layers.{n}.ffns.0.layers.0.0`` / ``.layers.1``     ``...layers.{n}.linear1`` / ``.linear2``
``pixel_decoder.{lateral,output}_convs.{i}.conv/.gn``   ``pixel_decoder.{lateral,output}_convs.{i}.0/.1``
``pixel_decoder.mask_feature``                          same
``transformer_decoder.layers.{n}.attentions.0.attn``    ``transformer_decoder.layers.{n}.cross_attn``
``transformer_decoder.layers.{n}.attentions.1.attn``    ``transformer_decoder.layers.{n}.self_attn``
``transformer_decoder.layers.{n}.norms.{0,1,2}``        ``transformer_decoder.layers.{n}.norm{1,2,3}``
``transformer_decoder.post_norm``                       same
``decoder_input_projs.{i}`` (only when widths differ)   ``transformer_decoder.input_proj.{i}``
``query_embed``, ``query_feat``, ``level_embed``,       ``transformer_decoder.`` + the same name
``cls_embed``, ``mask_embed.{0,2,4}``
``conv_seg.*`` (mmseg BaseDecodeHead's classifier)      dropped with a note: Mask2Former never uses it
=====================================================  ================================================

A ``decode_head.*`` key that no rule covers keeps its name, so the load report lists it as
unexpected rather than losing it.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from eva_core.checkpoint import register_layout
from eva_core.checkpoint.layouts import LayoutContext, list_layouts, rename_to_eva_keys

__all__ = ["MMSEG_BACKBONE_PREFIX", "MMSEG_HEAD_PREFIX", "ADAPTER_KEY_PREFIXES", "HEAD_KEY_RULES",
           "convert_mmseg_beit_adapter", "is_mmseg_beit_adapter", "mmdet_head_key_to_ours"]

MMSEG_BACKBONE_PREFIX = "backbone."
MMSEG_HEAD_PREFIX = "decode_head."

#: ``(pattern, replacement)`` applied in order to a ``decode_head.``-relative mmdet key; the first
#: matching rule wins (see the module docstring's table)
HEAD_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^pixel_decoder\.input_convs\.(\d+)\.conv\.", r"pixel_decoder.input_proj.\1.0."),
    (r"^pixel_decoder\.input_convs\.(\d+)\.gn\.", r"pixel_decoder.input_proj.\1.1."),
    (r"^pixel_decoder\.level_encoding\.weight$", r"pixel_decoder.level_embed"),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.0\.", r"pixel_decoder.layers.\1.self_attn."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.", r"pixel_decoder.layers.\1.norm1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", r"pixel_decoder.layers.\1.norm2."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.",
     r"pixel_decoder.layers.\1.linear1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.",
     r"pixel_decoder.layers.\1.linear2."),
    (r"^pixel_decoder\.(lateral|output)_convs\.(\d+)\.conv\.", r"pixel_decoder.\1_convs.\2.0."),
    (r"^pixel_decoder\.(lateral|output)_convs\.(\d+)\.gn\.", r"pixel_decoder.\1_convs.\2.1."),
    (r"^pixel_decoder\.mask_feature\.", r"pixel_decoder.mask_feature."),
    (r"^transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.",
     r"transformer_decoder.layers.\1.cross_attn."),
    (r"^transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.",
     r"transformer_decoder.layers.\1.self_attn."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.0\.", r"transformer_decoder.layers.\1.norm1."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.1\.", r"transformer_decoder.layers.\1.norm2."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.2\.", r"transformer_decoder.layers.\1.norm3."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.",
     r"transformer_decoder.layers.\1.linear1."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.",
     r"transformer_decoder.layers.\1.linear2."),
    (r"^transformer_decoder\.post_norm\.", r"transformer_decoder.post_norm."),
    (r"^decoder_input_projs\.(\d+)\.", r"transformer_decoder.input_proj.\1."),
    (r"^(query_embed|query_feat|level_embed|cls_embed|mask_embed)\.", r"transformer_decoder.\1."),
)
_HEAD_RULES = tuple((re.compile(p), r) for p, r in HEAD_KEY_RULES)
#: mmseg ``BaseDecodeHead``'s 1x1 classifier: built by the base class, never called by Mask2Former
UNUSED_HEAD_PREFIXES = ("conv_seg.",)

#: first name parts of the adapter's own parameters (the rest of ``backbone.*`` is the encoder)
ADAPTER_KEY_PREFIXES = ("level_embed", "spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")


def is_mmseg_beit_adapter(sd: Mapping[str, torch.Tensor]) -> bool:
    """An mmseg segmentor whose backbone is a BEiTAdapter (interaction blocks + encoder blocks)."""
    return (f"{MMSEG_BACKBONE_PREFIX}level_embed" in sd
            and any(k.startswith(f"{MMSEG_BACKBONE_PREFIX}interactions.") for k in sd)
            and any(k.startswith(f"{MMSEG_BACKBONE_PREFIX}blocks.") for k in sd))


def _is_adapter_key(name: str) -> bool:
    return name == "level_embed" or name.startswith(ADAPTER_KEY_PREFIXES[1:])


def mmdet_head_key_to_ours(name: str) -> str | None:
    """Our :class:`Mask2FormerHead` name of a ``decode_head.``-relative mmdet key.

    Returns:
        The mapped name; ``None`` for a key that Mask2Former never uses (``conv_seg.*``); the name
        unchanged when no rule covers it (so that it is reported as unexpected, not lost).
    """
    if name.startswith(UNUSED_HEAD_PREFIXES):
        return None
    for pattern, replacement in _HEAD_RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


def convert_mmseg_beit_adapter(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Map an mmseg BEiTAdapter + Mask2FormerHead checkpoint to ``EncoderDecoderMask2Former`` names.

    Returns:
        Encoder tensors under ``backbone.`` with eva_core's renames, adapter tensors under
        ``backbone.`` with their own names, ``decode_head.*`` mapped by :data:`HEAD_KEY_RULES`, and
        any other key unchanged (notes say what was mapped, dropped or left over).
    """
    encoder: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    outside: dict[str, int] = {}
    head_mapped, head_dropped = 0, []
    for k, v in sd.items():
        if k.startswith(MMSEG_HEAD_PREFIX):
            name = mmdet_head_key_to_ours(k[len(MMSEG_HEAD_PREFIX):])
            if name is None:
                head_dropped.append(k)
            else:
                out[MMSEG_HEAD_PREFIX + name] = v
                head_mapped += 1
            continue
        if not k.startswith(MMSEG_BACKBONE_PREFIX):
            top = k.split(".")[0]
            outside[top] = outside.get(top, 0) + 1
            out[k] = v
            continue
        name = k[len(MMSEG_BACKBONE_PREFIX):]
        if _is_adapter_key(name):
            out[MMSEG_BACKBONE_PREFIX + name] = v
        else:
            encoder[name] = v
    for k, v in rename_to_eva_keys(encoder, "", ctx).items():
        out[MMSEG_BACKBONE_PREFIX + k] = v
    if head_mapped:
        ctx.notes.append(f"mmseg_beit_adapter: decode_head.* ({head_mapped}) mapped from mmdet's "
                         "Mask2FormerHead names to Mask2FormerHead's")
    if head_dropped:
        ctx.notes.append(f"mmseg_beit_adapter: dropped {head_dropped} (mmseg BaseDecodeHead's classifier, "
                         "unused by Mask2Former)")
    if outside:
        parts = ", ".join(f"{top}.* ({n})" for top, n in sorted(outside.items()))
        ctx.notes.append(f"mmseg_beit_adapter: {sum(outside.values())} keys outside backbone.* / "
                         f"decode_head.* kept as they are: {parts}")
    return out


if "mmseg_beit_adapter" not in list_layouts():  # importing twice (reload, two paths) must not fail
    register_layout("mmseg_beit_adapter", detect=is_mmseg_beit_adapter, convert=convert_mmseg_beit_adapter,
                    priority=40,
                    description="mmseg EncoderDecoderMask2Former with EVA-01's BEiTAdapter backbone "
                                "(backbone.blocks.*, backbone.spm.*, backbone.interactions.*)")
