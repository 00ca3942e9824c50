"""Specification of ViTDet-EVA's detection data: instance jsons as detectron2 dicts, the LSJ
mappers, repeat-factor sampling and the federated loss."""
from __future__ import annotations

import copy
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eva_core.data import build_train_loader
from eva_core.data.annotations import AnnotationFormatError, load_lvis_api
from eva_core.data.toy_world import make_coco, make_lvis
from vitdet_eva.data import (BoxMode, LSJTrainMapper, MappedDataset, RepeatFactorDataset, ResizeTestMapper,
                             federated_sigmoid_ce_loss, get_fed_loss_classes, get_fed_loss_cls_weights,
                             load_detection_json, mask_boxes, repeat_factor_indices,
                             repeat_factors_from_category_frequency, trivial_batch_collator)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_det")
    paths = make_coco(root, num_train=6, num_val=2, img_size=64)
    paths.update(make_lvis(root, num_train=12, num_val=2, img_size=64, num_colors=2))
    return paths


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def custom_json(tmp_path):
    """Three classes with non-contiguous ids, a crowd, a degenerate box and an empty image."""
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "b.png")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "c.png")
    poly = [[2, 2, 12, 2, 12, 10, 2, 10]]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
                   {"id": 3, "file_name": "c.png", "width": 40, "height": 30}],
        "categories": [{"id": 10, "name": "kiwi"}, {"id": 5, "name": "apple"}, {"id": 7, "name": "fig"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 10, "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": poly},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [20, 5, 0, 4], "area": 0, "iscrowd": 0,
             "segmentation": poly},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1,
             "segmentation": {"counts": [0, 100, 1100], "size": [30, 40]}},
        ]}
    return data


# ----------------------------------------------------------------------------- datasets
def test_coco_dicts_equal_pycocotools_view(toy):
    from pycocotools.coco import COCO

    ds = load_detection_json(toy["coco_train_json"], toy["coco_train_images"])
    coco = COCO(toy["coco_train_json"])
    cat_ids = sorted(coco.getCatIds())
    assert ds.thing_classes == [coco.cats[c]["name"] for c in cat_ids]
    assert not ds.is_lvis and ds.num_degenerate == 0
    assert [d["image_id"] for d in ds.dicts] == [img["id"] for img in coco.dataset["images"]]
    for d in ds.dicts:
        img = coco.imgs[d["image_id"]]
        assert d["file_name"] == os.path.join(toy["coco_train_images"], img["file_name"])
        assert os.path.isfile(d["file_name"])
        assert (d["height"], d["width"]) == (img["height"], img["width"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[d["image_id"]]))
        assert [a["id"] for a in d["annotations"]] == [a["id"] for a in anns]
        for ours, ref in zip(d["annotations"], anns):
            assert ours["bbox"] == ref["bbox"] and ours["bbox_mode"] == BoxMode.XYWH_ABS
            assert ours["category_id"] == cat_ids.index(ref["category_id"])
            assert ours["segmentation"] == ref["segmentation"] and ours["iscrowd"] == ref["iscrowd"]


def test_lvis_dicts_match_lvis_api_and_carry_image_counts(toy):
    ds = load_detection_json(toy["lvis_train_json"], toy["lvis_train_images"])
    lvis = load_lvis_api(toy["lvis_train_json"])
    assert ds.is_lvis and ds.num_classes == len(lvis.cats) == 10
    cat_ids = sorted(lvis.cats)
    assert ds.class_image_count == [lvis.cats[c]["image_count"] for c in cat_ids]
    for d in ds.dicts:
        img = lvis.imgs[d["image_id"]]
        assert os.path.isfile(d["file_name"])
        assert d["neg_category_ids"] == [cat_ids.index(c) for c in img["neg_category_ids"]]
        assert d["not_exhaustive_category_ids"] == [cat_ids.index(c)
                                                    for c in img["not_exhaustive_category_ids"]]
        anns = lvis.load_anns(lvis.get_ann_ids(img_ids=[d["image_id"]]))
        assert sorted((a["id"], cat_ids.index(a["category_id"])) for a in anns) == sorted(
            (a["id"], a["category_id"]) for a in d["annotations"])


