"""A fake research project's checkpoint layout, registered from outside eva_core (as ``projects/NAME`` would).

The project trains a video model on the EVA encoder. Its checkpoints keep the encoder under ``net.``,
call the blocks ``layers.N`` and the patch embedding ``tubelet_embed``, whose kernel is 3-D
(``[D, 3, T, p, p]``, inflated from an image kernel with :func:`eva_core.layers.inflate_patch_embed_3d`).
Importing this module registers the layout; nothing under ``eva_core/`` knows about it.
"""
from __future__ import annotations

import torch

from eva_core.checkpoint import LayoutContext, register_layout, rename_to_eva_keys
from eva_core.layers import collapse_patch_embed_3d, inflate_patch_embed_3d

LAYOUT = "toy_video_project"


def detect(sd: dict[str, torch.Tensor]) -> bool:
    return "net.tubelet_embed.weight" in sd


@register_layout(LAYOUT, detect=detect, priority=50,
                 description="toy video project: net.layers.N, tubelet_embed")
def convert(sd: dict[str, torch.Tensor], ctx: LayoutContext) -> dict[str, torch.Tensor]:
    """Project names -> eva_core names; the 3-D kernel is collapsed over time for an image encoder."""
    renamed = {}
    for k, v in sd.items():
        if k.startswith("net.layers."):
            k = "net.blocks." + k[len("net.layers."):]
        elif k.startswith("net.tubelet_embed."):
            k = "net.patch_embed.proj." + k[len("net.tubelet_embed."):]
            target = (ctx.model_shapes or {}).get("patch_embed.proj.weight")
            if v.ndim == 5 and (target is None or len(target) == 4):
                ctx.notes.append(f"{k}: tubelet kernel of {v.shape[2]} frames collapsed to an image kernel")
                v = collapse_patch_embed_3d(v)
        renamed[k] = v
    return rename_to_eva_keys(renamed, "net.", ctx)


def to_project_checkpoint(encoder_state: dict[str, torch.Tensor], tubelet: int) -> dict[str, torch.Tensor]:
    """What the project's trainer would save after starting from an eva_core image encoder."""
    out = {}
    for k, v in encoder_state.items():
        if k.startswith("blocks."):
            k = "layers." + k[len("blocks."):]
        elif k == "patch_embed.proj.weight":
            k, v = "tubelet_embed.weight", inflate_patch_embed_3d(v, tubelet)
        elif k == "patch_embed.proj.bias":
            k = "tubelet_embed.bias"
        out["net." + k] = v.clone()
    out["video_head.weight"] = torch.randn(4, 8)  # a part of the project model outside the encoder
    return out
