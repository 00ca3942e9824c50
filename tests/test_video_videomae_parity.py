"""Our video EVA's pieces equal transformers' ``VideoMAEForVideoClassification`` with mapped weights.

The two models differ in one place that no weight mapping removes: EVA's video encoder (as the EVA-01
release) prepends a learned CLS token that every patch token attends to and keeps a learned position
table ``[1, 1 + T*N, C]``; VideoMAE has no CLS token and adds a fixed sinusoidal table ``[1, T*N, C]``.
Everything else is the same computation: the Conv3d tubelet embedding with frame-major tokens, pre-norm
blocks with q/v bias and no k bias, exact GELU MLP, mean pooling + ``fc_norm`` + linear head. So the
test runs our patch embedding, blocks and head on VideoMAE's tokens (its sinusoidal table added, no
CLS) and compares the logits with VideoMAE's forward; and checks that our full forward (with CLS)
differs, so the comparison above is not vacuous (``benchmarks/video.py`` says the same).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

transformers = pytest.importorskip("transformers")

from video import create_video_model  # noqa: E402

GEOMETRY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2)
WIDTH, DEPTH, HEADS, MLP, CLASSES = 48, 2, 4, 2.0, 5
EPS = 1e-5  # VideoMAE's fc_norm is nn.LayerNorm's default 1e-5; its blocks take config.layer_norm_eps


def build_pair():
    torch.manual_seed(0)
    ours = create_video_model("eva_video_tiny_patch14_224_f8", embed_dim=WIDTH, depth=DEPTH,
                              num_heads=HEADS, mlp_ratio=MLP, num_classes=CLASSES, norm_eps=EPS,
                              **GEOMETRY).eval()
    config = transformers.VideoMAEConfig(
        image_size=GEOMETRY["img_size"], patch_size=GEOMETRY["patch_size"],
        num_frames=GEOMETRY["num_frames"], tubelet_size=GEOMETRY["tubelet_size"], hidden_size=WIDTH,
        num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=int(WIDTH * MLP),
        hidden_act="gelu", qkv_bias=True, layer_norm_eps=EPS, use_mean_pooling=True, num_labels=CLASSES,
        attn_implementation="eager")
    theirs = transformers.VideoMAEForVideoClassification(config).eval()
    return ours, theirs


def videomae_state_dict(ours) -> dict:
    """Our weights under VideoMAE's names (q/k/v split from the fused qkv; k has no bias in both)."""
    sd = ours.state_dict()
    out = {"videomae.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "videomae.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "fc_norm.weight": sd["fc_norm.weight"], "fc_norm.bias": sd["fc_norm.bias"],
           "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    names = {  # VideoMAE layer name: our block name
        "attention.attention.query.bias": "attn.q_bias", "attention.attention.value.bias": "attn.v_bias",
        "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
        "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
        "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
        "intermediate.dense.weight": "mlp.fc1.weight", "intermediate.dense.bias": "mlp.fc1.bias",
        "output.dense.weight": "mlp.fc2.weight", "output.dense.bias": "mlp.fc2.bias",
    }
    for i in range(DEPTH):
        src, dst = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        q, k, v = sd[src + "attn.qkv.weight"].chunk(3)
        out.update({dst + "attention.attention.query.weight": q, dst + "attention.attention.key.weight": k,
                    dst + "attention.attention.value.weight": v})
        out.update({dst + theirs: sd[src + mine] for theirs, mine in names.items()})
    return out


def test_video_eva_patch_embedding_blocks_and_head_equal_videomae_with_mapped_weights():
    ours, theirs = build_pair()
    with torch.no_grad():
        for p in ours.parameters():  # O(1) weights: a mismatch shows, not drowned by 0.02-scale init
            p.normal_(0, 0.3)
    theirs.load_state_dict(videomae_state_dict(ours), strict=True)
    clip = torch.randn(2, GEOMETRY["num_frames"], 3, GEOMETRY["img_size"], GEOMETRY["img_size"])
    with torch.no_grad():
        expected = theirs(pixel_values=clip).logits
        tokens, grid = ours.patch_embed(clip)
        assert grid == ours.token_grid == (2, 4, 4)
        x = tokens + theirs.videomae.embeddings.position_embeddings  # VideoMAE's fixed table, no CLS
        for blk in ours.blocks:
            x = blk(x, None)
        got = ours.head(ours.fc_norm(x.mean(dim=1)))
        full = ours(clip)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # our full forward has the CLS token in attention: not the same function
    assert (full - expected).abs().max() > 1e-2