def test_custom_json_gives_its_three_classes_keeps_crowds_and_counts_degenerate_boxes(tmp_path):
    path = write_json(tmp_path / "custom.json", custom_json(tmp_path))
    ds = load_detection_json(path, tmp_path)
    assert ds.num_classes == 3 and ds.thing_classes == ["apple", "fig", "kiwi"]  # sorted by json id
    assert ds.thing_dataset_id_to_contiguous_id == {5: 0, 7: 1, 10: 2}
    assert ds.num_degenerate == 1 and ds.degenerate_ids == [2]
    by_id = {d["image_id"]: d for d in ds.dicts}
    assert [a["id"] for a in by_id[1]["annotations"]] == [1]
    assert by_id[1]["annotations"][0]["category_id"] == 2
    crowd = by_id[2]["annotations"][0]
    assert crowd["iscrowd"] == 1 and isinstance(crowd["segmentation"]["counts"], bytes)  # compressed RLE
    assert by_id[3]["annotations"] == []  # images without annotations are kept by default
    filtered = load_detection_json(path, tmp_path, filter_empty=True)
    # detectron2's training filter: the crowd-only and the empty image go
    assert [d["image_id"] for d in filtered.dicts] == [1] and filtered.num_empty_filtered == 2


def test_malformed_json_fails_naming_file_and_entry(tmp_path):
    data = custom_json(tmp_path)
    data["annotations"][2]["bbox"] = [1, 2, 3]
    path = write_json(tmp_path / "broken.json", data)
    with pytest.raises(AnnotationFormatError,
                       match=r"broken\.json: annotations\[2\] \(id 3\): bbox must have 4"):
        load_detection_json(path, tmp_path)
    (tmp_path / "truncated.json").write_text('{"images": [')
    with pytest.raises(AnnotationFormatError, match=r"truncated\.json: not valid JSON"):
        load_detection_json(tmp_path / "truncated.json", tmp_path)
    data = custom_json(tmp_path)
    data["categories"] = []
    with pytest.raises(AnnotationFormatError, match=r"nocats\.json.*categor"):
        load_detection_json(write_json(tmp_path / "nocats.json", data), tmp_path)


# ----------------------------------------------------------------------------- LSJ mapper
def test_lsj_output_has_fixed_size_and_masks_agree_with_boxes(toy):
    ds = load_detection_json(toy["coco_train_json"], toy["coco_train_images"])
    t = 96
    mapper = LSJTrainMapper(image_size=t)
    seen = 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(ds.dicts[seed % len(ds)])
        assert out["image"].shape == (3, t, t) and out["image"].dtype == torch.uint8
        inst = out["instances"]
        n = len(inst["gt_classes"])
        assert inst["gt_boxes"].shape == (n, 4) and inst["gt_masks"].shape == (n, t, t)
        assert inst["gt_masks"].dtype == torch.bool and inst["gt_masks"].flatten(1).any(1).all()
        boxes, from_masks = inst["gt_boxes"], mask_boxes(inst["gt_masks"])
        # a mask never leaves its box (up to pixel rounding) ...
        assert (from_masks[:, :2] >= boxes[:, :2].floor() - 1).all()
        assert (from_masks[:, 2:] <= boxes[:, 2:].ceil() + 1).all()
        # ... and an instance the crop did not cut fills its box up to rounding: pycocotools keeps the
        # pixels whose centre is inside the polygon (half a pixel), and a sharp vertex (a star or
        # triangle tip) narrower than a pixel can miss one more row
        uncut = (boxes[:, :2] > 0).all(1) & (boxes[:, 2:] < t).all(1)
        assert torch.allclose(from_masks[uncut], boxes[uncut], atol=1.5)
        seen += int(uncut.sum())
    assert seen >= 10


def test_lsj_recompute_boxes_uses_the_cropped_masks(toy):
    ds = load_detection_json(toy["coco_train_json"], toy["coco_train_images"])
    for seed in range(4):
        np.random.seed(seed)
        out = LSJTrainMapper(image_size=64, min_scale=1.5, max_scale=2.0, recompute_boxes=True)(ds.dicts[0])
        assert torch.equal(out["instances"]["gt_boxes"], mask_boxes(out["instances"]["gt_masks"]))


def test_lsj_flip_mirrors_image_boxes_and_masks(toy):
    d = load_detection_json(toy["coco_train_json"], toy["coco_train_images"]).dicts[1]
    outs = []
    for flip_prob in (0.0, 1.0):  # same draws: the flip coin is consumed either way
        np.random.seed(3)
        outs.append(LSJTrainMapper(image_size=128, min_scale=0.75, max_scale=0.75, flip_prob=flip_prob,
                                   pad=False)(d))
    plain, flipped = outs
    w = plain["image"].shape[-1]
    assert w == 96  # 64 * 0.75 * 128 / 64: no crop, so flipping commutes with the crop
    diff = (plain["image"].flip(-1).int() - flipped["image"].int()).abs()
    assert diff.max() <= 1
    pb, fb = plain["instances"]["gt_boxes"], flipped["instances"]["gt_boxes"]
    mirrored = torch.stack([w - pb[:, 2], pb[:, 1], w - pb[:, 0], pb[:, 3]], 1)
    assert torch.allclose(mirrored, fb, atol=1e-4)
    pm, fm = plain["instances"]["gt_masks"].flip(-1), flipped["instances"]["gt_masks"]
    inter = (pm & fm).flatten(1).sum(1).float()
    union = (pm | fm).flatten(1).sum(1).float()
    assert (inter / union > 0.9).all()  # rasterizing a mirrored polygon may move edge pixels


