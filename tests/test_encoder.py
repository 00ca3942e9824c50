"""The EVA encoder: registry, timm API, masking, dynamic size, relative positions, windows, backends."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn as nn

import eva_core
from eva_core.models import Eva, EvaAttention, resolve_attn_impl
from eva_core.models.eva import ATTN_IMPL_ENV

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


def tiny(**kw) -> Eva:
    return eva_core.create_model("eva_tiny_patch16_224", **{**TINY, **kw}).eval()


# ----------------------------------------------------------------------------- registry / API
@pytest.mark.parametrize("name", eva_core.list_models(module="eva_core"))
def test_every_registered_model_builds_on_meta_and_runs_tiny(name):
    with torch.device("meta"):
        big = eva_core.create_model(name)
    assert big.num_features == big.embed_dim and big.patch_embed.proj.weight.is_meta
    present = {n for n in ("pos_embed", "cls_token", "mask_token") if getattr(big, n) is not None}
    assert "pos_embed" in present and present <= big.no_weight_decay()
    assert big.get_layer_id("patch_embed.proj.weight") == 0
    assert big.get_layer_id(f"blocks.{big.num_layers - 1}.mlp.fc1.weight") == big.num_layers
    assert big.get_layer_id("head.weight") == big.num_layers + 1
    assert set(big.group_matcher()) == {"stem", "blocks"}

    m = eva_core.create_model(name, img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3,
                              mlp_ratio=4.0).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, m.num_prefix_tokens + 64, 48)
    out = m(x)
    if m.num_classes:
        assert out.shape == (2, m.num_classes)
    elif m.global_pool == "":
        assert out.shape == feats.shape  # no pooling: the tokens themselves
    else:
        assert out.shape == (2, 48)
    maps = m.forward_intermediates(x, indices=1, intermediates_only=True)
    assert maps[0].shape == (2, 48, 8, 8)


def test_registry_rejects_unknown_names_and_arguments_and_offline_pretrained():
    with pytest.raises(ValueError, match="unknown model 'eva_huge"):
        eva_core.create_model("eva_huge_patch14_224")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['embed_dims'\]"):
        eva_core.create_model("eva_tiny_patch16_224", embed_dims=8)
    with pytest.raises(ValueError, match="checkpoint_path"):
        eva_core.create_model("eva_tiny_patch16_224", pretrained=True)
    # the model package builds, the top-level create_model loads: models/ never imports checkpoint/
    with pytest.raises(ValueError, match=r"eva_core.create_model\(\.\.\., checkpoint_path=PATH\)"):
        eva_core.models.create_model("eva_tiny_patch16_224", checkpoint_path="w.safetensors")
    assert eva_core.list_models("eva_giant_patch14_*") == [
        "eva_giant_patch14_224", "eva_giant_patch14_336", "eva_giant_patch14_560",
        "eva_giant_patch14_clip_224", "eva_giant_patch14_mim_224"]


def test_eva_giant_on_meta_has_the_reference_parameter_counts():
    import timm

    with torch.device("meta"):
        mim = eva_core.create_model("eva_giant_patch14_mim_224")
        cls = eva_core.create_model("eva_giant_patch14_224")
        ref = timm.create_model("eva_giant_patch14_224", pretrained=False)
    n_mim = sum(p.numel() for p in mim.parameters())
    # the MIM pre-training model adds lm_head 1408 -> 768 to the encoder
    # (docs/recipes/encoder.md#parameter-counts)
    assert n_mim + 1408 * 768 + 768 == 1_012_229_632
    assert mim.blocks[0].attn.qkv.weight.shape == (4224, 1408) and mim.blocks[0].mlp.fc1.out_features == 6144
    assert sum(p.numel() for p in cls.parameters()) == sum(p.numel() for p in ref.parameters())
    shapes = {k: v.shape for k, v in cls.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}


def test_timm_api_heads_pooling_and_reset_classifier():
    m = tiny(num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    f = m.forward_features(x)
    assert isinstance(m.norm, nn.Identity) and isinstance(m.fc_norm, nn.LayerNorm)  # avg -> fc_norm
    torch.testing.assert_close(m.forward_head(f, pre_logits=True), m.fc_norm(f[:, 1:].mean(1)))
    assert m(x).shape == (2, 7)
    m.reset_classifier(0, global_pool="token")
    torch.testing.assert_close(m(x), m.fc_norm(f[:, 0]))
    m.reset_classifier(5)
    assert m(x).shape == (2, 5) and m.get_classifier().out_features == 5
    tok = tiny(global_pool="token", num_classes=0)
    assert isinstance(tok.fc_norm, nn.Identity) and isinstance(tok.norm, nn.LayerNorm)
    with pytest.raises(ValueError, match="global_pool"):
        tiny(global_pool="max")
    with pytest.raises(ValueError, match="class_token"):
        tiny(global_pool="token", class_token=False)


def test_layer_scale_inner_norms_and_fp32_layernorm_options():
    m = tiny(init_values=0.1, attn_inner_norm=True, mlp_norm=True, norm_fp32=True)
    assert torch.equal(m.blocks[1].gamma_2, torch.full((48,), 0.1))
    keys = m.state_dict().keys()
    assert "blocks.0.attn.norm.weight" in keys and "blocks.0.mlp.norm.weight" in keys
    assert "blocks.0.gamma_1" in keys and "blocks.0.attn.k_bias" not in keys
    out = m.to(torch.bfloat16).forward_features(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_reference_init_truncated_normal_and_depth_scaled_projections():
    m = eva_core.create_model("eva_tiny_patch16_224", img_size=32, patch_size=4, depth=4, num_classes=10)
    std = m.blocks[0].attn.qkv.weight.std().item()
    assert abs(std - 0.015) < 0.0015
    for i, blk in enumerate(m.blocks, start=1):
        for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
            assert abs(w.std().item() * math.sqrt(2 * i) - 0.015) < 0.0015
    assert torch.count_nonzero(m.blocks[0].attn.q_bias) == 0
    assert torch.equal(m.blocks[0].norm1.weight, torch.ones(192))
    assert abs(m.pos_embed.std().item() - 0.015) < 0.002
    assert abs(m.head.weight.std().item() - 0.015 * 0.001) < 0.0015 * 0.001  # head_init_scale


# ----------------------------------------------------------------------------- tokens
def test_mask_replaces_patch_embeddings_by_mask_token_before_cls_and_pos():
    m = tiny(use_mask_token=True)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, 60:] = True
    tokens, grid = m.embed(x, mask)
    plain, _ = m.embed(x)
    assert grid == (8, 8)
    expect = m.mask_token[0, 0] + m.pos_embed[0, 1:]
    torch.testing.assert_close(tokens[0, 1:6], expect[:5])
    torch.testing.assert_close(tokens[1, 61:], expect[60:])
    torch.testing.assert_close(tokens[0, 6:], plain[0, 6:])
    torch.testing.assert_close(tokens[:, 0], plain[:, 0])  # CLS untouched
    feats = m.forward_features(x, mask)
    assert not torch.allclose(feats, m.forward_features(x))
    feats.sum().backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0


def test_mask_errors_name_the_problem():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="use_mask_token=True"):
        tiny().forward_features(x, torch.zeros(1, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[1, 64\]"):
        tiny(use_mask_token=True).forward_features(x, torch.zeros(1, 63, dtype=torch.bool))


def test_dynamic_image_size_resizes_position_grid_bicubically():
    from timm.layers import resample_abs_pos_embed

    m = tiny()
    x = torch.randn(1, 3, 48, 40)
    assert m.forward_features(x).shape == (1, 1 + 12 * 10, 48)
    pos = m.resized_pos_embed((12, 10))
    ref = resample_abs_pos_embed(m.pos_embed, [12, 10], [8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(pos, ref)
    assert m.resized_pos_embed((8, 8)) is m.pos_embed  # native size: the stored table itself
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m.forward_features(torch.randn(1, 3, 30, 32))


# ----------------------------------------------------------------------------- training features
def test_drop_path_is_linear_over_depth_and_only_active_in_training():
    m = tiny(depth=5, drop_path_rate=0.4)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in m.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(m.forward_features(x), m.forward_features(x))
    m.train()
    assert not torch.allclose(m.forward_features(x), m.forward_features(x))


def test_grad_checkpointing_gives_the_same_loss_and_grads():
    m = tiny(depth=3, use_rel_pos=True)
    x = torch.randn(2, 3, 32, 32)
    m.train()
    m(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).square().sum().backward()
    assert ref.keys() == {n for n, p in m.named_parameters() if p.grad is not None}
    for n, p in m.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_grad_checkpointing_is_a_constructor_switch_used_in_training_only(monkeypatch):
    import eva_core.models.eva as eva_module

    calls = []
    real = eva_module.checkpoint
    monkeypatch.setattr(eva_module, "checkpoint", lambda fn, *a, **kw: calls.append(fn) or real(fn, *a, **kw))
    m = eva_core.create_model("eva_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3,
                              num_heads=2, grad_checkpointing=True)
    assert m.grad_checkpointing
    m.train()(torch.randn(1, 3, 32, 32)).sum().backward()
    assert len(calls) == 3  # one per block
    with torch.no_grad():
        m.eval()(torch.randn(1, 3, 32, 32))
    assert len(calls) == 3


# ----------------------------------------------------------------------------- attention backends
@pytest.mark.parametrize("variant",
                         ["plain", "beit_rel_pos", "decomposed_rel_pos", "bool_mask", "float_mask"])
def test_sdpa_and_math_attention_agree(variant):
    kw = dict(dim=48, num_heads=3, num_prefix_tokens=1)
    if variant == "beit_rel_pos":
        kw["rel_pos_bias_window"] = (4, 4)
    if variant == "decomposed_rel_pos":
        kw.update(use_rel_pos=True, rel_pos_input_size=(4, 4))
    attn = EvaAttention(**kw).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.2)  # non-zero biases and tables so the comparison sees them
    x = torch.randn(2, 17, 48)
    mask = None
    if variant == "bool_mask":
        mask = torch.rand(2, 1, 17, 17) > 0.3
        mask[..., 0] = True  # every query keeps at least one key
    if variant == "float_mask":
        mask = torch.randn(2, 3, 17, 17)
    outs = {}
    for impl in ("math", "sdpa"):
        attn.attn_impl = impl
        outs[impl] = attn(x, (4, 4), attn_mask=mask)
    torch.testing.assert_close(outs["sdpa"], outs["math"], rtol=1e-5, atol=1e-5)


def test_attention_backend_selection_and_override(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(ATTN_IMPL_ENV, raising=False)
    assert resolve_attn_impl("auto", cpu) == "sdpa"
    monkeypatch.setenv(ATTN_IMPL_ENV, "math")
    assert resolve_attn_impl("auto", cpu) == "math"
    assert resolve_attn_impl("sdpa", cpu) == "sdpa"  # an explicit choice beats the env var
    monkeypatch.setenv(ATTN_IMPL_ENV, "flash3")
    with pytest.raises(ValueError, match="EVA_ATTN_IMPL='flash3'"):
        resolve_attn_impl("auto", cpu)
    with pytest.raises(ValueError, match="EVA_ATTN_IMPL='flash3'"):
        tiny()  # the env var is read when the model is built
    with pytest.raises(RuntimeError, match="xformers"):
        resolve_attn_impl("xformers", cpu)
    with pytest.raises(ValueError, match="attn_impl"):
        tiny(attn_impl="flash")
    monkeypatch.delenv(ATTN_IMPL_ENV)
    m = tiny(depth=1)
    assert m.blocks[0].attn.attn_impl == "auto" and m.blocks[0].attn.attn_backend == "sdpa"
    x = torch.randn(1, 3, 32, 32)
    ref = m.forward_features(x)
    m.set_attn_impl("math")
    assert m.blocks[0].attn.attn_backend == "math"
    torch.testing.assert_close(m.forward_features(x), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(ATTN_IMPL_ENV, "math")
    assert tiny(depth=1).blocks[0].attn.attn_backend == "math"


def test_attention_kernel_is_chosen_at_construction_not_per_forward(monkeypatch):
    import eva_core.models.eva as eva_module

    m = tiny(depth=2, use_rel_pos=True)
    calls = []
    real = eva_module.resolve_attn_impl
    monkeypatch.setattr(eva_module, "resolve_attn_impl", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    m.forward_features(torch.randn(2, 3, 32, 32))
    assert calls == []  # no selection work in the forward pass
    m.set_attn_impl("math")
    assert len(calls) == 2  # one resolution per attention module when the choice changes


# ----------------------------------------------------------------------------- relative positions, windows
def test_beit_relative_position_bias_matches_timm_beit():
    from timm.models.beit import Beit

    cfg = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=5, init_values=0.1)
    for shared in (False, True):
        ref = Beit(**cfg, use_abs_pos_emb=True, use_rel_pos_bias=not shared,
                   use_shared_rel_pos_bias=shared).eval()
        ours = eva_core.create_model("eva_tiny_patch16_224", **cfg, use_rel_pos_bias=not shared,
                                     use_shared_rel_pos_bias=shared).eval()
        sd = ref.state_dict()
        with torch.no_grad():
            for k in sd:
                if k.endswith("relative_position_bias_table"):
                    sd[k].normal_(0, 0.5)  # timm zero-inits them: make the bias visible
        report = eva_core.load_checkpoint(ours, sd, strict=True)
        assert report.ok
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)
        # a larger input resizes the table at run time instead of failing
        assert ours.forward_features(torch.randn(1, 3, 40, 40)).shape == (1, 101, 48)


def test_window_and_global_blocks_with_decomposed_rel_pos_match_timm_sam_blocks():
    from timm.models.vision_transformer_sam import Block as SamBlock

    m = tiny(depth=2, class_token=False, pos_embed_cls_slot=True, use_rel_pos=True, window_size=3,
             window_block_indexes=[0], num_classes=0, global_pool="", use_post_transformer_norm=False)
    assert m.pos_embed.shape == (1, 65, 48) and m.blocks[0].attn.rel_pos_h.shape == (5, 16)
    assert m.blocks[1].attn.rel_pos_h.shape == (15, 16)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "rel_pos" in n or "q_bias" in n or "v_bias" in n:
                p.normal_(0, 0.3)
    x = torch.randn(2, 3, 32, 32)
    tokens, grid = m.embed(x)
    ref = tokens.reshape(2, 8, 8, 48)
    for i, blk in enumerate(m.blocks):
        sam = SamBlock(48, 3, qkv_bias=True, use_rel_pos=True, window_size=3 if i == 0 else 0,
                       input_size=(8, 8), norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
        sd = {k: v for k, v in blk.state_dict().items() if "q_bias" not in k and "v_bias" not in k}
        sd["attn.qkv.bias"] = torch.cat([blk.attn.q_bias, torch.zeros(48), blk.attn.v_bias]).detach()
        sam.load_state_dict(sd, strict=True)
        ref = sam(ref)
    ours = m.forward_features(x)
    # window 3 on an 8x8 grid pads to 9x9: the padded path is exercised too
    torch.testing.assert_close(ours, ref.reshape(2, 64, 48), rtol=1e-5, atol=1e-5)
    maps = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert [t.shape for t in maps] == [(2, 48, 8, 8)] * 2
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), ours)


def test_window_attention_requires_sequences_without_cls():
    with pytest.raises(ValueError, match="class_token=False"):
        tiny(window_size=4, window_block_indexes=[0])
    with pytest.raises(ValueError, match="out of range"):
        tiny(class_token=False, window_size=4, window_block_indexes=[5], global_pool="")


def test_vitdet_registry_entry_has_the_reference_block_layout():
    with torch.device("meta"):
        m = eva_core.create_model("eva_giant_patch16_vitdet_1280")
    globals_ = [i for i, b in enumerate(m.blocks) if b.window_size == 0]
    assert globals_ == list(range(3, 40, 4))
    assert m.blocks[0].attn.rel_pos_h.shape == (31, 88) and m.blocks[3].attn.rel_pos_h.shape == (159, 88)
    assert m.pos_embed.shape == (1, 197, 1408) and m.cls_token is None and isinstance(m.norm, nn.Identity)


def test_list_models_filters_by_the_registering_package():
    import video  # noqa: F401  (registers the video encoders on import)

    core = eva_core.list_models(module="eva_core")
    assert "eva_giant_patch14_224" in core and not any(n.startswith("eva_video_") for n in core)
    assert "eva_video_giant_patch14_224_f16" in eva_core.list_models(module="video")
    assert set(core) | set(eva_core.list_models(module="video")) <= set(eva_core.list_models())
    assert eva_core.list_models("eva_giant*", module="video") == []
