"""The EVA video recipes carry the numbers of docs/recipes/video.md and build what they say."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from fvcore.common.param_scheduler import ConstantParamScheduler
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from eva_core.checkpoint import save_atomic
from eva_core.config import LazyConfig, instantiate
from video import MultiViewVideoClassifier, create_video_model
from video.classification import ClipMixup, VideoClassifier

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "video" / "configs"
RECIPE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "recipes" / "video.md"

# stage 2 (paper Table 16): dataset -> (classes, training clips, epochs)
STAGE2 = {"k400": (400, 234_584, 1), "k600": (600, 412_688, 2), "k700": (700, 534_063, 2)}


def _build_on_meta(cfg):
    cfg.model.net.checkpoint_path = None  # nothing to load on the meta device
    cfg.model.pop("head_init_checkpoint", None)
    cfg.model.pop("head_init_rows", None)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


def _lr_scales(opt):
    return {n: g["lr_scale"] for g in opt.param_groups for n in g["param_names"]}


def test_recipe_page_states_the_numbers_the_configs_use():
    page = RECIPE_PAGE.read_text()
    for fact in ("8 frames at 224", "lr 8e-6", "40 epochs (5 warmup)", "batch 256", "drop path 0.3",
                 "mixup 0.8, CutMix 1.0", "label smoothing 0.1", "no layer decay", "16 frames at 224",
                 "lr 1e-6 constant", "layer decay 0.95", "drop path 0.2",
                 "1 epoch on K-400, 2 on K-600 and K-700",
                 "629,395", "234,584", "412,688", "534,063"):
        assert fact in page, f"docs/recipes/video.md lost the recipe fact {fact!r}"


def test_k722_stage1_numbers_match_the_recipe():
    cfg = LazyConfig.load(CONFIGS / "k722_stage1.py")
    opt = cfg.optimizer
    assert (opt.lr, opt.params.layer_decay, tuple(opt.betas), opt.eps) == (8e-6, 1.0, (0.9, 0.98), 1e-6)
    assert opt.weight_decay == opt.params.weight_decay == 0.05
    # effective batch = per-step batch over all GPUs x accumulation; max_iter counts optimizer steps
    assert cfg.dataloader.train.total_batch_size * cfg.train.grad_accum_steps == 256
    assert cfg.train.max_iter == round(40 * 629_395 / 256)
    assert cfg.lr_multiplier.warmup_fraction == pytest.approx(5 / 40)
    net = cfg.model.net
    assert (net.name, net.num_frames, net.num_classes, net.drop_path_rate) == (
        "eva_video_giant_patch14_224_f8", 8, 722, 0.3)
    assert cfg.dataloader.train.dataset.num_frames == cfg.dataloader.test.dataset.num_frames == 8
    mix = cfg.model.mixup
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.prob, mix.label_smoothing, mix.num_classes) == (
        0.8, 1.0, 1.0, 0.1, 722)
    # paper's test: 4 temporal clips x 3 spatial crops
    assert cfg.dataloader.test.dataset.num_clips == 4 and cfg.dataloader.test.dataset.transform.num_crops == 3


@pytest.mark.parametrize("name", sorted(STAGE2))
def test_stage2_numbers_match_the_recipe(name):
    classes, clips, epochs = STAGE2[name]
    cfg = LazyConfig.load(CONFIGS / f"{name}_stage2.py")
    opt = cfg.optimizer
    assert (opt.lr, opt.params.layer_decay, tuple(opt.betas), opt.eps) == (1e-6, 0.95, (0.9, 0.98), 1e-6)
    sched = instantiate(cfg.lr_multiplier)
    assert isinstance(sched, ConstantParamScheduler) and sched(0.0) == sched(0.99) == 1.0
    assert cfg.dataloader.train.total_batch_size * cfg.train.grad_accum_steps == 256
    assert cfg.train.max_iter == round(epochs * clips / 256)
    net = cfg.model.net
    assert (net.name, net.num_frames, net.num_classes, net.drop_path_rate) == (
        "eva_video_giant_patch14_224_f16", 16, classes, 0.2)
    assert net.grad_checkpointing
    assert cfg.model.mixup is None and cfg.model.criterion.smoothing == 0.1
    # encoder from the stage-1 result, head from its K-722 rows
    assert cfg.model.head_init_checkpoint == net.checkpoint_path
    assert cfg.model.head_init_rows.endswith(f"k722_to_{name}.json")


def test_k722_stage1_builds_eva_giant_video_without_layer_decay_on_meta():
    model, opt = _build_on_meta(LazyConfig.load(CONFIGS / "k722_stage1.py"))
    assert isinstance(model, VideoClassifier) and isinstance(model.mixup, ClipMixup)
    assert isinstance(model.mixup.mixup, Mixup) and isinstance(model.criterion, SoftTargetCrossEntropy)
    assert model.net.num_layers == 40 and model.net.head.out_features == 722
    assert model.net.pos_embed.shape == (1, 1 + 8 * 256, 1408) and model.net.grad_checkpointing
    assert set(_lr_scales(opt).values()) == {1.0}


def test_k400_stage2_builds_16_frames_with_layer_decay_095_on_meta():
    model, opt = _build_on_meta(LazyConfig.load(CONFIGS / "k400_stage2.py"))
    assert isinstance(model.criterion, LabelSmoothingCrossEntropy)
    assert model.net.pos_embed.shape == (1, 1 + 16 * 256, 1408) and model.net.head.out_features == 400
    scale = _lr_scales(opt)
    assert scale["net.blocks.0.attn.qkv.weight"] == pytest.approx(0.95 ** 40)
    assert scale["net.blocks.39.mlp.fc1.weight"] == pytest.approx(0.95)
    assert scale["net.pos_embed"] == pytest.approx(0.95 ** 41)
    assert scale["net.head.weight"] == scale["net.fc_norm.weight"] == 1.0


TINY = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


def _tiny(num_classes, num_frames=2, **kw):
    return create_video_model("eva_video_tiny_patch14_224_f8", num_classes=num_classes, num_frames=num_frames,
                              **TINY, **kw)


def test_stage2_head_starts_from_the_k722_rows_of_the_stage1_checkpoint(tmp_path):
    torch.manual_seed(0)
    stage1 = _tiny(num_classes=7, num_frames=2)
    torch.nn.init.normal_(stage1.head.weight)
    torch.nn.init.normal_(stage1.head.bias)
    ckpt = save_atomic({"model": stage1.state_dict()}, tmp_path / "stage1.pth")
    rows = [5, 0, 3]
    (tmp_path / "k722_to_k3.json").write_text(json.dumps(rows))
    # stage 2: more frames; encoder through create_video_model, head from the rows
    net = _tiny(num_classes=3, num_frames=4, checkpoint_path=str(ckpt))
    model = VideoClassifier(net, head_init_checkpoint=str(ckpt),
                            head_init_rows=str(tmp_path / "k722_to_k3.json"))
    assert torch.equal(model.net.head.weight, stage1.head.weight[rows])
    assert torch.equal(model.net.head.bias, stage1.head.bias[rows])
    assert torch.equal(model.net.blocks[0].attn.qkv.weight, stage1.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="2 head rows for a head of 3 classes"):
        VideoClassifier(_tiny(3), head_init_checkpoint=str(ckpt), head_init_rows=[1, 2])
    with pytest.raises(ValueError, match="go together"):
        VideoClassifier(_tiny(3), head_init_checkpoint=str(ckpt))


def test_clip_cutmix_pastes_the_same_box_into_every_frame():
    torch.manual_seed(0)
    mix = ClipMixup(Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=3, label_smoothing=0.0))
    clips = torch.stack([torch.full((4, 3, 16, 16), float(i)) for i in range(2)])  # clip i is all i
    mixed, target = mix(clips.clone(), torch.tensor([0, 1]))
    pasted = mixed[0] == 1.0  # pixels of clip 0 that came from clip 1
    assert pasted.any() and not pasted.all()
    assert all(torch.equal(pasted[t], pasted[0]) for t in range(4))  # same box in all frames and channels
    assert torch.equal(pasted[:, 0], pasted[:, 2])
    share = pasted[0, 0].float().mean()
    assert target[0, 1] == pytest.approx(float(share))  # label weight = pasted area


def test_video_classifier_trains_on_clips_and_tests_on_averaged_views():
    torch.manual_seed(0)
    model = VideoClassifier(_tiny(3), criterion=LabelSmoothingCrossEntropy(0.1))
    batch = {"video": torch.randn(2, 2, 3, 16, 16), "label": torch.tensor([0, 2])}
    loss = model(batch)["loss_cls"]
    loss.backward()
    assert loss.ndim == 0 and model.net.head.weight.grad is not None
    model.eval()
    views = torch.randn(2, 6, 2, 3, 16, 16)  # 2 clips x 3 crops
    with torch.no_grad():
        assert torch.allclose(model({"video": views}), MultiViewVideoClassifier(model.net)({"video": views}))
        assert model({"video": views[:, 0]}).shape == (2, 3)
    with pytest.raises(KeyError, match="'video'"):
        model({"image": views[:, 0]})


def test_image_checkpoint_inflates_via_net_checkpoint_path_and_is_refused_as_init_checkpoint(tmp_path):
    import eva_core
    from eva_core.checkpoint.loader import CheckpointMismatchError

    torch.manual_seed(0)
    image = eva_core.create_model("eva_tiny_patch16_224", num_classes=3, **TINY)
    ckpt = str(save_atomic({"model": image.state_dict()}, tmp_path / "image.pth"))
    # the recipes' hook (model.net.checkpoint_path): kernel copied along time / tubelet, table per frame
    net = _tiny(3, num_frames=4, tubelet_size=2, checkpoint_path=ckpt)
    kernel = net.patch_embed.proj.weight
    assert torch.allclose(kernel[:, :, 0] * 2, image.patch_embed.proj.weight)
    assert torch.equal(kernel[:, :, 0], kernel[:, :, 1])
    n = (16 // 8) ** 2
    assert torch.allclose(net.pos_embed[0, 1 + n:1 + 2 * n], image.pos_embed[0, -n:])
    # train.init_checkpoint (eva_core.load_checkpoint, layout from the keys) refuses it, naming the tensors
    with pytest.raises(CheckpointMismatchError, match="patch_embed.proj.weight"):
        eva_core.load_checkpoint(VideoClassifier(_tiny(3)), ckpt, min_loaded="encoder")