def test_lsj_drops_crowds_and_instances_cropped_away(tmp_path):
    data = custom_json(tmp_path)
    ds = load_detection_json(write_json(tmp_path / "c.json", data), tmp_path)
    d = next(d for d in ds.dicts if d["image_id"] == 1)
    d = copy.deepcopy(d)
    d["annotations"].append(copy.deepcopy(next(x for x in ds.dicts if x["image_id"] == 2)["annotations"][0]))
    kept = []
    for seed in range(30):
        np.random.seed(seed)
        out = LSJTrainMapper(image_size=30, min_scale=2.0, max_scale=2.0)(d)
        assert 0 not in out["instances"]["gt_classes"].tolist()  # class 0 is the crowd's
        assert out["instances"]["gt_masks"].flatten(1).any(1).all()
        kept.append(len(out["instances"]["gt_classes"]))
    assert set(kept) == {0, 1}  # the one instance is sometimes cropped away, sometimes not


def test_lsj_maps_rle_masks_like_the_same_polygon(tmp_path):
    from pycocotools import mask as mask_util

    data = custom_json(tmp_path)
    d = load_detection_json(write_json(tmp_path / "c.json", data), tmp_path).dicts[0]
    poly = d["annotations"][0]["segmentation"]
    rle_d = copy.deepcopy(d)
    rle_d["annotations"][0]["segmentation"] = mask_util.merge(mask_util.frPyObjects(poly, 30, 40))
    for seed in range(5):
        outs = []
        for x in (d, rle_d):
            np.random.seed(seed)
            outs.append(LSJTrainMapper(image_size=48, min_scale=0.8, max_scale=1.6)(x)["instances"])
        assert torch.equal(outs[0]["gt_boxes"], outs[1]["gt_boxes"])
        a, b = outs[0]["gt_masks"], outs[1]["gt_masks"]
        assert a.shape == b.shape
        if len(a):
            iou = (a & b).sum() / (a | b).sum()
            assert iou > 0.8  # pixel-resized RLE vs re-rasterized polygon: only edge pixels differ


def test_box_only_json_objects365_style_maps_without_masks(tmp_path):
    data = custom_json(tmp_path)
    for ann in data["annotations"]:
        ann.pop("segmentation")
    ds = load_detection_json(write_json(tmp_path / "o365.json", data), tmp_path, dataset_format="coco")
    d = next(x for x in ds.dicts if x["image_id"] == 1)
    np.random.seed(0)
    inst = LSJTrainMapper(image_size=32, use_masks=False)(d)["instances"]
    assert set(inst) == {"gt_boxes", "gt_classes"} and inst["gt_classes"].tolist() == [2]
    with pytest.raises(ValueError, match=r"a\.png: annotation 1 has no segmentation"):
        LSJTrainMapper(image_size=32)(d)


def test_resize_test_mapper_fits_longest_side_and_pads_square(tmp_path):
    data = custom_json(tmp_path)
    d = load_detection_json(write_json(tmp_path / "c.json", data), tmp_path).dicts[0]
    out = ResizeTestMapper(image_size=64)(d)
    assert out["image"].shape == (3, 64, 64) and out["image_size"] == (48, 64)
    assert (out["height"], out["width"]) == (30, 40) and "instances" not in out
    assert (out["image"][:, 48:] == 128).all()


def test_lsj_through_eva_core_loader_is_a_function_of_seed(toy):
    ds = load_detection_json(toy["lvis_train_json"], toy["lvis_train_images"])
    mapped = MappedDataset(ds.dicts, LSJTrainMapper(image_size=64))
    rfs = RepeatFactorDataset(mapped, repeat_factors_from_category_frequency(ds.dicts, 0.3), seed=0)

    def first_batch():
        loader = build_train_loader(rfs, 2, seed=5, collate_fn=trivial_batch_collator)
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert len(a) == 2
    for x, y in zip(a, b):
        assert x["image_id"] == y["image_id"] and torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"]["gt_boxes"], y["instances"]["gt_boxes"])


