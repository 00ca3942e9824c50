"""Layer-wise lr decay param groups: EVA/BEiT rule, weight-decay exemptions, timm agreement."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from timm.models.beit import Beit
from timm.optim import param_groups_layer_decay as timm_groups

import eva_core
from eva_core.optim.layer_decay import param_groups_layer_decay


def encoder(**kw):
    return eva_core.create_model("eva_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=24, depth=3,
                                 num_heads=2, num_classes=5, **kw)


def by_name(groups):
    return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["param_names"]}


def test_lr_scale_follows_the_eva_rule_and_exemptions():
    m = encoder(use_mask_token=True)
    groups = param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.5)
    got = by_name(groups)
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    L = 3
    assert got["cls_token"] == (0.5 ** (L + 1), 0.0)
    assert got["mask_token"] == (0.5 ** (L + 1), 0.0)
    assert got["pos_embed"] == (0.5 ** (L + 1), 0.0)
    assert got["patch_embed.proj.weight"] == (0.5 ** (L + 1), 0.05)
    assert got["blocks.0.attn.qkv.weight"] == (0.5 ** L, 0.05)
    assert got["blocks.0.attn.q_bias"] == (0.5 ** L, 0.0)  # 1-D
    assert got["blocks.2.mlp.fc2.bias"] == (0.5, 0.0)
    assert got["blocks.2.norm1.weight"] == (0.5, 0.0)
    assert got["fc_norm.weight"] == (1.0, 0.0)
    assert got["head.weight"] == (1.0, 0.05)
    assert {g["layer_id"] for g in groups} == {0, 1, 2, 3, 4}
    # no decay: every group has lr_scale 1
    assert {g["lr_scale"] for g in param_groups_layer_decay(m, layer_decay=None)} == {1.0}


def timm_by_name(m, **kw):
    """``{name: (lr_scale, weight_decay)}`` from timm's own layer-decay grouping of ``m``."""
    ids = {id(p): n for n, p in m.named_parameters()}
    ref_groups = timm_groups(m, no_weight_decay_list=m.no_weight_decay(), **kw)
    return {ids[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in ref_groups for p in g["params"]}


@pytest.mark.parametrize("kw", [dict(use_rel_pos_bias=True), dict(use_shared_rel_pos_bias=True),
                                dict(use_shared_rel_pos_bias=True, global_pool="token")],
                         ids=["per_block_rel_pos", "shared_rel_pos", "shared_rel_pos_final_norm"])
def test_agrees_with_timm_param_groups_layer_decay(kw):
    m = encoder(**kw)
    ours = by_name(param_groups_layer_decay(m, weight_decay=0.1, layer_decay=0.75))
    ref = timm_by_name(m, weight_decay=0.1, layer_decay=0.75)
    assert ours.keys() == ref.keys()
    for n in ours:
        assert ours[n][0] == pytest.approx(ref[n][0]) and ours[n][1] == ref[n][1], n


def test_shared_rel_pos_bias_is_in_the_last_layer_as_in_beit_not_in_timms_beit_stem():
    m = encoder(use_shared_rel_pos_bias=True)
    name = "rel_pos_bias.relative_position_bias_table"
    assert m.get_layer_id(name) == m.num_layers + 1
    ours = by_name(param_groups_layer_decay(m, weight_decay=0.1, layer_decay=0.75))
    assert ours[name] == (1.0, 0.0) and ours[name] == ours["head.bias"]  # lr scale of the head, no decay
    assert timm_by_name(m, weight_decay=0.1, layer_decay=0.75)[name] == (1.0, 0.0)  # our group_matcher
    # timm's Beit.group_matcher files the same table under the stem (the lowest lr scale)
    stem = Beit.group_matcher(m)["stem"]
    assert re.match(stem, name) and not re.match(m.group_matcher()["stem"], name)


def test_wrapped_encoder_frozen_params_and_lazy_config_use():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder()
            self.extra_head = nn.Linear(24, 2)

    c = Classifier()
    c.encoder.patch_embed.requires_grad_(False)  # EVA freezes the patch embedding when fine-tuning
    got = by_name(param_groups_layer_decay(c, layer_decay=0.9))
    assert "encoder.patch_embed.proj.weight" not in got
    # no_weight_decay() is seen through the wrapper
    assert got["encoder.pos_embed"] == (pytest.approx(0.9 ** 4), 0.0)
    assert got["encoder.blocks.1.mlp.fc1.weight"][0] == pytest.approx(0.9 ** 2)
    assert got["extra_head.weight"] == (1.0, 0.05)

    from eva_core.config import LazyCall as L
    from eva_core.config import instantiate

    cfg = L(torch.optim.AdamW)(params=L(param_groups_layer_decay)(model=None, layer_decay=0.9), lr=1e-3)
    cfg.params.model = c
    opt = instantiate(cfg)
    assert {round(g["lr_scale"], 6) for g in opt.param_groups} == {round(0.9 ** k, 6) for k in range(5)}


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="model=None"):
        param_groups_layer_decay(None)
    with pytest.raises(ValueError, match="get_layer_id"):
        param_groups_layer_decay(nn.Linear(2, 2), layer_decay=0.9)
    plain = param_groups_layer_decay(nn.Linear(2, 2), weight_decay=0.1)
    assert by_name(plain) == {"weight": (1.0, 0.1), "bias": (1.0, 0.0)}
