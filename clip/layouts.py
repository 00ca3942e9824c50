"""Checkpoint layouts of whole CLIP models, registered with eva_core's layout registry.

eva_core's built-in ``eva_clip`` / ``open_clip`` layouts read only the vision tower (text keys are
ignored). These read a whole :class:`clip.model.EvaCLIP` (``docs/recipes/clip.md#checkpoint-layouts``):

* ``eva_clip_release``: the released EVA-CLIP files: vision under ``visual.`` (EVA names, with or
  without the later ``inner_attn_ln`` / ``ffn_ln`` and split ``q_proj`` / ``k_proj`` / ``v_proj``),
  OpenAI text names at the top level, ``logit_scale``.
* ``eva_clip_model``: ours (:class:`clip.model.EvaCLIP`'s own ``state_dict``: ``visual.*`` EVA names,
  ``text.*``, ``logit_scale``), e.g. a training checkpoint.
* ``open_clip_eva``: open_clip's ``EVA01-g-14`` family: timm trunk under ``visual.trunk.``, text under
  ``text.`` (``CustomTextCLIP``), ``logit_scale``.
* ``openai_clip_text``: an OpenAI CLIP file: its text tower is kept, its ViT / ResNet vision tower
  (``visual.conv1`` ...) has no place in EVA and is left out with a note.

Torch is imported here, so this module is not imported by ``clip/__init__.py``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from eva_core.checkpoint.layouts import LayoutContext, register_layout, rename_to_eva_keys

__all__ = ["TEXT_KEYS", "is_text_key", "LAYOUT_NAMES"]

#: top-level names of OpenAI CLIP's text tower (open_clip's TextTransformer under ``text.``)
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")

LAYOUT_NAMES = ("eva_clip_model", "eva_clip_release", "open_clip_eva", "openai_clip_text")

# above eva_core's prefixed layouts (20-30): these files would otherwise load as vision-only
_PRIORITY = 40


def is_text_key(key: str) -> bool:
    """True for an OpenAI CLIP text-tower key (top level, no prefix)."""
    return key.startswith(TEXT_KEYS)


def _has_text(sd: Mapping[str, torch.Tensor], prefix: str = "") -> bool:
    return f"{prefix}token_embedding.weight" in sd and f"{prefix}positional_embedding" in sd


def _has_eva_vision(sd: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith((prefix + "blocks.", prefix + "patch_embed.")) for k in sd)


def _fuse_split_qkv(sd: dict[str, torch.Tensor]) -> int:
    """EVA-CLIP's ``subln`` attention stores ``q_proj`` / ``k_proj`` / ``v_proj``; EVA fuses them ``qkv``."""
    fused = 0
    for k in [k for k in sd if k.endswith("attn.q_proj.weight")]:
        base = k[: -len("q_proj.weight")]
        parts = [base + f"{p}_proj.weight" for p in "qkv"]
        absent = [p for p in parts if p not in sd]
        if absent:
            raise ValueError(f"EVA-CLIP checkpoint: {k} present but {absent} missing "
                             "(expected q/k/v projections)")
        sd[base + "qkv.weight"] = torch.cat([sd.pop(p) for p in parts], dim=0)
        fused += 1
    return fused


def _check_inner_norm(vision: Mapping[str, torch.Tensor], ctx: LayoutContext) -> None:
    """A file with ``inner_attn_ln`` / ``ffn_ln`` needs a tower built with those norms: say so, by name."""
    if ctx.model_shapes is None:
        return
    for ours, arg in (("attn.norm.", "attn_inner_norm"), ("mlp.norm.", "mlp_norm")):
        in_file = next((k for k in vision if ours in k), None)
        in_model = any(ours in k for k in ctx.model_shapes)
        if in_file and not in_model:
            theirs = "inner_attn_ln" if arg == "attn_inner_norm" else "ffn_ln"
            raise ValueError(
                f"EVA-CLIP checkpoint has {theirs} ({in_file}) but the vision tower was built without it: "
                f"build it with vision_cfg={{'{arg}': True, ...}} (e.g. create_eva_clip(name, "
                f"vision_cfg={{'{arg}': True}}))")


