"""Checkpoint key layouts of EVA encoders and the model-free conversions between them.

Layouts recognised (REFERENCE.md section 1 and 4):

* ``eva``: ours, timm's ``Eva`` and the official EVA-01 classification files (``fc_norm``/``head``);
* ``eva_mim``: EVA-01 MIM pre-training (``mask_token``, ``lm_head.*``, final ``norm``);
* ``eva_clip``: EVA-CLIP vision tower under ``visual.`` (``attn.inner_attn_ln``, ``mlp.ffn_ln``);
* ``open_clip``: open_clip's timm trunk under ``visual.trunk.``;
* ``detectron2``: ViTDet backbones under ``backbone.net.``.

Any of them may be wrapped in ``model_ema`` / ``model`` / ``module`` / ``state_dict`` (DeepSpeed
files use ``module`` and store fp16 tensors).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..models.pos_embed import resample_patch_embed, resample_pos_embed_grid

__all__ = [
    "WRAPPER_KEYS",
    "LAYOUT_PREFIXES",
    "unwrap_state_dict",
    "detect_layout",
    "to_eva_layout",
    "split_pos_embed_grid",
    "resample_state_dict",
    "convert_state_dict",
]

#: wrapper keys in the order they are tried (EMA weights first, as timm does)
WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")

#: key prefix of each foreign layout
LAYOUT_PREFIXES = {"open_clip": "visual.trunk.", "eva_clip": "visual.", "detectron2": "backbone.net."}

# EVA-CLIP / EVA-02 names -> ours (timm uses the same mapping in its checkpoint filter)
_RENAMES = (("attn.inner_attn_ln.", "attn.norm."), ("mlp.ffn_ln.", "mlp.norm."))

# buffers that some layouts save but that are recomputed from the grid
_DROP_SUFFIXES = ("relative_position_index", "attn.k_bias")


def unwrap_state_dict(obj: Any, *, use_ema: bool = True, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` dict inside a checkpoint object.

    Args:
        obj: what ``load_file`` returned.
        use_ema: prefer ``model_ema`` over ``model`` when both are present.
        source: file name used in error messages.

    Raises:
        ValueError: no tensor dict could be found; the message lists the top-level keys.
    """
    seen = 0
    while isinstance(obj, Mapping) and seen < 4:
        keys = [k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)]
        if not use_ema:
            keys = [k for k in keys if k != "model_ema"] or keys
        if not keys:
            break
        obj = obj[keys[0]]
        seen += 1
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:20]} "
                         f"(expected weights, possibly under one of {WRAPPER_KEYS})")
    return tensors


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Name of the layout of an unwrapped state dict (see the module docstring)."""
    for name in ("open_clip", "detectron2", "eva_clip"):
        p = LAYOUT_PREFIXES[name]
        if any(k.startswith(p + "blocks.") or k == p + "pos_embed" or k.startswith(p + "patch_embed.")
               for k in sd):
            return name
    if "mask_token" in sd or any(k.startswith("lm_head.") for k in sd):
        return "eva_mim"
    return "eva"


def to_eva_layout(
    sd: Mapping[str, torch.Tensor], prefix: str | None = None
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Map a state dict to our key names (no shape changes).

    Args:
        sd: unwrapped state dict.
        prefix: key prefix to strip; ``None`` detects it from the layout, ``""`` strips nothing.

    Returns:
        ``(state_dict, layout, notes)``; keys outside the prefix are left out (noted).
    """
    layout = detect_layout(sd)
    if prefix is None:
        prefix = LAYOUT_PREFIXES.get(layout, "")
    notes: list[str] = []
    out: dict[str, torch.Tensor] = {}
    outside = 0
    for k, v in sd.items():
        if prefix:
            if not k.startswith(prefix):
                outside += 1
                continue
            k = k[len(prefix):]
        if k.endswith(_DROP_SUFFIXES):
            continue
        for old, new in _RENAMES:
            k = k.replace(old, new)
        if k.endswith("attn.qkv.bias"):
            # layouts with a full qkv bias: EVA keeps q and v, the k bias is fixed at zero
            q, kb, vb = v.chunk(3)
            if kb.abs().max() > 0:
                notes.append(f"{k}: non-zero k bias dropped (EVA attention has no k bias)")
            out[k.replace("qkv.bias", "q_bias")] = q
            out[k.replace("qkv.bias", "v_bias")] = vb
            continue
        out[k] = v
    if outside:
        notes.append(f"{outside} keys outside prefix {prefix!r} ignored")
    return out, layout, notes


