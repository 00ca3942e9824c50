"""Model registry: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Names follow timm where timm has the model (``eva_giant_patch14_224`` ...). Overrides use the
constructor argument names of :class:`eva_core.models.eva.Eva` (timm's names: ``img_size``,
``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``num_classes``,
``drop_path_rate``, ``global_pool`` ...).
"""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "model_defaults"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}

# CLIP normalisation: EVA's MIM targets come from CLIP, and the release normalises inputs the same way
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def register_model(name: str, builder: Callable[..., nn.Module], **defaults: Any) -> None:
    """Register ``builder(**defaults, **overrides)`` under ``name``.

    Raises:
        ValueError: the name is taken.
    """
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder
    _DEFAULTS[name] = dict(defaults)


def list_models(pattern: str | None = None, module: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"eva_giant*"``)
    and by the package whose builder they name (``module="eva_core"``: the core's image encoders, not
    the ones a task package such as ``video`` registers on import)."""
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if module:
        names = [n for n in names if f"{_MODELS[n].__module__}.".startswith(f"{module}.")]
    return names


def model_defaults(name: str) -> dict[str, Any]:
    """The constructor arguments a registered name stands for (a copy)."""
    _check_name(name)
    return dict(_DEFAULTS[name])


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = fnmatch.filter(_MODELS, f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model {name!r}; registered: {close or list_models()[:8]} ... "
                         "(see eva_core.list_models())")


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model with random weights.

    Weights come from ``eva_core.create_model(name, checkpoint_path=...)`` (or
    ``eva_core.load_checkpoint``): the model package does not import the checkpoint loader, so the
    two stay free of an import cycle.

    Args:
        name: a name from :func:`list_models`.
        pretrained: must be False here (nothing is downloaded; see above).
        **overrides: constructor arguments replacing the registered ones.

    Raises:
        ValueError: unknown name, unknown override, or a request for weights.
    """
    _check_name(name)
    if pretrained or "checkpoint_path" in overrides:
        raise ValueError(f"create_model({name!r}): weights are loaded by eva_core.create_model(..., "
                         "checkpoint_path=PATH) or eva_core.load_checkpoint(model, PATH), not by "
                         "eva_core.models.create_model; nothing can be downloaded, so pretrained=True needs "
                         "checkpoint_path (convert a released file with tools/convert_checkpoint.py)")
    builder = _MODELS[name]
    sig = inspect.signature(builder)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        bad = sorted(set(overrides) - set(sig.parameters))
        if bad:
            raise ValueError(f"create_model({name!r}): unknown argument(s) {bad}; accepted: "
                             f"{sorted(sig.parameters)}")
    kwargs = {**_DEFAULTS[name], **overrides}
    model = builder(**kwargs)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        img = kwargs.get("img_size", 224)
        img = (img, img) if isinstance(img, int) else tuple(img)
        cfg.update(architecture=name, input_size=(kwargs.get("in_chans", 3), *img), mean=_CLIP_MEAN,
                   std=_CLIP_STD, num_classes=kwargs.get("num_classes", 1000), interpolation="bicubic",
                   crop_pct=1.0)
    return model


def _register_eva_family() -> None:
    from .eva import Eva

    giant = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408)
    sizes = {
        "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
        "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
        "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
        "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
        "giant": giant,
    }
    for size, arch in sizes.items():
        for patch in (14, 16):
            register_model(f"eva_{size}_patch{patch}_224", Eva, patch_size=patch, img_size=224, **arch)
    # timm's fine-tuned EVA-g resolutions (IN-1K at 336 and 560)
    register_model("eva_giant_patch14_336", Eva, patch_size=14, img_size=336, **giant)
    register_model("eva_giant_patch14_560", Eva, patch_size=14, img_size=560, **giant)
    # EVA-CLIP vision tower (timm: eva_giant_patch14_clip_224): CLS pooling, no classifier
    register_model("eva_giant_patch14_clip_224", Eva, patch_size=14, img_size=224, global_pool="token",
                   num_classes=0, **giant)
    # MIM pre-training encoder: mask token, final norm kept (no fc_norm), no classifier
    register_model("eva_giant_patch14_mim_224", Eva, patch_size=14, img_size=224, num_classes=0,
                   use_mask_token=True, use_fc_norm=False, global_pool="token", **giant)
    # ViTDet backbone from eva_psz14to16 (docs/recipes/detection.md#backbone): window 16,
    # global blocks 3,7,...,39,
    # decomposed rel-pos sized for the 1280/16 grid, pos_embed stored at 224/16 with a CLS slot
    register_model("eva_giant_patch16_vitdet_1280", Eva, patch_size=16, img_size=224, num_classes=0,
                   global_pool="", class_token=False, pos_embed_cls_slot=True, use_rel_pos=True,
                   rel_pos_input_size=(80, 80), window_size=16,
                   global_block_indexes=tuple(range(3, 40, 4)), use_fc_norm=False,
                   use_post_transformer_norm=False, **giant)


_register_eva_family()
