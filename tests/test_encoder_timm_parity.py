"""Our encoder reproduces timm's ``Eva`` (EVA-01 configuration) after loading timm's state dict."""
from __future__ import annotations

import pytest
import torch
from timm.models.eva import Eva as TimmEva

import eva_core

# eva_giant_patch14_224's recipe (qkv fused + q/v bias, CLS + abs pos, no rope) at toy width
EVA01 = dict(patch_size=4, embed_dim=48, depth=3, num_heads=3, mlp_ratio=6144 / 1408)


def _timm_eva(img_size: int, **kw) -> TimmEva:
    return TimmEva(img_size=img_size, qkv_fused=True, qkv_bias=True, use_abs_pos_emb=True,
                   use_rot_pos_emb=False, dynamic_img_size=True, **EVA01, **kw).eval()


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_forward_features_match_timm_eva_at_native_and_resized_resolution(global_pool):
    ref = _timm_eva(32, num_classes=10, global_pool=global_pool)
    ours = eva_core.create_model("eva_giant_patch14_224", img_size=32, num_classes=10,
                                 global_pool=global_pool,
                                 **EVA01).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith(("q_bias", "v_bias", "norm.bias", "head.bias")):
                p.normal_(0, 0.1)  # timm zero-inits these: make every parameter count
    report = eva_core.load_checkpoint(ours, ref.state_dict(), strict=True)
    assert report.ok and report.layout == "eva"
    for size in (32, 48, 24, (40, 28)):
        h, w = (size, size) if isinstance(size, int) else size
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            diff = (ours.forward_features(x) - ref.forward_features(x)).abs().max().item()
            logit_diff = (ours(x) - ref(x)).abs().max().item()
        assert diff <= 1e-5, f"forward_features differ by {diff} at {h}x{w}"
        assert logit_diff <= 1e-5, f"logits differ by {logit_diff} at {h}x{w}"


def test_timm_eva_weights_load_into_a_model_built_for_another_resolution():
    ref = _timm_eva(32, num_classes=0)
    ours = eva_core.create_model("eva_giant_patch14_224", img_size=48, num_classes=0, **EVA01).eval()
    report = eva_core.load_checkpoint(ours, ref.state_dict(), strict=True)
    assert "pos_embed: grid (8, 8) -> (12, 12)" in report.notes
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        # timm resizes at run time, we resized once at load: same bicubic + antialias resample
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max() <= 1e-5


def test_our_state_dict_loads_into_timm_eva_unchanged():
    ours = eva_core.create_model("eva_giant_patch14_224", img_size=32, num_classes=4, **EVA01).eval()
    ref = _timm_eva(32, num_classes=4)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-5