def _vision(sd: Mapping[str, torch.Tensor], prefix: str, ctx: LayoutContext) -> dict[str, torch.Tensor]:
    vision = {k: v for k, v in sd.items() if k.startswith(prefix)}
    out = rename_to_eva_keys(vision, prefix, ctx)
    fused = _fuse_split_qkv(out)
    if fused:
        ctx.notes.append(f"q_proj/k_proj/v_proj fused into qkv in {fused} blocks")
    _check_inner_norm(out, ctx)
    return {"visual." + k: v for k, v in out.items()}


def _detect_release(sd: Mapping[str, torch.Tensor]) -> bool:
    return _has_eva_vision(sd, "visual.") and _has_text(sd)


@register_layout("eva_clip_release", detect=_detect_release, priority=_PRIORITY,
                 description="released EVA-CLIP: EVA vision under visual., OpenAI text names, logit_scale")
def convert_eva_clip_release(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Released EVA-CLIP -> :class:`clip.model.EvaCLIP` names (``visual.*``, ``text.*``, ``logit_scale``)."""
    out = _vision(sd, "visual.", ctx)
    other = []
    for k, v in sd.items():
        if k.startswith("visual."):
            continue
        if is_text_key(k):
            out["text." + k] = v
        elif k == "logit_scale":
            out[k] = v
        elif k != "attn_mask":  # a causal-mask buffer some exports save; the text tower rebuilds it
            other.append(k)
    if other:
        # kept so that the loader lists them as unexpected instead of losing them silently
        out.update({k: sd[k] for k in other})
    return out


def _detect_ours(sd: Mapping[str, torch.Tensor]) -> bool:
    return _has_eva_vision(sd, "visual.") and _has_text(sd, "text.")


@register_layout("eva_clip_model", detect=_detect_ours, priority=_PRIORITY,
                 description="clip.model.EvaCLIP: EVA vision under visual., open_clip text under text.")
def convert_eva_clip_model(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Our own names; the vision part still goes through the EVA renames and the inner-norm check."""
    out = _vision(sd, "visual.", ctx)
    out.update({k: v for k, v in sd.items() if not k.startswith("visual.")})
    return out


def _detect_open_clip(sd: Mapping[str, torch.Tensor]) -> bool:
    return _has_eva_vision(sd, "visual.trunk.") and _has_text(sd, "text.")


@register_layout("open_clip_eva", detect=_detect_open_clip, priority=_PRIORITY,
                 description="open_clip EVA01 family: timm trunk under visual.trunk., text under text.")
def convert_open_clip_eva(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """open_clip ``CustomTextCLIP`` with a timm EVA trunk -> :class:`clip.model.EvaCLIP` names."""
    out = _vision(sd, "visual.trunk.", ctx)
    for k, v in sd.items():
        if not k.startswith("visual.trunk."):
            out[k] = v  # text.* and logit_scale already carry our names; anything else shows as unexpected
    return out


def _detect_openai_text(sd: Mapping[str, torch.Tensor]) -> bool:
    return _has_text(sd) and "transformer.resblocks.0.attn.in_proj_weight" in sd \
        and not _has_eva_vision(sd, "visual.")


@register_layout("openai_clip_text", detect=_detect_openai_text, priority=_PRIORITY,
                 description="OpenAI CLIP text tower (top-level token_embedding, transformer.resblocks.*)")
def convert_openai_text(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (or open_clip ``CLIP``) file -> ``text.*``, ``logit_scale``; its ViT is left out."""
    out: dict[str, torch.Tensor] = {}
    left = []
    for k, v in sd.items():
        if is_text_key(k):
            out["text." + k] = v
        elif k == "logit_scale":
            out[k] = v
        elif k.startswith("visual."):
            left.append(k)
        elif k not in ("attn_mask", "input_resolution", "context_length", "vocab_size"):
            out[k] = v  # unknown: reported as unexpected by the loader
    if left:
        ctx.notes.append(f"{len(left)} visual.* keys left out (an OpenAI vision tower is not an EVA encoder)")
    return out
