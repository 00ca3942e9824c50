"""Mask2Former-EVA configs: every file loads, the release numbers equal docs/recipes/segmentation.md,
the EVA-g models build (on the meta device) with the release's shapes, the toy model runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from eva_core.config import LazyConfig, instantiate
from eva_core.optim.layer_decay import param_groups_layer_decay

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "projects/Mask2Former-EVA/configs"
COCO = CONFIGS / "COCO-Stuff/mask2former_eva_g_896.py"
ADE = CONFIGS / "ADE20K/mask2former_eva_g_896.py"
TOY = CONFIGS / "toy/mask2former_toy.py"
RECIPES = [p for p in sorted(CONFIGS.rglob("*.py")) if p.parent.name != "common"]


def _page_schedules() -> dict[str, tuple[str, str]]:
    """The recipe page's "Schedules" table: setting -> (COCO-Stuff-164K, ADE20K)."""
    text = (ROOT / "docs/recipes/segmentation.md").read_text()
    table = text.split("## Schedules", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and not set(cells[1]) <= {"-"}:
            rows[cells[0]] = (cells[1], cells[2 if cells[2] != "same" else 1])
    return rows


def _number(text: str) -> float:
    value = re.match(r"([\d.]+(?:e-?\d+)?)(k?)", text.strip())
    assert value, f"no number in {text!r}"
    return float(value.group(1)) * (1000 if value.group(2) else 1)


def test_every_config_loads():
    assert {p.relative_to(CONFIGS).as_posix() for p in RECIPES} >= {
        "COCO-Stuff/mask2former_eva_g_896.py", "ADE20K/mask2former_eva_g_896.py", "toy/mask2former_toy.py"}
    for path in RECIPES:
        cfg = LazyConfig.load(str(path))
        assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg.keys()), path


@pytest.mark.parametrize("path, column", [(COCO, 0), (ADE, 1)])
def test_schedule_numbers_equal_the_recipe_page(path, column):
    page = {k: v[column] for k, v in _page_schedules().items()}
    cfg = LazyConfig.load(str(path))
    iters, warmup = (_number(x) for x in page["Iterations / warmup"].split("/"))
    assert cfg.optimizer.lr == _number(page["lr"])
    assert cfg.train.max_iter == iters and cfg.lr_multiplier.warmup_iters == warmup
    assert cfg.dataloader.train.total_batch_size == _number(page["Batch"])
    assert cfg.optimizer.params.layer_decay == _number(page["Layer decay"])
    assert cfg.optimizer.weight_decay == cfg.optimizer.params.weight_decay == _number(page["Weight decay"])
    assert page["Optimiser"].startswith("AdamW (0.9, 0.999, 1e-8)")
    assert cfg.optimizer._target_.endswith("AdamW")
    assert tuple(cfg.optimizer.betas) == (0.9, 0.999) and cfg.optimizer.eps == 1e-8
    assert page["Schedule"] == "poly, power 1"
    assert cfg.lr_multiplier._target_.endswith("poly_with_warmup") and cfg.lr_multiplier.power == 1.0


def test_ade20k_starts_from_the_coco_stuff_model_and_coco_stuff_from_the_patch16_encoder():
    coco, ade = LazyConfig.load(str(COCO)), LazyConfig.load(str(ADE))
    assert ade.train.init_checkpoint == f"{coco.train.output_dir}/model_final.pth"
    assert coco.train.init_checkpoint == "eva_psz14to16.pt"
    assert coco.model.decode_head.num_classes == 171 and ade.model.decode_head.num_classes == 150
    assert coco.dataloader.evaluator.num_classes == 171 and len(ade.dataloader.evaluator.class_names) == 150


@pytest.mark.parametrize("path", [COCO, ADE])
def test_data_and_inference_settings_equal_the_recipe_page(path):
    cfg = LazyConfig.load(str(path))
    train_tf = cfg.dataloader.train.dataset.transform
    assert list(train_tf.crop_size) == [896, 896] and list(train_tf.scale) == [3584, 896]
    assert list(train_tf.ratio_range) == [0.5, 2.0] and train_tf.cat_max_ratio == 0.75
    assert train_tf.flip_prob == 0.5 and train_tf.photometric
    assert cfg.model.test_mode == "slide" and cfg.model.crop_size == 896 and cfg.model.stride == 512
    crit, head = cfg.model.criterion, cfg.model.decode_head
    weights = (crit.class_weight, crit.mask_weight, crit.dice_weight, crit.no_object_weight)
    assert weights == (2.0, 5.0, 5.0, 0.1)
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (12544, 3.0, 0.75)
    sizes = (head.num_queries, head.feat_channels, head.pixel_decoder_layers, head.decoder_layers)
    assert sizes == (200, 1024, 6, 8)
    adapter = cfg.model.backbone
    assert [list(x) for x in adapter.interaction_indexes] == [[0, 9], [10, 19], [20, 29], [30, 39]]
    assert (adapter.conv_inplane, adapter.deform_num_heads, adapter.n_points) == (64, 16, 4)
    assert (adapter.cffn_ratio, adapter.deform_ratio, adapter.drop_path_rate) == (0.25, 0.5, 0.5)
    assert adapter.grad_checkpointing and adapter.encoder.drop_path_rate == 0.5


def test_eva_g_segmentor_builds_on_the_meta_device_with_the_release_shapes():
    cfg = LazyConfig.load(str(ADE))
    with torch.device("meta"):
        model = instantiate(cfg.model)

    def millions(module):
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert round(millions(model.backbone.encoder), 1) == 1015.5  # EVA-g, patch 16, 56 x 56 grid
    assert round(millions(model.backbone) - millions(model.backbone.encoder), 1) == 40.8  # the adapter
    sd = model.state_dict()
    assert tuple(sd["decode_head.transformer_decoder.query_feat.weight"].shape) == (200, 1024)
    assert tuple(sd["decode_head.transformer_decoder.cls_embed.weight"].shape) == (151, 1024)  # + no-object
    assert len(model.decode_head.transformer_decoder.layers) == 8
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.95)
    scales = {g["layer_id"]: g["lr_scale"] for g in groups}
    assert scales[0] == pytest.approx(0.95 ** 41) and scales[41] == 1.0  # stem .. adapter and head


def test_toy_config_trains_one_step_and_predicts_scores_at_the_input_size():
    cfg = LazyConfig.load(str(TOY))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    images, labels = torch.randn(2, 3, 128, 128), torch.randint(0, 5, (2, 128, 128))
    labels[:, :8] = 255
    losses = model({"image": images, "sem_seg": labels})
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert model({"image": images})["sem_seg"].shape == (2, 5, 128, 128)
