"""ViTDet-EVA backbone: ViT on the EVA encoder and SimpleFeaturePyramid with detectron2's names.

Spec: docs/recipes/detection.md (backbone, simple feature pyramid, detectron2 state-dict names).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eva_core import load_checkpoint  # noqa: E402
from eva_core.config import LazyConfig, instantiate  # noqa: E402
from eva_core.models.eva import Eva  # noqa: E402
from vitdet_eva import LastLevelMaxPool, SimpleFeaturePyramid, ViT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# toy ViTDet: 8x8 token grid at the training size, 2x2 windows of 4x4, global blocks 1 and 3
TOY = dict(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=2, mlp_ratio=4.0,
           window_size=4, window_block_indexes=[0, 2], pretrain_img_size=48, use_rel_pos=True)


def _toy_vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**TOY, **kw}).eval()


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (zero-initialised rel-pos tables would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _hf_vitdet():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VitDetConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=4, image_size=64,
        pretrain_image_size=48, patch_size=8, window_size=4, window_block_indices=[0, 2],
        use_relative_position_embeddings=True, qkv_bias=True, out_features=["stage4"])
    torch.manual_seed(0)
    hf = transformers.VitDetBackbone(cfg).eval()
    _randomize(hf)
    return hf


@pytest.mark.parametrize("size", [64, 96, 40])
def test_vit_equals_transformers_vitdet_backbone_with_mapped_weights(size):
    """Training size, larger (abs + rel-pos resize, padded windows) and smaller (grid shrink)."""
    hf = _hf_vitdet()
    ours = _toy_vit()
    report = load_checkpoint(ours, hf.state_dict(), strict=True)
    assert report.layout == "hf_vitdet"
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        want = hf(x).feature_maps[-1]
        got = ours(x)["last_feat"]
    assert got.shape == want.shape == (2, 32, size // 8, size // 8)
    assert (got - want).abs().max().item() <= 1e-5


def test_vit_parameter_names_are_detectron2_vitdet_names():
    vit = _toy_vit()
    names = set(vit.state_dict())
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"} <= names
    per_block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                 "attn.rel_pos_h", "attn.rel_pos_w", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
                 "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    want = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}
    want |= {f"blocks.{i}.{k}" for i in range(4) for k in per_block}
    assert names == want
    # pos_embed stored at pretrain size with a CLS slot; rel-pos sized per window / global grid
    assert vit.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert vit.blocks[0].attn.rel_pos_h.shape == (2 * 4 - 1, 16)
    assert vit.blocks[1].attn.rel_pos_h.shape == (2 * 8 - 1, 16)
    assert all(float(b.attn.rel_pos_w.detach().abs().sum()) == 0.0 for b in vit.blocks)  # rel_pos_zero_init


def test_upstream_detectron2_qkv_bias_loads_strictly_and_its_k_part_changes_nothing():
    vit = _toy_vit()
    _randomize(vit, seed=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = vit(x)["last_feat"]
    sd = vit.state_dict()
    for i in range(4):
        q, v = sd.pop(f"blocks.{i}.attn.q_bias"), sd.pop(f"blocks.{i}.attn.v_bias")
        sd[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.randn_like(q), v])
    fresh = _toy_vit()
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        after = fresh(x)["last_feat"]
    assert (after - before).abs().max().item() <= 1e-5


def _pyramid(square_pad: int = 0) -> SimpleFeaturePyramid:
    torch.manual_seed(0)
    vit = ViT(**{**TOY, "patch_size": 16, "img_size": 128, "pretrain_img_size": 64, "window_size": 2})
    return SimpleFeaturePyramid(vit, in_feature="last_feat", out_channels=16,
                                scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(), norm="LN",
                                square_pad=square_pad).eval()


def test_simple_feature_pyramid_levels_p2_to_p6_with_strides_4_to_64():
    fpn = _pyramid(square_pad=128)
    shapes = fpn.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert {s.channels for s in shapes.values()} == {16}
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints == {"size_divisiblity": 32, "square_size": 128}
    with torch.no_grad():
        out = fpn(torch.randn(2, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 16, 32, 32), "p3": (2, 16, 16, 16), "p4": (2, 16, 8, 8), "p5": (2, 16, 4, 4),
        "p6": (2, 16, 2, 2)}
    # P6 is P5 subsampled (max-pool with kernel 1, stride 2)
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])


def test_simple_feature_pyramid_refuses_unsupported_scales_and_unknown_features():
    vit = _toy_vit()
    with pytest.raises(ValueError, match="scale_factor=3.0"):
        SimpleFeaturePyramid(vit, "last_feat", 16, scale_factors=(3.0,))
    with pytest.raises(ValueError, match="'p5'.*last_feat"):
        SimpleFeaturePyramid(vit, "p5", 16, scale_factors=(1.0,))
    with pytest.raises(ValueError, match="twice the stride"):
        SimpleFeaturePyramid(vit, "last_feat", 16, scale_factors=(4.0, 1.0))


# detectron2's ViTDet pyramid keys (modeling/backbone/vit.py: nn.Sequential indices, Conv2d.norm)
DETECTRON2_SIMFP_KEYS = [
    "simfp_2.0.weight", "simfp_2.0.bias", "simfp_2.1.weight", "simfp_2.1.bias", "simfp_2.3.weight",
    "simfp_2.3.bias", "simfp_2.4.weight", "simfp_2.4.norm.weight", "simfp_2.4.norm.bias", "simfp_2.5.weight",
    "simfp_2.5.norm.weight", "simfp_2.5.norm.bias",
    "simfp_3.0.weight", "simfp_3.0.bias", "simfp_3.1.weight", "simfp_3.1.norm.weight", "simfp_3.1.norm.bias",
    "simfp_3.2.weight", "simfp_3.2.norm.weight", "simfp_3.2.norm.bias",
    "simfp_4.0.weight", "simfp_4.0.norm.weight", "simfp_4.0.norm.bias", "simfp_4.1.weight",
    "simfp_4.1.norm.weight", "simfp_4.1.norm.bias",
    "simfp_5.1.weight", "simfp_5.1.norm.weight", "simfp_5.1.norm.bias", "simfp_5.2.weight",
    "simfp_5.2.norm.weight", "simfp_5.2.norm.bias",
]


def test_detectron2_layout_state_dict_loads_with_nothing_missing_or_unexpected():
    detector = nn.Module()
    detector.backbone = _pyramid()
    shapes = {k: v.shape for k, v in detector.state_dict().items()}
    vit_keys = [f"net.{k}" for k in detector.backbone.net.state_dict()]
    d2_keys = [f"backbone.{k}" for k in vit_keys + DETECTRON2_SIMFP_KEYS]
    assert sorted(d2_keys) == sorted(shapes)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shapes[k], generator=g) for k in d2_keys}
    result = detector.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(detector.backbone.simfp_2[4].norm.weight, sd["backbone.simfp_2.4.norm.weight"])


def test_eva_mim_checkpoint_loads_into_the_backbone_with_patch_14_to_16_conversion():
    torch.manual_seed(0)
    mim = Eva(img_size=28, patch_size=14, embed_dim=32, depth=4, num_heads=2, num_classes=0,
              global_pool="token", use_mask_token=True)
    sd = {**mim.state_dict(), "lm_head.weight": torch.randn(8, 32), "lm_head.bias": torch.zeros(8)}
    detector = nn.Module()
    detector.backbone = _pyramid()  # patch 16, pos_embed stored at 64 / 16 = 4x4 (+ CLS slot)
    report = load_checkpoint(detector, sd)
    assert report.layout == "eva_mim"
    net = detector.backbone.net
    assert net.patch_embed.proj.weight.shape == (32, 3, 16, 16)
    assert any("kernel (14, 14) -> (16, 16)" in n for n in report.notes)
    assert any("pos_embed: grid (2, 2) -> (4, 4)" in n for n in report.notes)
    # every encoder tensor but the (zero-initialised) relative positions came from the file
    missing_net = [k for k in report.missing if k.startswith("backbone.net.")]
    assert missing_net and all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in missing_net)
    assert torch.equal(net.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    # what ViTDet has no place for is reported, not loaded: the MIM head, the CLS token, the final norm
    assert {"lm_head.weight", "lm_head.bias"} <= set(report.dropped)
    assert sorted(report.unexpected) == ["cls_token", "norm.bias", "norm.weight"]


def test_frozen_patch_embed_gets_no_gradient_and_act_checkpointing_keeps_gradients():
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        vit = _toy_vit(freeze_patch_embed=True, use_act_checkpoint=ckpt, drop_path_rate=0.0).train()
        _randomize(vit, seed=5)
        vit(x)["last_feat"].square().mean().backward()
        assert all(p.grad is None for p in vit.patch_embed.parameters())
        grads.append(vit.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_vit_refuses_residual_blocks_naming_the_argument():
    with pytest.raises(ValueError, match="residual_block_indexes=\\[1\\]"):
        ViT(**{**TOY, "residual_block_indexes": [1]})


def test_eva_g_backbone_config_uses_detectron2_keys_and_eva_numbers():
    cfg = LazyConfig.load(os.path.join(ROOT, "projects/ViTDet-EVA/configs/common/backbone.py"))
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads) == (1408, 40, 16)
    assert (net.patch_size, net.window_size) == (16, 16)
    assert net.mlp_ratio == pytest.approx(6144 / 1408)
    assert net.window_block_indexes == [i for i in range(40) if i not in range(3, 40, 4)]
    assert (net.img_size, net.pretrain_img_size, net.drop_path_rate) == (1280, 224, 0.6)
    assert net.use_rel_pos and net.use_act_checkpoint and net.freeze_patch_embed
    assert cfg.model.backbone.out_channels == 256 and cfg.model.backbone.square_pad == 1280
    # a detectron2-style override at toy size builds a working pyramid
    LazyConfig.apply_overrides(cfg, ["model.backbone.net.embed_dim=32", "model.backbone.net.depth=2",
                                     "model.backbone.net.num_heads=2",
                                     "model.backbone.net.window_block_indexes=[0]",
                                     "model.backbone.net.img_size=64", "model.backbone.net.window_size=2",
                                     "model.backbone.net.use_act_checkpoint=False",
                                     "model.backbone.square_pad=64", "model.backbone.out_channels=8"])
    fpn = instantiate(cfg.model.backbone).eval()
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4), (1, 8, 2, 2), (1, 8, 1, 1)]


def test_pyramid_layernorm_is_detectron2_channels_first_layernorm_with_eps_1e_6():
    norm = _pyramid().simfp_2[1]
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 16, 5, 7) * 3 + 1
    # detectron2.layers.LayerNorm written out: statistics over the channel axis
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    want = norm.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + norm.bias[:, None, None]
    with torch.no_grad():
        assert (norm(x) - want).abs().max().item() <= 1e-5


def test_pyramid_without_norm_gives_biased_convs_and_keeps_detectron2_indices():
    vit = _toy_vit()
    fpn = SimpleFeaturePyramid(vit, "last_feat", 8, scale_factors=(4.0, 2.0), norm="")
    assert fpn.simfp_1[4].bias is not None and fpn.simfp_1[4].norm is None  # stride 8/4 = 2 -> p1
    assert isinstance(fpn.simfp_1[1], nn.Identity) and isinstance(fpn.simfp_1[2], nn.GELU)
    with pytest.raises(ValueError, match="twice the stride"):
        SimpleFeaturePyramid(vit, "last_feat", 8, scale_factors=(1.0, 1.0))


def test_image_list_pads_to_the_pyramids_square_size_and_keeps_image_sizes():
    from vitdet_eva import ImageList

    fpn = _pyramid(square_pad=128)
    images = [torch.rand(3, 100, 60), torch.rand(3, 48, 120)]
    batch = ImageList.from_tensors(images, fpn.size_divisibility, padding_constraints=fpn.padding_constraints)
    assert batch.tensor.shape == (2, 3, 128, 128) and batch.image_sizes == [(100, 60), (48, 120)]
    assert torch.equal(batch[1], images[1]) and float(batch.tensor[0, :, 100:].abs().sum()) == 0.0
    # without a square size: the largest sides, rounded up to the divisibility
    assert ImageList.from_tensors(images, 32).tensor.shape == (2, 3, 128, 128)
    assert ImageList.from_tensors(images[:1], 32).tensor.shape == (1, 3, 128, 64)
    with pytest.raises(ValueError, match=r"image 0 of size \(100, 60\) does not fit square_size 64"):
        ImageList.from_tensors(images[:1], padding_constraints={"square_size": 64})
    with torch.no_grad():
        assert fpn(batch.tensor)["p6"].shape == (2, 16, 2, 2)
