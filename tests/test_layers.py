"""eva_core.layers: each block agrees with timm where timm has it; the differences are the documented ones."""
from __future__ import annotations

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table, resize_rel_pos_bias_table_simple
from timm.models import vision_transformer_sam as sam

from eva_core import layers
from eva_core.layers import attention as attn_mod


# ----------------------------------------------------------------------------- absolute positions, 2-D
@pytest.mark.parametrize("prefix", [0, 1])
def test_pos_embed_grid_resize_is_timms_resample_with_and_without_prefix_tokens(prefix):
    pos = torch.randn(1, prefix + 8 * 8, 16)
    ours = layers.resample_pos_embed_grid(pos, (12, 10), num_prefix_tokens=prefix)
    ref = resample_abs_pos_embed(pos, [12, 10], [8, 8], num_prefix_tokens=prefix)
    assert torch.equal(ours, ref)
    assert layers.resample_pos_embed_grid(pos, (8, 8), num_prefix_tokens=prefix) is pos
    assert layers.resample_abs_pos_embed is timm.layers.resample_abs_pos_embed  # re-exported, not copied


def test_pos_embed_grid_resize_names_a_non_square_grid_that_timm_misreads():
    pos = torch.randn(1, 1 + 4 * 6, 16)  # a 4x6 grid stored with a CLS slot
    misread = resample_abs_pos_embed(pos, [8, 12], num_prefix_tokens=1)  # timm assumes a square grid ...
    assert misread.shape == (1, 1 + 144, 16)  # ... and silently returns 144 tokens instead of 8 * 12 = 96
    with pytest.raises(ValueError, match="not a square grid; pass old_grid"):
        layers.resample_pos_embed_grid(pos, (8, 12))
    with pytest.raises(ValueError, match="expected 5x5"):
        layers.resample_pos_embed_grid(pos, (8, 12), old_grid=(5, 5))
    ok = layers.resample_pos_embed_grid(pos, (8, 12), old_grid=(4, 6))
    assert torch.equal(ok, resample_abs_pos_embed(pos, [8, 12], [4, 6], num_prefix_tokens=1))
    assert layers.split_pos_embed_grid(torch.zeros(1, 65, 4)) == (1, (8, 8))
    with pytest.raises(ValueError, match="neither a square grid"):
        layers.split_pos_embed_grid(torch.zeros(1, 1 + 2 * 5, 4))


# ----------------------------------------------------------------------------- absolute positions, video
def test_image_table_is_repeated_per_frame_with_one_cls_entry():
    pos = torch.randn(1, 1 + 9, 8)
    video = layers.inflate_pos_embed_to_video(pos, num_frames=3)
    assert video.shape == (1, 1 + 3 * 9, 8)
    assert torch.equal(video[:, :1], pos[:, :1])
    for t in range(3):
        assert torch.equal(video[:, 1 + 9 * t: 1 + 9 * (t + 1)], pos[:, 1:])
    # the 3-D resize does the same for an image table (T = 1), then resizes space
    grown = layers.resample_abs_pos_embed_3d(pos, (4, 3, 3), (1, 3, 3))
    assert torch.equal(grown, layers.inflate_pos_embed_to_video(pos, 4))


def test_video_table_resize_is_bilinear_per_frame_when_frames_stay_and_linear_in_time():
    t, h, w, c = 3, 4, 4, 8
    pos = torch.randn(1, 1 + t * h * w, c)
    out = layers.resample_abs_pos_embed_3d(pos, (t, 6, 5), (t, h, w))
    assert out.shape == (1, 1 + t * 6 * 5, c) and torch.equal(out[:, :1], pos[:, :1])
    frames = pos[:, 1:].reshape(1, t, h * w, c)
    for i in range(t):
        ref = resample_abs_pos_embed(frames[:, i], [6, 5], [h, w], num_prefix_tokens=0,
                                     interpolation="bilinear", antialias=False)
        torch.testing.assert_close(out[:, 1 + 30 * i: 1 + 30 * (i + 1)], ref)
    # only the temporal axis changes: a 1-D linear resample of every (h, w, c) series
    longer = layers.resample_abs_pos_embed_3d(pos, (5, h, w), (t, h, w), num_prefix_tokens=1)
    series = pos[0, 1:].reshape(t, h * w * c).t().unsqueeze(0)
    ref = F.interpolate(series, size=5, mode="linear", align_corners=False)[0].t().reshape(1, 5 * h * w, c)
    torch.testing.assert_close(longer[:, 1:], ref)
    with pytest.raises(ValueError, match="expected T\\*H\\*W = 2x4x4"):
        layers.resample_abs_pos_embed_3d(pos, (3, 4, 4), (2, 4, 4))


