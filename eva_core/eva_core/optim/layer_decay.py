"""Parameter groups with layer-wise lr decay and weight-decay exemptions (BEiT / EVA fine-tuning).

Usable from a LazyConfig; the engine fills in ``model``::

    optimizer = L(torch.optim.AdamW)(
        params=L(param_groups_layer_decay)(model=None, weight_decay=0.05, layer_decay=0.9),
        lr=1e-4)
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch.nn as nn

__all__ = ["param_groups_layer_decay", "find_layered_encoder"]


def find_layered_encoder(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The module that defines layer ids (``get_layer_id`` + ``num_layers``) and its name prefix.

    Task models wrap the encoder (``model.encoder``, ``model.backbone.net`` ...); the outermost
    module that defines the rule wins. Returns ``None`` when no module does.
    """
    for name, module in model.named_modules():
        if callable(getattr(module, "get_layer_id", None)) and hasattr(module, "num_layers"):
            return (name + "." if name else ""), module
    return None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatch(name, p) for p in patterns)


def param_groups_layer_decay(
    model: nn.Module | None = None,
    weight_decay: float = 0.05,
    layer_decay: float | None = None,
    no_weight_decay_list: Iterable[str] = (),
    num_layers: int | None = None,
) -> list[dict]:
    """Split trainable parameters into groups by (layer id, decay / no decay).

    Layer ids follow the EVA rule (``docs/recipes/classification.md#layer-wise-lr-decay``): 0 for
    ``cls_token``/``mask_token``/``pos_embed``/``patch_embed``, block ``i`` -> ``i + 1``, everything
    else (final norms, head, a shared ``rel_pos_bias`` table, task heads outside the encoder)
    ``L + 1``; the encoder's ``group_matcher()`` gives timm's helper the same grouping. Each
    group's ``lr_scale`` is ``layer_decay ** (L + 1 - layer_id)`` (1.0 without decay).
    1-D parameters, biases, the model's ``no_weight_decay()`` names and ``no_weight_decay_list``
    (names or shell patterns) get weight decay 0.

    Args:
        model: the model (``None`` is only allowed in a config before the engine fills it in).
        weight_decay: decay of the ``decay`` groups.
        layer_decay: per-layer lr decay factor; ``None`` or 1.0 disables it.
        no_weight_decay_list: extra names exempt from weight decay.
        num_layers: ``L``; defaults to the encoder's ``num_layers``.

    Returns:
        Optimizer param groups with keys ``params``, ``weight_decay``, ``lr_scale``, ``layer_id``
        and ``param_names`` (the optimizer ignores the extra keys; schedulers read ``lr_scale``).

    Raises:
        ValueError: ``model`` is None, or decay is requested but no encoder defines layer ids.
    """
    if model is None:
        raise ValueError("param_groups_layer_decay(model=None): the engine must fill in "
                         "optimizer.params.model")
    found = find_layered_encoder(model)
    use_decay = layer_decay is not None and layer_decay != 1.0
    if found is None and use_decay:
        raise ValueError(f"layer_decay={layer_decay} but {type(model).__name__} has no submodule with "
                         "get_layer_id()/num_layers (an EVA encoder)")
    prefix, encoder = found if found is not None else ("", None)
    if num_layers is None:
        num_layers = encoder.num_layers if encoder is not None else 0
    skip = set(no_weight_decay_list)
    for owner, pre in ((model, ""), (encoder, prefix)):
        if owner is not None and callable(getattr(owner, "no_weight_decay", None)):
            skip |= {pre + n for n in owner.no_weight_decay()}

    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or _matches(name, skip)
        if encoder is not None and name.startswith(prefix):
            layer_id = min(encoder.get_layer_id(name[len(prefix):]), num_layers + 1)
        else:
            layer_id = num_layers + 1
        key = (layer_id, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer_id) if use_decay else 1.0
            groups[key] = dict(params=[], param_names=[], weight_decay=0.0 if no_decay else weight_decay,
                               lr_scale=scale, layer_id=layer_id)
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
