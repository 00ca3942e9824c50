"""Parameter and FLOP counting (tools/count_flops.py): EVA-g on meta, analytic count == fvcore."""
from __future__ import annotations

import pytest

import eva_core
from tools import count_flops

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


def test_eva_giant_params_and_gmacs_at_224_without_allocating_weights(capsys):
    meta = count_flops.build_meta("eva_giant_patch14_224")
    assert meta.pos_embed.is_meta
    assert count_flops.count_params(meta) == 1_012_555_112  # timm's 1012.6M (1000-class head)
    macs = count_flops.analytic_macs(meta, 224)
    assert 260e9 <= macs <= 268e9, macs / 1e9  # timm's figure incl. attention: 267 GMACs
    assert count_flops.main(["eva_giant_patch14_224"]) == 0
    assert "1,012,555,112 params" in capsys.readouterr().out
    # attention grows quadratically: 560 costs far more than (560/224)^2 x 224
    assert count_flops.analytic_macs(count_flops.build_meta("eva_giant_patch14_560"), 560) > 6.25 * macs


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_classes=0, global_pool="token", attn_inner_norm=True, mlp_norm=True),
    dict(class_token=False, pos_embed_cls_slot=True, use_rel_pos=True, window_size=3,
         window_block_indexes=[0],
         global_pool="", num_classes=0),
], ids=["avg_head", "clip_token", "windowed_rel_pos"])
def test_analytic_count_equals_fvcore_trace_with_attention(kw):
    m = eva_core.create_model("eva_tiny_patch16_224", **TINY, **kw)
    for size in (32, (40, 24)):
        fv = count_flops.fvcore_macs(m, size)
        assert count_flops.analytic_macs(m, size) == pytest.approx(fv, rel=1e-5, abs=8)
    assert all(blk.attn.attn_impl == "auto" for blk in m.blocks)  # restored after tracing
