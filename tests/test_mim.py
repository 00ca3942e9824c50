"""EVA MIM: block masks, teachers, the student/loss, data and the paper recipe's size."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import eva_core
from eva_core.mim import (CLIP_MEAN, CLIP_STD, BlockMaskGenerator, ClipTeacher, EvaMIM, EvaTeacher,
                          MaskedImageDataset, MIMTransform, negative_cosine_loss, pretraining_cost,
                          resample_token_grid)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_encoder(**kw):
    return eva_core.create_model("eva_tiny_patch16_224", num_classes=0, use_mask_token=True,
                                 use_fc_norm=False, global_pool="token", **{**TINY, **kw})


def tiny_clip(**kw):
    vision_cfg = dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16)
    return ClipTeacher("ViT-L-14", vision_cfg=vision_cfg, embed_dim=24, **kw)


# ------------------------------------------------------------------ masking
def test_mask_generator_masks_exactly_105_of_256_patches_in_blocks():
    gen = BlockMaskGenerator((16, 16), 105, min_num_patches=16, min_aspect=0.3)
    rng = np.random.default_rng(0)
    masks = [gen(rng) for _ in range(300)]
    assert all(m.shape == (16, 16) and m.dtype == bool and m.sum() == 105 for m in masks)
    # block-wise: masked patches have mostly masked 4-neighbours (random masking gives ~40%)
    m = np.stack(masks)
    nb = (m[:, 1:] & m[:, :-1]).sum() * 2 + (m[:, :, 1:] & m[:, :, :-1]).sum() * 2
    assert nb / (m.sum() * 4) > 0.6, nb / (m.sum() * 4)
    # positions vary from mask to mask
    assert len({m.tobytes() for m in masks}) > 250


def test_mask_generator_is_reproducible_from_seed_and_generator():
    gen = BlockMaskGenerator(14, 75)
    assert np.array_equal(gen(rng=123), gen(rng=123))
    a = [gen(np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(gen(rng=1), gen(rng=2))
    g1, g2 = BlockMaskGenerator(14, 75, seed=9), BlockMaskGenerator(14, 75, seed=9)
    assert all(np.array_equal(g1(), g2()) for _ in range(5))


@pytest.mark.parametrize("grid,count,min_block", [((14, 14), 75, 16), ((8, 8), 26, 4), ((3, 5), 15, 16),
                                                  ((2, 40), 33, 4), ((16, 16), 0, 16), ((1, 1), 1, 1),
                                                  ((7, 9), 62, 16)])
def test_mask_generator_exact_count_on_any_grid(grid, count, min_block):
    gen = BlockMaskGenerator(grid, count, min_num_patches=min_block)
    for s in range(40):
        m = gen(s)
        assert m.shape == grid and int(m.sum()) == count


def test_mask_generator_from_ratio_and_clear_errors():
    assert BlockMaskGenerator.from_ratio(16, 0.41).num_masking_patches == 105
    with pytest.raises(ValueError, match=r"num_masking_patches must be in \[0, 256\]"):
        BlockMaskGenerator(16, 257)
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockMaskGenerator((4, 4), -1)
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMaskGenerator(16, 10, min_aspect=0.0)
    with pytest.raises(ValueError, match="input_size"):
        BlockMaskGenerator((4, 4, 4), 3)
    with pytest.raises(TypeError, match="rng must be"):
        BlockMaskGenerator(4, 3)("seed")


# ------------------------------------------------------------------ teachers
def test_clip_teacher_matches_manual_open_clip_computation():
    torch.manual_seed(0)
    teacher = tiny_clip(precision="fp32")
    v = teacher.visual
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([v.class_embedding.expand(2, 1, -1), t], 1) + v.positional_embedding
        t = v.transformer(v.ln_pre(t))
        manual = v.ln_post(t)[:, 1:] @ v.proj  # patch tokens (no CLS) after ln_post, projected
    feats = teacher(x)
    assert feats.shape == (2, 16, 24) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, manual)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training  # always eval: no dropout in targets


def test_clip_teacher_loads_weights_file_and_rejects_a_foreign_one(tmp_path):
    torch.manual_seed(0)
    src = tiny_clip(precision="fp32")
    full = {f"visual.{k}": v for k, v in src.visual.state_dict().items()}
    full["logit_scale"] = torch.tensor(4.6)  # text-side keys of a full CLIP file are ignored
    path = tmp_path / "clip.pt"
    torch.save(full, path)
    torch.manual_seed(1)
    loaded = tiny_clip(precision="fp32", weights=str(path))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), src(x))
    torch.save({"visual.conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match open_clip"):
        tiny_clip(weights=str(tmp_path / "bad.pt"))


def test_teacher_low_precision_resize_renormalise_and_grid_resampling():
    torch.manual_seed(0)
    t32 = tiny_clip(precision="fp32")
    t16 = tiny_clip(precision="bf16")
    t16.load_state_dict(t32.state_dict())
    x = torch.randn(2, 3, 32, 32)
    ref = t32(x)
    low = t16(x)
    assert low.dtype == torch.float32 and (low - ref).abs().max() < 0.1 * ref.abs().max()
    # student 8x8 grid from a 4x4 teacher grid: bilinear upsampling on the 2-D grid
    up = t32(x, grid_size=(8, 8))
    assert up.shape == (2, 64, 24)
    # student 2x2 grid: area = exact mean of 2x2 teacher cells
    down = t32(x, grid_size=(2, 2))
    g = ref.reshape(2, 4, 4, 24)
    torch.testing.assert_close(down[:, 0], g[:, :2, :2].mean((1, 2)))
    # a student crop at 64 px is resized to the teacher's 32 inside the teacher
    assert t32(torch.randn(1, 3, 64, 64)).shape == (1, 16, 24)
    # renormalisation: ImageNet-normalised input == CLIP-normalised input
    from eva_core.data import IMAGENET_MEAN, IMAGENET_STD
    tin = tiny_clip(precision="fp32", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    tin.load_state_dict(t32.state_dict())
    raw = torch.rand(1, 3, 32, 32)
    m_in, s_in = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    m_c, s_c = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(tin((raw - m_in) / s_in), t32((raw - m_c) / s_c), atol=1e-4, rtol=1e-4)


def test_impossible_teacher_student_pairings_fail_clearly():
    tokens = torch.randn(1, 16, 8)
    with pytest.raises(ValueError, match="aspect ratios"):
        resample_token_grid(tokens, (4, 4), (2, 4))
    with pytest.raises(ValueError, match="expected 3x5"):
        resample_token_grid(tokens, (3, 5), (3, 5))

    class Odd(torch.nn.Module):  # 15 patch tokens and no grid: cannot be laid out as a square
        num_features = 8
        num_prefix_tokens = 1

        def forward_features(self, x):
            return torch.randn(x.shape[0], 16, 8)

    with pytest.raises(ValueError, match="square token grid"):
        EvaTeacher(Odd())(torch.randn(1, 3, 32, 32), grid_size=(4, 4))
    with pytest.raises(ValueError, match="precision"):
        tiny_clip(precision="fp8")


def test_eva_teacher_from_checkpoint_gives_patch_tokens(tmp_path):
    from eva_core.checkpoint import save_atomic

    torch.manual_seed(0)
    net = eva_core.create_model("eva_tiny_patch16_224", num_classes=3, **TINY)
    path = save_atomic(net.state_dict(), tmp_path / "t.safetensors")
    teacher = EvaTeacher("eva_tiny_patch16_224", checkpoint=str(path),
                         model_overrides=dict(num_classes=3, **TINY))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval().forward_features(x)[:, 1:]
    torch.testing.assert_close(teacher(x), expected)


# ------------------------------------------------------------------ student + loss
def test_loss_is_minus_one_when_predictions_equal_targets_and_gradient_raises_cosine():
    t = torch.randn(10, 6)
    loss, cos = negative_cosine_loss(t * 3.0, t)  # scale-invariant
    assert torch.isclose(loss, torch.tensor(-1.0)) and torch.isclose(cos, torch.tensor(1.0))
    loss, _ = negative_cosine_loss(-t, t)
    assert torch.isclose(loss, torch.tensor(1.0))
    pred = torch.randn(10, 6, requires_grad=True)
    loss, cos0 = negative_cosine_loss(pred, t)
    loss.backward()
    with torch.no_grad():
        _, cos1 = negative_cosine_loss(pred - 0.1 * pred.grad, t)  # one gradient-descent step
    assert cos1 > cos0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l16, _ = negative_cosine_loss(pred.bfloat16(), t.bfloat16())
    assert l16.dtype == torch.float32


def test_eva_mim_trains_on_masked_tokens_only_and_pushes_cosine_up():
    torch.manual_seed(0)
    model = EvaMIM(tiny_encoder(), tiny_clip(precision="fp32"))
    x = torch.randn(4, 3, 32, 32)
    mask = torch.from_numpy(np.stack([BlockMaskGenerator(8, 26, min_num_patches=4)(i).reshape(-1)
                                      for i in range(4)]))
    out = model({"image": x, "mask": mask})
    assert set(out) == {"loss_mim", "cos_sim"} and torch.isclose(out["loss_mim"], -out["cos_sim"])
    # the loss only sees masked positions: changing targets at visible patches changes nothing
    target = model.teacher(x, grid_size=(8, 8))
    noisy = target.clone()
    noisy[~mask] = torch.randn_like(noisy[~mask])
    a = model({"image": x, "mask": mask, "target": target})["loss_mim"]
    b = model({"image": x, "mask": mask, "target": noisy})["loss_mim"]
    torch.testing.assert_close(a, b)
    assert torch.isclose(a, out["loss_mim"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = model({"image": x, "mask": mask})["loss_mim"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.2
    assert all(p.grad is None for p in model.teacher.parameters())
    model.eval()
    ev = model({"image": x, "mask": mask})
    assert ev["pred"].shape == (4, 64, 24) and ev["cos_sim"].shape == (4,)


def test_student_state_dict_uses_official_eva_mim_layout_and_round_trips():
    torch.manual_seed(0)
    model = EvaMIM(tiny_encoder(), tiny_clip())
    sd = model.state_dict()
    keys = list(sd)
    assert keys[:5] == ["cls_token", "mask_token", "pos_embed", "patch_embed.proj.weight",
                        "patch_embed.proj.bias"]
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "norm.weight",
            "lm_head.weight", "lm_head.bias"} <= set(keys)
    assert not any(k.startswith(("encoder.", "teacher.", "visual.")) for k in keys)
    assert sd["lm_head.weight"].shape == (24, 32)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in sd.values())
    other = EvaMIM(tiny_encoder(), None, target_dim=24)
    other.load_state_dict(sd)  # strict
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    # the optimizer helpers see the tokens as no-decay under the wrapper's names
    assert {"encoder.pos_embed", "encoder.cls_token", "encoder.mask_token"} <= model.no_weight_decay()


def test_bad_batches_fail_with_clear_errors():
    model = EvaMIM(tiny_encoder(), tiny_clip())
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(KeyError, match="no 'mask'"):
        model({"image": x})
    with pytest.raises(TypeError, match="bool tensor"):
        model({"image": x, "mask": torch.zeros(2, 64)})
    with pytest.raises(ValueError, match=r"expected \[2, 64\]"):
        model({"image": x, "mask": torch.zeros(2, 49, dtype=torch.bool)})
    with pytest.raises(ValueError, match="use_mask_token"):
        EvaMIM(eva_core.create_model("eva_tiny_patch16_224", num_classes=0, **TINY), tiny_clip())
    with pytest.raises(ValueError, match="target_dim"):
        EvaMIM(tiny_encoder(), tiny_clip(), target_dim=7)


# ------------------------------------------------------------------ data
def test_same_crop_for_student_and_teacher_and_mask_in_every_sample(tmp_path):
    from PIL import Image

    from eva_core.data import ImageFolderDataset
    from eva_core.data.loader import SeededSampleDataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            arr = np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    tf = MIMTransform(img_size=32, teacher_img_size=32, interpolation="bilinear")
    ds = MaskedImageDataset(ImageFolderDataset(str(tmp_path), transform=tf),
                            BlockMaskGenerator(8, 26, min_num_patches=4))
    seeded = SeededSampleDataset(ds, seed=3)
    s = seeded[(0, 7)]
    assert set(s) == {"image", "teacher_image", "label", "mask"}
    assert s["mask"].dtype == torch.bool and s["mask"].shape == (64,) and int(s["mask"].sum()) == 26
    torch.testing.assert_close(s["image"], s["teacher_image"])  # same box, flip and normalisation
    again = seeded[(0, 7)]
    assert torch.equal(again["mask"], s["mask"]) and torch.equal(again["image"], s["image"])
    # the same image at the next stream position: a new mask and a new crop
    later = seeded[(0, 8)]
    assert not torch.equal(later["mask"], s["mask"])
    assert not torch.equal(later["image"], s["image"])
    torch.testing.assert_close(later["image"], later["teacher_image"])
    # teacher view at its own resolution: the same crop, just resampled
    tf2 = MIMTransform(img_size=32, teacher_img_size=64, hflip=1.0, interpolation="bilinear")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    views = tf2(img)
    down = torch.nn.functional.interpolate(views["teacher_image"][None], size=(32, 32), mode="area")[0]
    assert (down - views["image"]).abs().mean() < 0.15
    # the unreadable file is skipped by the shared dataset, never crashing the loader
    assert all(ds[i]["image"].shape == (3, 32, 32) for i in range(len(ds)))
    assert ds.num_skipped >= 1


# ------------------------------------------------------------------ recipe
def test_paper_recipe_counts_1012m_params_and_flops_on_meta_device():
    from eva_core.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(REPO, "configs/pretrain/eva_g_merged30m.py"))
    assert cfg.optimizer.lr == 1e-3
    assert tuple(cfg.optimizer.betas) == (0.9, 0.98) and cfg.optimizer.eps == 1e-6
    assert cfg.optimizer.weight_decay == 0.05 and cfg.train.clip_grad == 3.0
    assert cfg.train.max_iter == 150 * (29_600_000 // 4096)
    assert cfg.lr_multiplier.warmup_iters == 2 * (29_600_000 // 4096)
    assert cfg.lr_multiplier.warmup_factor == pytest.approx(1e-3)
    assert cfg.lr_multiplier.min_ratio == pytest.approx(1e-2)
    assert cfg.model.encoder.drop_path_rate == 0.1 and cfg.train.zero_stage == 1
    assert cfg.train.amp.enabled and cfg.deepspeed["fp16"]["initial_scale_power"] == 16
    mg = cfg.dataloader.train.dataset.mask_generator
    assert (mg.input_size, mg.num_masking_patches, mg.min_num_patches) == (16, 105, 16)
    assert tuple(cfg.dataloader.train.dataset.dataset.transform.scale) == (0.2, 1.0)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert all(p.is_meta for p in model.parameters())
    cost = pretraining_cost(model)
    assert cost["params"] == 1_012_229_632
    assert cost["teacher_params"] == 303_966_208  # CLIP-L/14 vision tower
    assert 530e9 < cost["student_forward_flops"] < 540e9  # ~267 GMACs
    assert 160e9 < cost["teacher_forward_flops"] < 165e9  # ~81 GMACs
    from eva_core.optim.layer_decay import param_groups_layer_decay
    no_decay = {n for g in param_groups_layer_decay(model, weight_decay=0.05) if g["weight_decay"] == 0
                for n in g["param_names"]}
    assert {"encoder.pos_embed", "encoder.cls_token", "encoder.mask_token", "lm_head.bias"} <= no_decay
    assert "lm_head.weight" not in no_decay
