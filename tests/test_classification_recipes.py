"""The EVA fine-tuning recipes carry the numbers of docs/recipes/classification.md and build what they say."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from eva_core.classification import ImageClassifier
from eva_core.config import LazyConfig, instantiate

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"

# stage: (lr, layer decay, betas, eps, epochs, warmup, effective batch, images, label smoothing,
#         cutmix, rrc scale, ema, image size)
STAGES = {
    "in21k_ft_224": (1e-4, 0.85, (0.9, 0.98), 1e-6, 60, 15, 4096, 14_197_122, 0.1, 1.0, (0.5, 1.0), None,
                     224),
    "in1k_ft_336": (3e-5, 0.95, (0.9, 0.999), 1e-8, 10, 2, 512, 1_281_167, 0.3, None, (0.08, 1.0), 0.9999,
                    336),
    "in1k_ft_560": (3e-5, 0.95, (0.9, 0.999), 1e-8, 15, 2, 512, 1_281_167, 0.3, None, (0.08, 1.0), 0.9999,
                    560),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_recipe_numbers_match_the_paper(name):
    lr, lrd, betas, eps, epochs, warmup, batch, images, ls, cutmix, scale, ema, size = STAGES[name]
    cfg = LazyConfig.load(CONFIGS / f"{name}.py")
    opt = cfg.optimizer
    assert (opt.lr, opt.params.layer_decay, tuple(opt.betas), opt.eps) == (lr, lrd, betas, eps)
    assert opt.weight_decay == opt.params.weight_decay == 0.05
    # effective batch = per-step batch over all GPUs x accumulation; max_iter counts optimizer steps
    assert cfg.dataloader.train.total_batch_size * cfg.train.grad_accum_steps == batch
    assert cfg.train.max_iter == round(epochs * images / batch)
    assert cfg.lr_multiplier.warmup_fraction == pytest.approx(warmup / epochs)
    net = cfg.model.net
    assert (net.drop_path_rate, net.global_pool, cfg.model.freeze_patch_embed) == (0.4, "avg", True)
    assert cfg.train.ema.enabled == (ema is not None) and (ema is None or cfg.train.ema.decay == ema)
    train_tf, test_tf = cfg.dataloader.train.dataset.transform, cfg.dataloader.test.dataset.transform
    assert tuple(train_tf.scale) == scale and train_tf.img_size == test_tf.img_size == size
    assert train_tf.auto_augment.startswith("rand-m9-mstd0.5") and test_tf.crop_pct == 1.0
    if cutmix:
        mix = cfg.model.mixup
        assert (mix.cutmix_alpha, mix.mixup_alpha, mix.prob, mix.label_smoothing) == (1.0, 0.0, 1.0, ls)
        assert mix.num_classes == net.num_classes == 21841
    else:
        assert cfg.model.mixup is None and cfg.model.criterion.smoothing == ls


def _build_on_meta(cfg):
    cfg.model.net.checkpoint_path = None  # nothing to load on the meta device
    with torch.device("meta"):
        model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


def test_in21k_recipe_builds_eva_giant_with_layer_decay_on_meta():
    cfg = LazyConfig.load(CONFIGS / "in21k_ft_224.py")
    model, opt = _build_on_meta(cfg)
    assert isinstance(model, ImageClassifier) and isinstance(model.mixup, Mixup)
    assert isinstance(model.criterion, SoftTargetCrossEntropy)
    assert model.net.num_layers == 40 and model.net.head.out_features == 21841
    scale = {}
    for g in opt.param_groups:
        for n in g["param_names"]:
            scale[n] = g["lr_scale"]
    assert scale["net.blocks.0.attn.qkv.weight"] == pytest.approx(0.85 ** 40)
    assert scale["net.blocks.39.mlp.fc1.weight"] == pytest.approx(0.85 ** 1)
    assert scale["net.pos_embed"] == pytest.approx(0.85 ** 41)
    assert scale["net.head.weight"] == scale["net.fc_norm.weight"] == 1.0
    # frozen patch embedding: not handed to the optimizer at all
    assert not any(n.startswith("net.patch_embed") for n in scale)
    assert not any(p.requires_grad for p in model.net.patch_embed.parameters())


def test_in1k_recipe_builds_at_560_with_label_smoothing_on_meta():
    cfg = LazyConfig.load(CONFIGS / "in1k_ft_560.py")
    model, opt = _build_on_meta(cfg)
    assert isinstance(model.criterion, LabelSmoothingCrossEntropy) and model.criterion.smoothing == 0.3
    assert model.net.pos_embed.shape == (1, 1 + 40 * 40, 1408)
    assert model.net.grad_checkpointing and not LazyConfig.load(CONFIGS / "in1k_ft_336.py").model.net.get(
        "grad_checkpointing", False)
    lrs = {g["layer_id"]: g["lr_scale"] for g in opt.param_groups}
    assert lrs[1] == pytest.approx(0.95 ** 40) and lrs[41] == 1.0


def test_in1k_recipe_loads_the_21k_checkpoint_with_pos_embed_resampled(tmp_path):
    """The recipe's checkpoint hook, on a tiny stand-in: 224-style grid 8x8 -> 12x12 and a new head."""
    import eva_core

    tiny = dict(name="eva_tiny_patch16_224", patch_size=4, embed_dim=32, depth=2, num_heads=2)
    src = eva_core.create_model(tiny["name"], img_size=32, num_classes=7,
                                **{k: v for k, v in tiny.items() if k != "name"})
    ckpt = tmp_path / "in21k_tiny.pth"
    torch.save({"model": src.state_dict()}, ckpt)
    cfg = LazyConfig.load(CONFIGS / "in1k_ft_336.py")
    cfg.model.net.update(tiny)
    cfg.model.net.img_size = 48
    cfg.model.net.num_classes = 5
    cfg.model.net.checkpoint_path = str(ckpt)
    model = instantiate(cfg.model)
    assert model.net.pos_embed.shape == (1, 1 + 12 * 12, 32)
    report = model.net.load_report
    assert "net" not in report.loaded and "blocks.0.attn.qkv.weight" in report.loaded
    assert torch.equal(model.net.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert model.net.head.out_features == 5  # the 7-class head was not forced in
    cfg.optimizer.params.model = model
    groups = instantiate(cfg.optimizer).param_groups
    assert min(g["lr_scale"] for g in groups) == pytest.approx(0.95 ** 3)  # L = 2 -> pos_embed 0.95^3
