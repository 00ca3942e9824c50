"""Export :class:`~clip.model.EvaCLIP` weights to open_clip's layout and to the released EVA-CLIP layout.

open_clip's ``EVA01-g-14`` is a ``CustomTextCLIP``: a timm ``Eva`` trunk (``eva_giant_patch14_224``,
CLS pooling, its classifier ``head`` as the projection) under ``visual.trunk.``, the text tower under
``text.``, and ``logit_scale`` (``docs/recipes/clip.md#open_clip-export``). Our vision tower has timm's
parameter names, so the export is a prefix change. A model of another size gets a timm trunk
registered under a name of its own (:func:`register_timm_trunk`) and an open_clip config
(:func:`register_open_clip_config`), so ``open_clip.create_model(name)`` builds its exact twin.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import open_clip
import timm
import torch
from timm.models import register_model
from timm.models.eva import Eva as TimmEva

from .eva_clip import EvaCLIP

__all__ = ["to_open_clip_state_dict", "to_released_state_dict", "open_clip_model_config",
           "register_timm_trunk", "register_open_clip_config", "timm_trunk_kwargs"]

# our Eva argument -> timm Eva argument; anything else in vision_cfg cannot be expressed in open_clip
_TIMM_ARGS = {"img_size": "img_size", "patch_size": "patch_size", "embed_dim": "embed_dim", "depth": "depth",
              "num_heads": "num_heads", "mlp_ratio": "mlp_ratio", "attn_inner_norm": "scale_attn_inner",
              "mlp_norm": "scale_mlp", "drop_path_rate": "drop_path_rate", "grad_checkpointing": None,
              "attn_impl": None}
# the released EVA-CLIP names of the norms our Eva calls attn.norm / mlp.norm
_RELEASE_RENAMES = ((".attn.norm.", ".attn.inner_attn_ln."), (".mlp.norm.", ".mlp.ffn_ln."))
_OPEN_CLIP_TEXT = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value")
_EVA_G_TIMM = dict(img_size=224, patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)


def to_open_clip_state_dict(model: EvaCLIP) -> dict[str, torch.Tensor]:
    """State dict in open_clip's ``CustomTextCLIP`` + timm-trunk layout (``visual.trunk.*``, ``text.*``)."""
    out = {}
    for k, v in model.state_dict().items():
        out[("visual.trunk." + k[len("visual."):]) if k.startswith("visual.") else k] = v.detach().clone()
    return out


def to_released_state_dict(model: EvaCLIP) -> dict[str, torch.Tensor]:
    """State dict in the released EVA-CLIP layout: ``visual.*`` (``inner_attn_ln`` / ``ffn_ln`` names),
    OpenAI text names at the top level, ``logit_scale``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("visual."):
            for ours, theirs in _RELEASE_RENAMES:
                k = k.replace(ours, theirs)
        elif k.startswith("text."):
            k = k[len("text."):]
        out[k] = v.detach().clone()
    return out


def timm_trunk_kwargs(vision_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm ``Eva`` arguments of the same tower.

    Raises:
        ValueError: an argument open_clip's timm trunk cannot express (named).
    """
    bad = sorted(set(vision_cfg) - set(_TIMM_ARGS))
    if bad:
        raise ValueError(f"vision_cfg {bad} has no timm Eva equivalent: the model cannot be exported to "
                         "open_clip")
    return {_TIMM_ARGS[k]: v for k, v in vision_cfg.items() if _TIMM_ARGS[k] is not None}


def register_timm_trunk(name: str, vision_cfg: dict[str, Any]) -> str:
    """Register ``name`` in timm as an ``Eva`` with our tower's shape (idempotent for the same shape)."""
    kwargs = timm_trunk_kwargs(vision_cfg)

    def entrypoint(pretrained: bool = False, **overrides: Any) -> TimmEva:
        if pretrained:
            raise ValueError(f"timm model {name!r} is an EVA-CLIP export target without pretrained weights")
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            overrides.pop(k, None)
        return TimmEva(**{**kwargs, **overrides})

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint._eva_clip_kwargs = kwargs
    existing = getattr(sys.modules[__name__], name, None)
    if existing is not None and getattr(existing, "_eva_clip_kwargs", None) == kwargs:
        return name
    if name in timm.list_models() and existing is None:
        raise ValueError(f"timm already has a model called {name!r}; pick another trunk name")
    setattr(sys.modules[__name__], name, entrypoint)
    register_model(entrypoint)
    return name


def _is_eva_g(vision_cfg: dict[str, Any]) -> bool:
    return {k: vision_cfg.get(k) for k in _EVA_G_TIMM} == _EVA_G_TIMM and not (
        vision_cfg.get("attn_inner_norm") or vision_cfg.get("mlp_norm"))


def open_clip_model_config(model: EvaCLIP, trunk_name: str | None = None) -> dict[str, Any]:
    """open_clip model config (the json of ``open_clip/model_configs``) describing ``model``.

    EVA-g towers use timm's ``eva_giant_patch14_224`` (open_clip's ``EVA01-g-14``); other sizes need
    ``trunk_name``, registered with :func:`register_timm_trunk`.
    """
    if trunk_name is None:
        if not _is_eva_g(model.vision_cfg):
            raise ValueError("open_clip_model_config: the vision tower is not EVA-g; pass trunk_name= and "
                             "register it with register_timm_trunk(trunk_name, model.vision_cfg)")
        trunk_name = "eva_giant_patch14_224"
    img = model.vision_cfg.get("img_size", 224)
    return {
        "embed_dim": model.embed_dim,
        "vision_cfg": {"image_size": img, "timm_model_name": trunk_name, "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": {k: model.text_cfg[k] for k in _OPEN_CLIP_TEXT if k in model.text_cfg},
        "custom_text": True,
    }


def register_open_clip_config(name: str, model: EvaCLIP, directory: str | Path) -> Path:
    """Make ``open_clip.create_model(name)`` build ``model``'s twin; returns the config json written.

    A non-EVA-g tower gets a timm trunk called ``<name>_trunk`` (registered here). The json is written
    to ``directory/<name>.json`` and added with ``open_clip.add_model_config``.
    """
    trunk = None
    if not _is_eva_g(model.vision_cfg):
        trunk = register_timm_trunk(f"{name.lower().replace('-', '_')}_trunk", model.vision_cfg)
    cfg = open_clip_model_config(model, trunk)
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    open_clip.add_model_config(path)
    return path