def split_pos_embed_grid(pos_embed: torch.Tensor, name: str = "pos_embed") -> tuple[int, tuple[int, int]]:
    """``(prefix_tokens, (H, W))`` of a ``[1, P + H*W, C]`` position table with a square grid.

    Raises:
        ValueError: neither ``len`` nor ``len - 1`` is a square number.
    """
    n = pos_embed.shape[1]
    for prefix in (0, 1):
        side = math.isqrt(n - prefix)
        if side * side == n - prefix and side > 0:
            return prefix, (side, side)
    raise ValueError(f"{name}: {n} tokens is neither a square grid nor a square grid plus a CLS slot "
                     f"(shape {tuple(pos_embed.shape)})")


def resample_state_dict(
    sd: dict[str, torch.Tensor],
    *,
    patch_size: int | None = None,
    grid_size: tuple[int, int] | None = None,
) -> list[str]:
    """Resample the patch kernel and the absolute position grid in place (bicubic, timm's helpers).

    Args:
        sd: state dict in our layout.
        patch_size: new patch kernel side (e.g. 16 for the ``eva_psz14to16`` layout).
        grid_size: new position grid ``(H, W)`` (e.g. ``(14, 14)`` for 224 / 16).

    Returns:
        Notes describing what changed.
    """
    notes = []
    w = sd.get("patch_embed.proj.weight")
    if patch_size is not None and w is not None and tuple(w.shape[-2:]) != (patch_size, patch_size):
        sd["patch_embed.proj.weight"] = resample_patch_embed(
            w.float(), [patch_size, patch_size], interpolation="bicubic", antialias=True).to(w.dtype)
        notes.append(f"patch_embed.proj.weight: kernel {tuple(w.shape[-2:])} -> {(patch_size, patch_size)}")
    pos = sd.get("pos_embed")
    if grid_size is not None and pos is not None:
        prefix, old = split_pos_embed_grid(pos)
        if tuple(old) != tuple(grid_size):
            sd["pos_embed"] = resample_pos_embed_grid(pos.float(), grid_size, num_prefix_tokens=prefix,
                                                      old_grid=old).to(pos.dtype)
            notes.append(f"pos_embed: grid {old} -> {tuple(grid_size)}")
    return notes


def convert_state_dict(
    obj: Any,
    *,
    prefix: str | None = None,
    patch_size: int | None = None,
    img_size: int | None = None,
    use_ema: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Unwrap, rename to our layout and optionally resample (what ``tools/convert_checkpoint.py`` does).

    ``img_size`` sets the position grid to ``img_size // patch`` where ``patch`` is ``patch_size``
    or the checkpoint's kernel size. Pre-training-only keys (``mask_token``, ``lm_head``) are kept.
    """
    sd = unwrap_state_dict(obj, use_ema=use_ema)
    sd, layout, notes = to_eva_layout(sd, prefix)
    grid = None
    if img_size is not None:
        w = sd.get("patch_embed.proj.weight")
        p = patch_size or (w.shape[-1] if w is not None else None)
        if p is None:
            raise ValueError("img_size given but the checkpoint has no patch_embed.proj.weight and no patch_size")
        if img_size % p:
            raise ValueError(f"img_size {img_size} is not a multiple of patch size {p}")
        grid = (img_size // p, img_size // p)
    notes += resample_state_dict(sd, patch_size=patch_size, grid_size=grid)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd, layout, notes
