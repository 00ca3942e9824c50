"""ViTDet-EVA full detector: detectron2's GeneralizedRCNN, its state dict, its configs and the training tool.

Spec: docs/recipes/detection.md (detectron2 state-dict names, facts read off the release model, COCO /
LVIS / Objects365 recipes, configs), projects/ViTDet-EVA/README.md.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from eva_core.checkpoint import load_file

from eva_core import load_checkpoint
from eva_core.config import LazyConfig, instantiate
from test_vitdet_backbone import DETECTRON2_SIMFP_KEYS
from test_vitdet_roi_heads import _detectron2_vitdet_roi_heads_keys
from vitdet_eva import GeneralizedRCNN, Instances, detector_postprocess

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "projects" / "ViTDet-EVA" / "configs"
TOY_COCO = CONFIGS / "toy" / "cascade_mask_rcnn_toy_coco.py"
TOY_LVIS = CONFIGS / "toy" / "cascade_mask_rcnn_toy_lvis.py"
COCO = CONFIGS / "COCO" / "cascade_mask_rcnn_vitdet_eva.py"

# EVA-g's structure (40 blocks, global blocks 3, 7, ..., 39, 4 pyramid levels + P6, 2 RPN convs,
# 3 cascade stages, 4-conv mask head) at toy width: every key of the release detector, tiny tensors
TOY_WIDTH = ["model.backbone.net.embed_dim=16", "model.backbone.net.num_heads=2",
             "model.backbone.net.img_size=64", "model.backbone.square_pad=64",
             "model.backbone.net.use_act_checkpoint=False", "model.backbone.out_channels=8",
             "model.proposal_generator.head.in_channels=8", "model.roi_heads.num_classes=80"]


def _toy_width_eva_g(num_classes: int = 80, overrides: tuple = ()) -> GeneralizedRCNN:
    cfg = LazyConfig.apply_overrides(LazyConfig.load(COCO),
                                     TOY_WIDTH + [f"model.roi_heads.num_classes={num_classes}", *overrides])
    heads = cfg.model.roi_heads
    for head in heads.box_heads:
        head.input_shape, head.conv_dims, head.fc_dims = [8, 7, 7], [8] * 4, [16]
    for predictor in heads.box_predictors:
        predictor.input_shape = [16]
    heads.mask_head.input_shape, heads.mask_head.conv_dims = [8, 14, 14], [8] * 5
    torch.manual_seed(0)
    return instantiate(cfg.model)


def _detectron2_encoder_keys(depth: int = 40) -> list[str]:
    keys = ["backbone.net.pos_embed", "backbone.net.patch_embed.proj.weight",
            "backbone.net.patch_embed.proj.bias"]
    for i in range(depth):
        for name in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                     "attn.rel_pos_h", "attn.rel_pos_w", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
                     "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            keys.append(f"backbone.net.blocks.{i}.{name}")
    return keys


RPN_KEYS = [f"proposal_generator.rpn_head.{m}.{p}" for m in ("conv.conv0", "conv.conv1", "objectness_logits",
                                                              "anchor_deltas") for p in ("weight", "bias")]


def test_full_detector_state_dict_is_detectron2s_713_keys_and_pixel_stats_are_not_saved():
    model = _toy_width_eva_g()
    expected = (_detectron2_encoder_keys() + [f"backbone.{k}" for k in DETECTRON2_SIMFP_KEYS] + RPN_KEYS
                + list(_detectron2_vitdet_roi_heads_keys(80)))
    assert len(expected) == 713
    assert sorted(model.state_dict()) == sorted(expected)
    # detectron2 registers pixel_mean / pixel_std with persistent=False: buffers, not checkpoint entries
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))
    assert model.input_format == "RGB"


def test_eva_g_recipe_builds_the_release_detector_on_the_meta_device():
    cfg = LazyConfig.load(COCO)
    cfg.model.roi_heads.num_classes = 80  # the json is not needed to count the release model's values
    with torch.device("meta"):
        model = instantiate(cfg.model)
    sd = model.state_dict()
    assert len(sd) == 713
    assert sum(v.numel() for v in sd.values()) == 1_073_745_214


def _randomized_state_dict(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in model.state_dict().items()}


def test_detectron2_checkpoint_file_loads_strictly_through_eva_core_loader(tmp_path):
    source = _toy_width_eva_g()
    sd = _randomized_state_dict(source)
    path = tmp_path / "model_final.pth"
    torch.save({"model": sd, "iteration": 44999}, path)  # detectron2's Checkpointer layout
    target = _toy_width_eva_g()
    report = load_checkpoint(target, path, strict=True)
    assert len(report.loaded) == report.total == 713
    assert not report.missing and not report.unexpected and not report.mismatched
    got = target.state_dict()
    for key in ("backbone.net.blocks.39.attn.rel_pos_h", "backbone.net.pos_embed",
                "backbone.simfp_5.2.norm.bias",
                "proposal_generator.rpn_head.conv.conv1.weight", "roi_heads.box_predictor.2.cls_score.weight",
                "roi_heads.mask_head.predictor.weight"):
        assert torch.equal(got[key], sd[key]), key


def test_a_whole_detector_file_loads_its_encoder_into_a_bare_backbone():
    """``eva_core.load_checkpoint(vit, "eva_coco_det.pth")`` after ``import vitdet_eva``: the detector
    layout claims the file; the loader reads the encoder from under ``backbone.net.`` and counts the rest."""
    sd = _randomized_state_dict(_toy_width_eva_g())
    net = _toy_width_eva_g().backbone.net
    report = load_checkpoint(net, {"model": sd}, strict=True)
    assert report.layout == "detectron2_detector"
    assert len(report.loaded) == report.total == len(net.state_dict())
    assert "110 keys outside 'backbone.net.' ignored" in report.notes, report.notes
    torch.testing.assert_close(net.state_dict()["blocks.0.attn.rel_pos_h"],
                               sd["backbone.net.blocks.0.attn.rel_pos_h"])


def test_class_count_change_reports_the_predictor_shapes_as_mismatched_and_loads_the_rest():
    sd = _randomized_state_dict(_toy_width_eva_g(num_classes=80))
    target = _toy_width_eva_g(num_classes=3)
    report = load_checkpoint(target, {"model": sd})
    mismatched = {k: (tuple(a), tuple(b)) for k, a, b in report.mismatched}
    expected = {f"roi_heads.box_predictor.{s}.cls_score.{p}" for s in range(3) for p in ("weight", "bias")}
    expected |= {"roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias"}
    assert set(mismatched) == expected
    assert mismatched["roi_heads.box_predictor.0.cls_score.weight"] == ((81, 16), (4, 16))
    assert mismatched["roi_heads.mask_head.predictor.bias"] == ((80,), (3,))
    assert not report.missing or set(report.missing) == expected
    assert len(report.loaded) == 713 - len(expected)
    assert torch.equal(target.state_dict()["roi_heads.box_predictor.1.bbox_pred.weight"],
                       sd["roi_heads.box_predictor.1.bbox_pred.weight"])


def test_detector_postprocess_scales_clips_drops_empty_boxes_and_pastes_masks():
    # network input 50 x 100 (h x w) -> original image 100 x 300: x scales by 3, y by 2
    results = Instances((50, 100),
                        pred_boxes=torch.tensor([[10.0, 5.0, 20.0, 15.0], [90.0, 40.0, 120.0, 60.0],
                                                 [-30.0, 0.0, -10.0, 10.0]]),
                        scores=torch.tensor([0.9, 0.8, 0.7]), pred_classes=torch.tensor([1, 2, 0]),
                        pred_masks=torch.ones(3, 1, 28, 28))
    out = detector_postprocess(results, 100, 300)
    assert out.image_size == (100, 300)
    # box 3 lies left of the image: clipped to zero width and dropped with its score and class
    assert torch.equal(out.pred_boxes, torch.tensor([[30.0, 10.0, 60.0, 30.0], [270.0, 80.0, 300.0, 100.0]]))
    assert torch.equal(out.scores, torch.tensor([0.9, 0.8]))
    assert torch.equal(out.pred_classes, torch.tensor([1, 2]))
    # an all-ones box-relative mask pastes to exactly the box's pixels
    assert out.pred_masks.dtype == torch.bool and out.pred_masks.shape == (2, 100, 300)
    expected = torch.zeros(100, 300, dtype=torch.bool)
    expected[10:30, 30:60] = True
    assert torch.equal(out.pred_masks[0], expected)
    assert int(out.pred_masks[1].sum()) == 20 * 30


def _toy_detector(num_classes: int = 5) -> GeneralizedRCNN:
    cfg = LazyConfig.load(TOY_COCO)
    cfg.model.roi_heads.num_classes = num_classes
    torch.manual_seed(0)
    return instantiate(cfg.model)


def _toy_gt(h: int, w: int) -> dict:
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 10:40, 20:60] = True
    masks[1, 70:100, 64:120] = True
    return {"gt_boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0], [64.0, 70.0, 120.0, 100.0]]),
            "gt_classes": torch.tensor([1, 3]), "gt_masks": masks}


def test_training_forward_returns_rpn_cascade_and_mask_losses_the_engine_sums():
    from eva_core.engine.train_loop import sum_losses

    model = _toy_detector().train()
    batch = [{"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8), "height": 128, "width": 128,
              "instances": _toy_gt(128, 128)},
             {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128,
              "instances": Instances((96, 128), **{k: v[:1] for k, v in _toy_gt(96, 128).items()})}]
    losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"} | {
        f"loss_{n}_stage{s}" for n in ("cls", "box_reg") for s in range(3)}
    total = sum_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert model.roi_heads.mask_head.predictor.weight.grad is not None
    assert model.backbone.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_preprocess_normalises_on_the_0_255_scale_and_pads_to_the_square_size():
    model = _toy_detector().eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    images = model.preprocess_image([{"image": image}])
    assert images.tensor.shape == (1, 3, 128, 128) and images.image_sizes == [(96, 128)]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    assert torch.allclose(images.tensor[0, :, :96], (image.float() - mean) / std)
    assert torch.count_nonzero(images.tensor[0, :, 96:]) == 0  # padded after normalisation, with 0
    # a test-mapper output padded with grey carries its real size: the same detections as unpadded
    padded = torch.full((3, 128, 128), 128, dtype=torch.uint8)
    padded[:, :96] = image
    with torch.no_grad():
        a = model([{"image": image, "height": 192, "width": 256}])[0]["instances"]
        b = model([{"image": padded, "image_size": (96, 128), "height": 192, "width": 256}])[0]["instances"]
    assert a.image_size == b.image_size == (192, 256)
    assert torch.equal(a.pred_boxes, b.pred_boxes) and torch.equal(a.scores, b.scores)


def test_inference_returns_detectron2_instances_that_the_coco_evaluator_scores(toy_world):
    from eva_core.evaluation import COCOEvaluator
    from vitdet_eva.data import MappedDataset, ResizeTestMapper, load_detection_json

    model = _toy_detector().eval()
    dataset = MappedDataset(load_detection_json(toy_world["coco_val_json"], toy_world["coco_val_images"]),
                            ResizeTestMapper(96, pad=False))
    batch = [dataset[0], dataset[1]]
    with torch.no_grad():
        outputs = model(batch)
    inst = outputs[0]["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (128, 128)
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (128, 128)
    evaluator = COCOEvaluator(toy_world["coco_val_json"], per_class=False)
    evaluator.reset()
    evaluator.process(batch, outputs)
    as_dicts = [{"instances": {"boxes": o["instances"].pred_boxes, "scores": o["instances"].scores,
                               "classes": o["instances"].pred_classes, "masks": o["instances"].pred_masks}}
                for o in outputs]
    reference = COCOEvaluator(toy_world["coco_val_json"], per_class=False)
    reference.reset()
    reference.process(batch, as_dicts)
    assert evaluator._results == reference._results and len(evaluator._results) == sum(map(len, (
        o["instances"] for o in outputs)))


# ---- the toy detector through the training tool ------------------------------------------------------
def _toy_model_overrides() -> list[str]:
    return ["model.roi_heads.batch_size_per_image=32", "model.proposal_generator.post_nms_topk=[100,50]"]


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    from eva_core.data.toy_world import make_coco

    root = tmp_path_factory.mktemp("toy_world_det")
    paths = make_coco(root, num_train=8, num_val=4, img_size=128, seed=0)
    lvis_json = _coco_val_as_lvis(paths["coco_val_json"], root / "lvis_format_val.json")
    paths["lvis_format_val_json"] = str(lvis_json)
    return paths


def _coco_val_as_lvis(coco_json: str, out: Path) -> Path:
    """The toy COCO val split in LVIS v1 format (same images, classes and masks): one model, both scorers."""
    data = json.loads(Path(coco_json).read_text())
    counts = {c["id"]: {a["image_id"] for a in data["annotations"] if a["category_id"] == c["id"]}
              for c in data["categories"]}
    for c in data["categories"]:
        c.update(frequency="f", image_count=len(counts[c["id"]]), instance_count=len(counts[c["id"]]),
                 synset=f"{c['name']}.n.01")
    for img in data["images"]:
        present = {a["category_id"] for a in data["annotations"] if a["image_id"] == img["id"]}
        img.update(neg_category_ids=sorted(set(counts) - present), not_exhaustive_category_ids=[])
    for a in data["annotations"]:
        a.pop("iscrowd", None)
    out.write_text(json.dumps(data))
    return out


def _tool():
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net_vitdet",
                                                  REPO / "tools" / "lazyconfig_train_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _run_tool_in_process(*argv: str) -> dict:
    from eva_core.engine.defaults import default_argument_parser

    tool = _tool()
    args = default_argument_parser().parse_args([str(a) for a in argv])
    return tool.main(args)


def _toy_paths(paths: dict) -> list[str]:
    return [f"dataloader.train.dataset.dicts.json_file={paths['coco_train_json']}",
            f"dataloader.train.dataset.dicts.image_root={paths['coco_train_images']}",
            f"dataloader.test.dataset.dicts.json_file={paths['coco_val_json']}",
            f"dataloader.test.dataset.dicts.image_root={paths['coco_val_images']}"]


def _two_format_config(paths: dict, out: Path) -> Path:
    """The toy COCO recipe with ``dataloader.test`` / ``evaluator`` as ``{name: ...}``: the val split
    scored by COCOEvaluator and, from its LVIS-format json, by LVISEvaluator in the same run."""
    from eva_core.evaluation import LVISEvaluator

    cfg = LazyConfig.apply_overrides(LazyConfig.load(TOY_COCO), _toy_paths(paths))
    coco_test, coco_eval = cfg.dataloader.test, cfg.dataloader.evaluator
    lvis_test = coco_test.copy()
    lvis_test.dataset = coco_test.dataset.copy()
    lvis_test.dataset.dicts = coco_test.dataset.dicts.copy()
    lvis_test.dataset.dicts.json_file = paths["lvis_format_val_json"]
    cfg.dataloader.test = {"coco": coco_test, "lvis": lvis_test}
    cfg.dataloader.evaluator = {
        "coco": coco_eval,
        "lvis": {"_target_": LVISEvaluator, "dataset_json": paths["lvis_format_val_json"],
                 "output_dir": str(out / "lvis"), "max_dets_per_image": 300},
    }
    cfg.dataloader.evaluator.coco.dataset_json = paths["coco_val_json"]
    cfg.dataloader.evaluator.coco.output_dir = str(out / "coco")
    path = out / "two_format_config.yaml"
    LazyConfig.save(cfg, path)
    return path


def test_tool_trains_toy_detector_and_scores_coco_and_lvis_test_sets_with_nested_metrics(toy_world, tmp_path):
    out = tmp_path / "run"
    config = _two_format_config(toy_world, tmp_path)
    results = _run_tool_in_process(
        "--config-file", config, *_toy_model_overrides(), "dataloader.train.total_batch_size=2",
        "train.max_iter=2", "train.eval_period=2", "train.checkpointer.period=2", "train.log_period=1",
        "lr_multiplier.warmup_iters=1", f"train.output_dir={out}")
    assert set(results) == {"coco", "lvis"}
    assert {"bbox", "segm"} == set(results["coco"]) == set(results["lvis"])
    assert {"AP", "AP50", "AP-circle"} <= set(results["coco"]["bbox"])
    assert {"AP", "APr", "APc", "APf"} <= set(results["lvis"]["segm"])
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    flat = {k for r in records for k in r}
    assert {"eval/coco/bbox/AP", "eval/coco/segm/AP", "eval/lvis/bbox/APf", "eval/lvis/segm/AP"} <= flat
    assert any("loss_mask" in r and math.isfinite(r["loss_mask"]) for r in records)
    assert (out / "model_final.pth").is_file()
    for name in ("coco", "lvis"):
        assert (tmp_path / name / f"{name}_instances_results.json").is_file()


def test_eval_only_writes_a_coco_results_json_that_pycocotools_loads(toy_world, tmp_path):
    from pycocotools.coco import COCO

    model = instantiate(LazyConfig.apply_overrides(LazyConfig.load(TOY_COCO), _toy_paths(toy_world)).model)
    ckpt = tmp_path / "toy_detector.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "eval"
    results = _run_tool_in_process("--config-file", TOY_COCO, "--eval-only", *_toy_paths(toy_world),
                                   f"train.init_checkpoint={ckpt}", f"train.output_dir={out}")
    assert {"bbox", "segm"} == set(results)
    written = out / "coco_instances_results.json"
    dets = json.loads(written.read_text())
    assert dets and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(dets[0])
    gt = COCO(toy_world["coco_val_json"])
    res = gt.loadRes(str(written))
    assert set(res.getImgIds()) <= set(gt.getImgIds()) and len(res.anns) == len(dets)
    assert (out / "config_eval.yaml").is_file()


def test_toy_lvis_recipe_fine_tunes_a_coco_detector_with_federated_loss_and_repeat_factor_sampling(tmp_path):
    """As COCO / LVIS fine-tuning from the Objects365 model: the other class count's predictors are
    reported as shape mismatches and start from scratch; everything else loads and training runs."""
    from eva_core.data.toy_world import make_lvis

    coco_detector = _toy_detector(num_classes=5)
    init = tmp_path / "toy_coco_detector.pth"
    torch.save({"model": coco_detector.state_dict()}, init)
    paths = make_lvis(tmp_path / "tw", num_train=40, num_val=4, img_size=128, seed=0, num_colors=4)
    out = tmp_path / "run"
    results = _run_tool_in_process(
        "--config-file", TOY_LVIS, *_toy_model_overrides(),
        f"dataloader.train.dataset.dataset.dicts.json_file={paths['lvis_train_json']}",
        f"dataloader.train.dataset.dataset.dicts.image_root={paths['lvis_train_images']}",
        f"dataloader.test.dataset.dicts.json_file={paths['lvis_val_json']}",
        f"dataloader.test.dataset.dicts.image_root={paths['lvis_val_images']}",
        "dataloader.train.total_batch_size=2", "train.max_iter=1", "train.eval_period=1",
        "train.checkpointer.period=1", "lr_multiplier.warmup_iters=0", f"train.init_checkpoint={init}",
        f"train.output_dir={out}")
    assert {"AP", "APr", "APc", "APf"} <= set(results["bbox"]) and {"AP", "APr"} <= set(results["segm"])
    log = (out / "log.txt").read_text()
    assert "layout detectron2_detector" in log and "mismatched (8)" in log
    cfg = LazyConfig.load(out / "config.yaml")
    assert [p.use_fed_loss for p in cfg.model.roi_heads.box_predictors] == [True] * 3
    assert cfg.dataloader.train.dataset.repeat_factors.repeat_thresh == 0.001
    num_classes = len(json.loads(Path(paths["lvis_train_json"]).read_text())["categories"])
    model = instantiate(cfg.model)
    assert model.roi_heads.box_predictor[0].cls_score.out_features == num_classes + 1
    assert model.roi_heads.box_predictor[0].fed_loss_cls_weights.shape == (num_classes,)
    trained = load_file(out / "model_final.pth")["model"]
    # one step (lr 3e-3) from the COCO detector's weights, not from a fresh draw
    start = coco_detector.state_dict()["backbone.net.blocks.1.mlp.fc2.weight"]
    assert (trained["backbone.net.blocks.1.mlp.fc2.weight"] - start).abs().max() < 0.01


def test_lvis_images_are_read_from_their_coco_split_folder_as_detectron2_does(tmp_path):
    from eva_core.data.toy_world import make_lvis
    from vitdet_eva.data import load_detection_json

    paths = make_lvis(tmp_path, num_train=40, num_val=2, img_size=32, seed=0, num_colors=4)
    data = json.loads(Path(paths["lvis_val_json"]).read_text())
    for img in data["images"]:  # as the real LVIS v1 files: images named by their COCO url only
        img.pop("file_name")
        img["coco_url"] = "http://images.cocodataset.org/" + img["coco_url"]
    url_only = tmp_path / "lvis_v1_val_url_only.json"
    url_only.write_text(json.dumps(data))
    coco_root = Path(paths["lvis_val_images"]).parent  # holds val2017/ (and train2017/)
    nested = load_detection_json(url_only, coco_root)
    assert all(Path(d["file_name"]).is_file() and Path(d["file_name"]).parent.name == "val2017"
               for d in nested.dicts)
    flat = load_detection_json(url_only, paths["lvis_val_images"])
    assert [d["file_name"] for d in flat.dicts] == [d["file_name"] for d in nested.dicts]


# ---- configs ------------------------------------------------------------------------------------------
def test_detectron2_users_override_list_applies_unchanged_to_the_recipes():
    overrides = ["model.backbone.net.drop_path_rate=0.1", "model.roi_heads.num_classes=3",
                 "dataloader.train.total_batch_size=2", "optimizer.lr=1e-4", "train.max_iter=3",
                 "model.backbone.net.window_block_indexes=[0,1]", "model.backbone.square_pad=1024",
                 "model.proposal_generator.head.in_channels=256", "dataloader.test.batch_size=2"]
    for config in (COCO, TOY_COCO):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config), overrides)
        assert cfg.model.backbone.net.drop_path_rate == 0.1
        assert cfg.model.roi_heads.num_classes == 3
        assert [p.num_classes for p in cfg.model.roi_heads.box_predictors] == [3, 3, 3]
        assert cfg.model.roi_heads.mask_head.num_classes == 3
        assert (cfg.dataloader.train.total_batch_size, cfg.optimizer.lr, cfg.train.max_iter) == (2, 1e-4, 3)
        assert cfg.lr_multiplier.max_iter == 3


def test_custom_coco_json_sets_the_class_count_with_one_override_of_the_paths(tmp_path):
    categories = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 11, "name": "owl"}]
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    override = f"dataloader.train.dataset.dicts.json_file={ann}"
    cfg = LazyConfig.apply_overrides(LazyConfig.load(COCO), [override])
    assert instantiate(cfg.model.roi_heads.num_classes) == 3
    assert cfg.model.roi_heads.box_predictors[2].num_classes.json_file == str(ann)


def _load(rel: str):
    return LazyConfig.load(CONFIGS / rel)


def test_coco_recipe_numbers_are_the_papers():
    cfg = _load("COCO/cascade_mask_rcnn_vitdet_eva.py")
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads) == (1408, 40, 16)
    assert (net.patch_size, net.window_size) == (16, 16)
    assert (net.img_size, cfg.model.backbone.square_pad, net.drop_path_rate) == (1280, 1280, 0.6)
    assert net.window_block_indexes == [i for i in range(40) if i not in range(3, 40, 4)]
    lsj = cfg.dataloader.train.dataset.mapper
    assert lsj.image_size == cfg.dataloader.test.dataset.mapper.image_size == 1280
    assert (lsj.min_scale, lsj.max_scale, lsj.flip_prob, lsj.recompute_boxes) == (0.1, 2.0, 0.5, True)
    assert cfg.dataloader.train.total_batch_size == 64
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, tuple(cfg.optimizer.betas), cfg.optimizer.eps) == (
        2.5e-5, 0.1, (0.9, 0.999), 1e-8)
    assert cfg.optimizer.params.layer_decay == 0.9
    schedule = (cfg.train.max_iter, list(cfg.lr_multiplier.steps), cfg.lr_multiplier.warmup_iters)
    assert schedule == (45000, [40000], 500)
    assert cfg.train.amp.enabled
    assert [p.test_topk_per_image for p in cfg.model.roi_heads.box_predictors] == [100] * 3
    assert [tuple(p.box2box_transform.weights) for p in cfg.model.roi_heads.box_predictors] == [
        (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert [m.thresholds for m in cfg.model.roi_heads.proposal_matchers] == [[0.5], [0.6], [0.7]]
    assert cfg.model.proposal_generator.head.conv_dims == [-1, -1]
    assert cfg.dataloader.evaluator.max_dets_per_image == 100


def test_lvis_recipe_numbers_are_the_papers_and_the_release_configs():
    cfg = _load("LVIS/cascade_mask_rcnn_vitdet_eva.py")
    schedule = (cfg.train.max_iter, list(cfg.lr_multiplier.steps), cfg.lr_multiplier.warmup_iters)
    assert schedule == (75000, [70000], 250)
    assert cfg.optimizer.lr == 2e-4  # the release config's value (the paper's table says 2.5e-5)
    assert cfg.dataloader.train.dataset.repeat_factors.repeat_thresh == 0.001
    for p in cfg.model.roi_heads.box_predictors:
        assert p.use_sigmoid_ce and p.use_fed_loss and p.fed_loss_num_classes == 50
        assert (p.test_score_thresh, p.test_topk_per_image) == (0.001, 1000)
        assert p.get_fed_loss_cls_weights.freq_weight_power == 0.5
    assert cfg.dataloader.evaluator._target_.endswith("LVISEvaluator")
    assert cfg.model.backbone.net.img_size == 1280


def test_objects365_recipes_follow_the_paper_1024_then_1280_for_380k_iterations():
    first, second = _load("Objects365/cascade_mask_rcnn_vitdet_eva_1024.py"), _load(
        "Objects365/cascade_mask_rcnn_vitdet_eva_1280.py")
    for cfg, size in ((first, 1024), (second, 1280)):
        assert cfg.model.backbone.net.img_size == cfg.dataloader.train.dataset.mapper.image_size == size
        assert cfg.model.backbone.square_pad == size
    assert first.train.max_iter + second.train.max_iter == 380000 and first.train.max_iter == 320000
    for cfg in (first, second):
        assert (cfg.optimizer.lr, cfg.optimizer.params.layer_decay) == (1e-4, 0.9)
        assert cfg.dataloader.train.total_batch_size == 128
    # phase 2 starts from phase 1's final model
    assert second.train.init_checkpoint == os.path.join(os.path.normpath(first.train.output_dir),
                                                        "model_final.pth")


@pytest.mark.parametrize("task", ["COCO", "LVIS"])
def test_1536_evaluation_configs_raise_the_input_size_and_keep_the_stored_position_grid(task):
    base = _load(f"{task}/cascade_mask_rcnn_vitdet_eva.py")
    big = _load(f"{task}/cascade_mask_rcnn_vitdet_eva_1536.py")
    assert (big.model.backbone.net.img_size, big.model.backbone.square_pad,
            big.dataloader.test.dataset.mapper.image_size) == (1536, 1536, 1536)
    assert big.model.backbone.net.pretrain_img_size == base.model.backbone.net.pretrain_img_size == 224
    assert big.dataloader.evaluator.dataset_json == base.dataloader.evaluator.dataset_json
    assert big.dataloader.evaluator.max_dets_per_image == base.dataloader.evaluator.max_dets_per_image


def test_a_checkpoint_trained_small_loads_into_the_larger_evaluation_size_with_rel_pos_resampled():
    # toy width: trained at 64 px (4 x 4 tokens, global tables 2 * 4 - 1 = 7 rows), evaluated at 96 px
    # (6 x 6 tokens, 11 rows), as the 1280 model evaluated at 1536 (159 -> 191 rows)
    trained = _toy_width_eva_g()
    sd = _randomized_state_dict(trained)
    big = _toy_width_eva_g(overrides=["model.backbone.net.img_size=96", "model.backbone.square_pad=96"])
    assert big.backbone.net.blocks[3].attn.rel_pos_h.shape[0] == 11
    report = load_checkpoint(big, {"model": sd}, strict=True)
    assert not report.mismatched and len(report.loaded) == 713
    assert any("rel_pos" in note for note in report.notes)
    # windowed blocks keep their window-sized tables, loaded as stored
    window_table = "backbone.net.blocks.0.attn.rel_pos_h"
    assert torch.equal(big.state_dict()[window_table], sd[window_table])
    big.eval()
    with torch.no_grad():
        image = torch.randint(0, 256, (3, 80, 96), dtype=torch.uint8)
        out = big([{"image": image, "height": 160, "width": 192}])
    assert out[0]["instances"].image_size == (160, 192)


def test_every_recipe_config_loads():
    recipes = sorted(p for p in CONFIGS.rglob("*.py") if "common" not in p.parts)
    names = [f"{task}/cascade_mask_rcnn_vitdet_eva{suffix}.py" for task in ("COCO", "LVIS")
             for suffix in ("", "_1536")]
    names += [f"Objects365/cascade_mask_rcnn_vitdet_eva_{size}.py" for size in (1024, 1280)]
    names += ["toy/cascade_mask_rcnn_toy_coco.py", "toy/cascade_mask_rcnn_toy_lvis.py"]
    assert {str(p.relative_to(CONFIGS)) for p in recipes} >= set(names)
    for path in recipes:
        cfg = LazyConfig.load(path)
        assert set(cfg) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}, path
        assert cfg.model._target_.endswith("GeneralizedRCNN") and cfg.train.max_iter > 0, path
    for path in sorted((CONFIGS / "common").rglob("*.py")):
        assert len(LazyConfig.load(path)) >= 1, path
