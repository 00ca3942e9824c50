"""The EVA video encoder (docs/recipes/video.md#video-encoder): tubelet patch embedding, frame-major
tokens, inflation from image checkpoints, position-table resampling and the release's key layout.

``video`` is imported inside a fixture, not at collection: importing it registers its checkpoint
layouts and models with eva_core, which the core's own tests enumerate.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import eva_core

IMG, PATCH, DIM, DEPTH, HEADS = 28, 7, 32, 2, 2  # a 4x4 grid, 16 patches per frame


@pytest.fixture(scope="module")
def video():
    import video as video_pkg

    return video_pkg


def tiny_video(video, **kw):
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_frames=4,
                num_classes=5)
    return video.create_video_model("eva_video_tiny_patch14_224_f8", **{**args, **kw}).eval()


def tiny_image(**kw):
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=5)
    return eva_core.create_model("eva_tiny_patch14_224", **{**args, **kw}).eval()


def release_keys(depth: int) -> list[str]:
    """Key names of the EVA-01 video release's VisionTransformer (its module tree, written out by hand)."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
    for i in range(depth):
        keys += [f"blocks.{i}.{k}" for k in (
            "norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight",
            "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
            "mlp.fc2.weight", "mlp.fc2.bias")]
    return keys


# ----------------------------------------------------------------------------- tokens and inflation
def test_tokens_are_frame_major_cls_first(video):
    model = tiny_video(video)
    clip = torch.randn(2, 4, 3, IMG, IMG)
    tokens, grid = model.patch_embed(clip)
    assert grid == (4, 4, 4) and tokens.shape == (2, 64, DIM)
    kernel2d = model.patch_embed.proj.weight[:, :, 0]
    bias = model.patch_embed.proj.bias
    for t in range(4):
        frame = F.conv2d(clip[:, t], kernel2d, bias, stride=PATCH).flatten(2).transpose(1, 2)  # [B, 16, D]
        torch.testing.assert_close(tokens[:, 16 * t:16 * (t + 1)], frame, atol=1e-5, rtol=1e-5)
    x, _ = model.embed(clip)
    assert x.shape == (2, 1 + 64, DIM)
    torch.testing.assert_close(x[:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(2, -1, -1)[:, 0])


@pytest.mark.parametrize("tubelet", [1, 2])
def test_identical_frames_embed_like_the_image_model_after_inflation(video, tubelet):
    image = tiny_image()
    model = tiny_video(video, tubelet_size=tubelet)
    report = video.load_video_checkpoint(model, image.state_dict())
    assert report.layout == "eva_image_to_video" and not report.missing and not report.mismatched
    frame = torch.randn(2, 3, IMG, IMG)
    clip = frame.unsqueeze(1).repeat(1, 4, 1, 1, 1)
    tokens, grid = model.patch_embed(clip)
    assert grid == (4 // tubelet, 4, 4)
    per_image = image.patch_embed(frame).flatten(1, 2)  # NHWC -> [B, 16, D]
    for t in range(grid[0]):
        torch.testing.assert_close(tokens[:, 16 * t:16 * (t + 1)], per_image, atol=1e-5, rtol=1e-5)
    # the position table is the image table repeated for every token frame
    pos = model.pos_embed.detach()
    assert pos.shape == (1, 1 + grid[0] * 16, DIM)
    for t in range(grid[0]):
        torch.testing.assert_close(pos[:, 1 + 16 * t:1 + 16 * (t + 1)], image.pos_embed[:, 1:].detach())


def test_tubelet_2_kernel_sums_over_time_to_the_image_kernel(video):
    image = tiny_image()
    model = tiny_video(video, tubelet_size=2)
    video.load_video_checkpoint(model, image.state_dict())
    w3d = model.patch_embed.proj.weight.detach()
    assert w3d.shape == (DIM, 3, 2, PATCH, PATCH)
    torch.testing.assert_close(w3d.sum(dim=2), image.patch_embed.proj.weight.detach())
    torch.testing.assert_close(w3d[:, :, 0], w3d[:, :, 1])


@pytest.mark.parametrize("wrap", ["plain", "mim_file"])
def test_one_frame_video_model_from_an_image_checkpoint_reproduces_the_image_model(video, tmp_path, wrap):
    image = tiny_image()
    with torch.no_grad():  # non-trivial norms and head so the comparison covers them
        for n, p in image.named_parameters():
            if "norm" in n or n.startswith("head"):
                p.add_(0.1 * torch.randn_like(p))
    sd = image.state_dict()
    if wrap == "mim_file":
        # EVA-01 MIM layout: final norm instead of fc_norm, mask_token and lm_head, wrapped in "model"
        sd = {("norm." + k[len("fc_norm."):] if k.startswith("fc_norm.") else k): v for k, v in sd.items()}
        sd |= {"mask_token": torch.zeros(1, 1, DIM), "lm_head.weight": torch.zeros(8, DIM),
               "lm_head.bias": torch.zeros(8)}
        sd = {"model": sd}
    path = tmp_path / "image.pth"
    torch.save(sd, path)
    model = tiny_video(video, num_frames=1)
    report = video.load_video_checkpoint(model, path, min_loaded=1.0)
    assert report.source == str(path) and not report.missing and not report.unexpected
    frames = torch.randn(3, 1, 3, IMG, IMG)
    with torch.no_grad():
        want_feats = image.forward_features(frames[:, 0])
        got_feats = model.forward_features(frames)
        assert (got_feats - want_feats).abs().max() <= 1e-5
        assert (model(frames) - image(frames[:, 0])).abs().max() <= 1e-5


def test_plain_core_loader_infers_frames_when_the_image_grid_is_kept(video):
    image = tiny_image()
    model = tiny_video(video, num_frames=4)
    report = eva_core.load_checkpoint(model, image.state_dict(), layout="eva_image_to_video", min_loaded=1.0)
    assert not report.missing and not report.mismatched
    # a different grid cannot be split from a flat token count: a clear error points to the video loader
    other = tiny_video(video, img_size=21)  # 3x3 grid x 4 frames = 36 tokens: not whole 4x4 frames
    with pytest.raises(ValueError, match="load_video_checkpoint"):
        eva_core.load_checkpoint(other, image.state_dict(), layout="eva_image_to_video")
    report = video.load_video_checkpoint(other, image.state_dict(), min_loaded=1.0)
    assert other.pos_embed.shape == (1, 1 + 4 * 9, DIM) and "image grid (4, 4) -> (3, 3)" in str(report)


# ----------------------------------------------------------------------------- position-table resampling
def test_pos_embed_resampled_trilinearly_for_other_frame_counts_and_sizes(video):
    model = tiny_video(video, num_frames=4)
    with torch.no_grad():
        table = model.resized_pos_embed((8, 6, 6))
    assert table.shape == (1, 1 + 8 * 36, DIM)
    grid = model.pos_embed[:, 1:].detach().reshape(1, 4, 4, 4, DIM).permute(0, 4, 1, 2, 3)
    want = F.interpolate(grid, size=(8, 6, 6), mode="trilinear", align_corners=False)
    torch.testing.assert_close(table[:, 1:], want.permute(0, 2, 3, 4, 1).reshape(1, -1, DIM))
    torch.testing.assert_close(table[:, :1], model.pos_embed[:, :1].detach())
    # the model runs on 8 frames at 42 px (6x6 grid) with that table
    assert model(torch.randn(1, 8, 3, 42, 42)).shape == (1, 5)


def test_an_eight_frame_video_file_loads_into_a_sixteen_frame_model(video, tmp_path):
    stage1 = tiny_video(video, num_frames=4)
    path = tmp_path / "stage1.pth"
    torch.save({"model": stage1.state_dict()}, path)
    stage2 = tiny_video(video, num_frames=8)
    report = video.load_video_checkpoint(stage2, path, min_loaded=1.0)
    assert report.layout == "eva_video" and not report.mismatched
    torch.testing.assert_close(stage2.pos_embed.detach(), stage1.resized_pos_embed((8, 4, 4)).detach())
    # eva_core's loader alone cannot know the split of 1 + 64 -> 1 + 128 tokens and says so
    with pytest.raises(ValueError, match="load_video_checkpoint"):
        eva_core.load_checkpoint(tiny_video(video, num_frames=8), path)


# ----------------------------------------------------------------------------- release layout
@pytest.mark.parametrize("wrapper", ["model", "module", "ddp_prefix"])
def test_a_file_in_the_eva01_video_key_layout_loads_with_nothing_missing_or_unexpected(video, tmp_path,
                                                                                     wrapper):
    model = tiny_video(video, num_frames=4)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    keys = release_keys(DEPTH)
    assert sorted(keys) == sorted(shapes), "our parameter names are the release's"
    assert shapes["patch_embed.proj.weight"] == (DIM, 3, 1, PATCH, PATCH)
    assert shapes["pos_embed"] == (1, 1 + 4 * 16, DIM)
    sd = {k: torch.randn(shapes[k]) for k in keys}
    obj = {"module." + k: v for k, v in sd.items()} if wrapper == "ddp_prefix" else {wrapper: sd}
    path = tmp_path / "eva_video_k400.pth"
    torch.save(obj, path)
    fresh = tiny_video(video, num_frames=4)
    report = eva_core.load_checkpoint(fresh, path, strict=True)
    assert report.layout == "eva_video" and report.loaded_fraction == 1.0
    assert not report.missing and not report.unexpected and not report.mismatched
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, sd[k])


# ----------------------------------------------------------------------------- registry and checkpointing
def test_registry_holds_a_tiny_member_and_eva_g_at_8_and_16_frames(video):
    assert video.list_video_models() == ["eva_video_giant_patch14_224_f16", "eva_video_giant_patch14_224_f8",
                                         "eva_video_tiny_patch14_224_f8"]
    with torch.device("meta"):
        g8 = video.create_video_model("eva_video_giant_patch14_224_f8")
        g16 = video.create_video_model("eva_video_giant_patch14_224_f16")
        img = eva_core.create_model("eva_giant_patch14_224", num_classes=722)
    assert g8.patch_embed.proj.weight.shape == (1408, 3, 1, 14, 14)
    assert g8.pos_embed.shape == (1, 1 + 8 * 256, 1408) and g16.pos_embed.shape == (1, 1 + 16 * 256, 1408)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the video model is the image model plus 7 more frames of position table (tubelet-1 kernel: same size)
    assert count(g8) - count(img) == 7 * 256 * 1408
    with pytest.raises(ValueError, match="unknown video model"):
        video.create_video_model("eva_giant_patch14_224")


def test_activation_checkpointing_gives_the_same_loss_and_gradients(video):
    model = tiny_video(video).train()
    clip = torch.randn(2, 4, 3, IMG, IMG)
    loss = model(clip).logsumexp(-1).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    loss2 = model(clip).logsumexp(-1).sum()
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_bad_clips_are_refused_with_the_expected_layout(video):
    model = tiny_video(video, tubelet_size=2)
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        model(torch.randn(2, 3, IMG, IMG))
    with pytest.raises(ValueError, match="multiple of the tubelet 2"):
        model(torch.randn(1, 3, 3, IMG, IMG))
    with pytest.raises(ValueError, match="channels at dim 2"):
        model(torch.randn(1, 4, 4, IMG, IMG))