# ----------------------------------------------------------------------------- patch kernels
def test_inflated_kernel_embeds_a_clip_of_identical_frames_like_the_image_kernel():
    w = torch.randn(8, 3, 4, 4)
    w3 = layers.inflate_patch_embed_3d(w, tubelet_size=2)
    assert w3.shape == (8, 3, 2, 4, 4)
    frame = torch.randn(1, 3, 8, 8)
    clip = frame.unsqueeze(2).repeat(1, 1, 4, 1, 1)  # 4 identical frames
    video = F.conv3d(clip, w3, stride=(2, 4, 4))
    image = F.conv2d(frame, w, stride=4)
    for t in range(video.shape[2]):
        torch.testing.assert_close(video[:, :, t], image)
    assert torch.equal(layers.collapse_patch_embed_3d(w3), w)  # the exact inverse (halves add back up)
    with pytest.raises(ValueError, match=r"\[D, C, kh, kw\]"):
        layers.inflate_patch_embed_3d(w3, 2)


def test_patch_kernel_resample_is_timms():
    assert layers.resample_patch_embed is timm.layers.resample_patch_embed
    w = torch.randn(4, 3, 14, 14)
    assert layers.resample_patch_embed(w, [16, 16]).shape == (4, 3, 16, 16)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_window_partition_matches_timm_sam_and_unpartition_restores_the_grid(hw):
    x = torch.randn(2, *hw, 6)
    windows, padded = layers.window_partition(x, 3)
    ref, ref_padded = sam.window_partition(x, 3)
    assert padded == ref_padded == (9, 9 if hw[1] == 8 else 12)
    assert torch.equal(windows, ref.reshape(-1, 9, 6))
    assert torch.equal(layers.window_unpartition(windows, 3, padded, hw), x)


# ----------------------------------------------------------------------------- decomposed relative positions
@pytest.mark.parametrize("q_size,k_size,rows", [(5, 5, 9), (8, 8, 9), (4, 8, 15)])
def test_get_rel_pos_matches_timm_in_fp32_including_resize(q_size, k_size, rows):
    table = torch.randn(rows, 8)
    ours = layers.get_rel_pos(q_size, k_size, table)
    torch.testing.assert_close(ours, sam.get_rel_pos(q_size, k_size, table), rtol=1e-6, atol=1e-6)


def test_get_rel_pos_resizes_low_precision_tables_in_fp32_unlike_timm():
    table = torch.randn(15, 8).bfloat16()
    exact = sam.get_rel_pos(12, 12, table.float())  # fp32 reference (resize 15 -> 23 rows)
    ours = layers.get_rel_pos(12, 12, table)
    timm_bf16 = sam.get_rel_pos(12, 12, table)
    assert torch.equal(ours, exact.bfloat16())  # only the final rounding
    assert not torch.equal(timm_bf16, exact.bfloat16())  # timm interpolates in bf16
    assert (timm_bf16.float() - exact).abs().mean() > (ours.float() - exact).abs().mean()


def test_decomposed_bias_matches_timm_and_detectron2_style_add():
    b, heads, d = 2, 3, 8
    q = torch.randn(b, heads, 4 * 5, d)
    rel_h, rel_w = torch.randn(7, d), torch.randn(9, d)
    ours = layers.decomposed_rel_pos_bias(q, rel_h, rel_w, (4, 5))
    ref = sam.get_decomposed_rel_pos_bias(q.reshape(b * heads, 20, d), rel_h, rel_w, (4, 5), (4, 5))
    torch.testing.assert_close(ours, ref.reshape(b, heads, 20, 20))
    attn = torch.randn(b * heads, 20, 20)
    added = layers.add_decomposed_rel_pos(attn, q.reshape(b * heads, 20, d), rel_h, rel_w, (4, 5), (4, 5))
    torch.testing.assert_close(added, attn + ref)