# ----------------------------------------------------------------------------- repeat factors
def test_repeat_factors_equal_the_formula_on_a_frequency_table():
    # 2000 images: class 0 in 1 image, class 1 in 2, class 2 in 500 (and 1497 images with none)
    dicts = [{"annotations": []} for _ in range(2000)]
    dicts[0]["annotations"] = [{"category_id": 0}, {"category_id": 2}]
    dicts[1]["annotations"] = [{"category_id": 1}, {"category_id": 1}]
    dicts[2]["annotations"] = [{"category_id": 1}]
    for i in range(3, 502):
        dicts[i]["annotations"] = [{"category_id": 2}]
    r = repeat_factors_from_category_frequency(dicts, repeat_thresh=0.001)
    assert r[0].item() == pytest.approx(math.sqrt(0.001 / (1 / 2000)))  # max over its classes
    assert r[1].item() == r[2].item() == 1.0  # f = 0.001 exactly: no repeat
    assert (r[3:] == 1.0).all()
    r = repeat_factors_from_category_frequency(dicts, repeat_thresh=0.5)
    assert r[1].item() == pytest.approx(math.sqrt(0.5 / (2 / 2000)))
    assert r[3].item() == pytest.approx(math.sqrt(0.5 / (500 / 2000)))
    assert r[600].item() == 1.0


def test_repeat_expansion_matches_factors_within_binomial_noise():
    factors = torch.tensor([1.0, 1.3, 2.5, 0.2, 3.0]).repeat_interleave(4000)
    indices = repeat_factor_indices(factors, seed=7)
    assert indices == repeat_factor_indices(factors, seed=7)
    counts = torch.bincount(torch.tensor(indices), minlength=len(factors)).view(5, 4000)
    for group, r in enumerate([1.0, 1.3, 2.5, 0.2, 3.0]):
        c = counts[group]
        assert set(c.tolist()) <= {math.floor(r), math.floor(r) + 1}
        p = r - math.floor(r)
        std = math.sqrt(4000 * p * (1 - p))
        assert abs(c.sum().item() - 4000 * r) <= 4 * std + 1e-9  # 4 sigma of the binomial
    base = list(range(len(factors)))
    view = RepeatFactorDataset(base, factors, seed=7)
    assert len(view) == len(indices) and [view[k] for k in range(50)] == indices[:50]


# ----------------------------------------------------------------------------- federated loss
def test_fed_loss_weights_are_sqrt_image_counts(toy):
    weights = get_fed_loss_cls_weights(toy["lvis_train_json"])
    ds = load_detection_json(toy["lvis_train_json"], toy["lvis_train_images"])
    expected = torch.tensor(ds.class_image_count, dtype=torch.float32).sqrt()
    assert torch.allclose(weights, expected)
    assert torch.allclose(get_fed_loss_cls_weights(ds), expected)


def test_federated_loss_equals_direct_sum_over_sampled_classes_and_ignores_others():
    k, n = 10, 6
    gt = torch.tensor([1, 3, 10, 1, 10, 3])  # 10 = background
    weights = torch.zeros(k)
    weights[5] = 1.0  # the only drawable class: the sampled set is {1, 3, 5} (+ background)
    torch.manual_seed(0)
    logits = torch.randn(n, k + 1, requires_grad=True)
    loss = federated_sigmoid_ce_loss(logits, gt, k, weights, num_fed_loss_classes=4)
    sampled = [1, 3, 5]
    target = F.one_hot(gt, k + 1).float()[:, :k]
    direct = sum(F.binary_cross_entropy_with_logits(logits[i, c], target[i, c], reduction="sum")
                 for i in range(n) for c in sampled) / n
    assert torch.allclose(loss, direct)
    loss.backward()
    unsampled = [c for c in range(k + 1) if c not in sampled]
    assert (logits.grad[:, unsampled] == 0).all() and (logits.grad[:, sampled] != 0).all()


def test_fed_loss_classes_are_gt_plus_weighted_draws_without_replacement():
    k = 100
    gt = torch.tensor([4, 4, 17, k])
    weights = torch.ones(k)
    weights[:50] = 0  # classes 50..99 only
    classes = get_fed_loss_classes(gt, 50, k, weights, generator=torch.Generator().manual_seed(0))
    assert classes[:3].tolist() == [4, 17, k]
    drawn = classes[3:]
    assert len(drawn) == 47 and len(set(drawn.tolist())) == 47 and (drawn >= 50).all()
    # fewer drawable classes than asked: take them all rather than fail (toy LVIS has 40 classes)
    few = get_fed_loss_classes(torch.tensor([4, 9, 10]), 50, 10, torch.ones(10),
                               generator=torch.Generator().manual_seed(0))
    assert sorted(few.tolist()) == list(range(11))


def test_fed_loss_classes_when_the_ground_truth_already_holds_every_class():
    from vitdet_eva.data.federated import get_fed_loss_classes

    gt = torch.tensor([0, 1, 2, 3, 3])  # K = 3 classes + background (3): nothing is left to draw
    classes = get_fed_loss_classes(gt, num_fed_loss_classes=50, num_classes=3, weight=torch.ones(3))
    assert classes.tolist() == [0, 1, 2, 3]