# ----------------------------------------------------------------------------- BEiT bias tables
def test_bias_table_resize_is_timms_simple_resize_and_differs_from_unilm_resize():
    old, new = (4, 4), (6, 6)
    table = torch.randn(layers.rel_pos_table_size(old, True), 3)
    shape = (layers.rel_pos_table_size(new, True), 3)
    ours = layers.resize_bias_table(table, old, new, class_token=True)
    assert torch.equal(ours, resize_rel_pos_bias_table_simple(table, new, shape))
    assert torch.equal(ours[-3:], table[-3:])  # CLS rows kept
    unilm = resize_rel_pos_bias_table(table, new, shape)  # BEiT fine-tuning's geometric resample
    assert unilm.shape == ours.shape and not torch.allclose(unilm[:-3], ours[:-3], atol=1e-3)


def test_bias_table_resize_handles_non_square_windows_that_timm_takes_for_square():
    old, new = (3, 5), (4, 6)
    table = torch.ones(layers.rel_pos_table_size(old, False), 2) * torch.tensor([0.5, -2.0])
    shape = (layers.rel_pos_table_size(new, False), 2)
    with pytest.raises(Exception):
        resize_rel_pos_bias_table_simple(table, new, shape)  # infers a square 6x6 source from 45 rows
    ours = layers.resize_bias_table(table, old, new, class_token=False)
    assert ours.shape == shape
    torch.testing.assert_close(ours, torch.ones(shape) * torch.tensor([0.5, -2.0]))  # bicubic keeps constants
    with pytest.raises(ValueError, match="45 rows, expected 49"):
        layers.resize_bias_table(table, (4, 4), new, class_token=False)


def test_relative_position_bias_module_gives_per_head_bias_for_any_grid():
    rpb = layers.RelativePositionBias((3, 3), num_heads=2)
    with torch.no_grad():
        rpb.relative_position_bias_table.normal_()
    assert rpb((3, 3)).shape == (2, 10, 10) and rpb((4, 5)).shape == (2, 21, 21)
    index = timm.layers.gen_relative_position_index((3, 3), class_token=True)
    torch.testing.assert_close(rpb((3, 3))[1], rpb.relative_position_bias_table[index, 1])


# ----------------------------------------------------------------------------- attention kernels
def test_attention_kernels_agree_and_auto_xformers_falls_back_to_sdpa_off_cuda():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    bias = torch.randn(1, 3, 10, 10)
    scale = 8 ** -0.5
    ref = attn_mod.attention_fn("math")(q, k, v, bias, 0.0, scale)
    sdpa = attn_mod.attention_fn("sdpa")(q, k, v, bias, 0.0, scale)
    torch.testing.assert_close(sdpa, ref, rtol=1e-5, atol=1e-5)
    fallback = attn_mod.attention_fn("xformers", forced=False)  # what "auto" picks on a CUDA machine
    torch.testing.assert_close(fallback(q, k, v, bias, 0.0, scale), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no attention kernel named 'flash'"):
        attn_mod.attention_fn("flash")
    additive = layers.as_additive_mask(torch.tensor([True, False]), torch.float32)
    assert additive.tolist() == [0.0, float("-inf")]


def test_auto_resolves_to_sdpa_without_cuda_and_to_xformers_only_without_own_bias(monkeypatch):
    monkeypatch.delenv(layers.ATTN_IMPL_ENV, raising=False)
    assert layers.resolve_attn_impl("auto", "cpu") == "sdpa"
    monkeypatch.setattr(attn_mod, "_xformers_ops", lambda: object())  # pretend xformers is installed
    assert layers.resolve_attn_impl("auto", "cuda") == "xformers"
    assert layers.resolve_attn_impl("auto", "cuda", has_bias=True) == "sdpa"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        layers.resolve_attn_impl("xformers", "cpu")
