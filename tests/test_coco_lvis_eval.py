"""COCO / LVIS evaluation: our evaluators and scripts give pycocotools' and lvis' own numbers.

Ground truth is written by the tests: a few images of different sizes, several categories,
polygons, compressed and uncompressed RLE masks and (COCO) crowd regions. Predictions are
perturbed ground-truth boxes / masks with scores, duplicates and false positives. Box
coordinates are multiples of 1/4 so that XYXY <-> XYWH conversions are exact and the library can
be given the very same numbers.
"""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from eva_core.evaluation import (COCOEvaluator, DatasetEvaluators, LVISEvaluator, flatten_results_dict,
                                 inference_on_dataset)
from eva_core.evaluation import coco as coco_mod
from eva_core.evaluation.coco import COCO_METRICS
from eva_core.evaluation.lvis import LVIS_METRICS, _lvis_numpy_shim

IMAGE_SIZES = [(96, 128), (128, 128), (80, 112), (112, 96), (96, 96)]  # (h, w)
CATEGORIES = [(3, "circle", "f"), (5, "square", "c"), (8, "triangle", "r"), (9, "star", "f")]


def _polygon(box, kind):
    x, y, w, h = box
    if kind == 0:  # octagon inscribed in the box
        return [x + w / 4, y, x + 3 * w / 4, y, x + w, y + h / 4, x + w, y + 3 * h / 4,
                x + 3 * w / 4, y + h, x + w / 4, y + h, x, y + 3 * h / 4, x, y + h / 4]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _make_ground_truth(tmp_path):
    """COCO and LVIS jsons over the same images; returns their paths and the COCO dict."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for image_id, (h, w) in enumerate(IMAGE_SIZES, start=1):
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        for k in range(int(rng.integers(3, 6))):
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))][0]
            bw, bh = float(rng.integers(8, 60)), float(rng.integers(8, 60))
            x, y = float(rng.integers(0, w - bw)), float(rng.integers(0, h - bh))
            if k == 2:  # a compressed RLE object (an ellipse)
                yy, xx = np.mgrid[:h, :w]
                m = (((xx + 0.5 - x - bw / 2) / (bw / 2)) ** 2
                     + ((yy + 0.5 - y - bh / 2) / (bh / 2)) ** 2) <= 1
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                seg, area, bbox = rle, float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
            else:
                seg = [_polygon((x, y, bw, bh), k % 2)]
                rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
                area, bbox = float(mask_util.area(rle)), [x, y, bw, bh]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox,
                         "area": area, "segmentation": seg, "iscrowd": 0})
    # crowd regions (uncompressed RLE, as COCO stores them)
    for image_id in (1, 3):
        h, w = IMAGE_SIZES[image_id - 1]
        m = np.zeros((h, w), np.uint8)
        m[h - 30:h - 2, 2:50] = 1
        counts = mask_util.encode(np.asfortranarray(m))
        uncompressed = {"size": [h, w], "counts": _uncompressed_counts(m)}
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 3,
                     "bbox": [float(v) for v in mask_util.toBbox(counts)], "area": float(m.sum()),
                     "segmentation": uncompressed, "iscrowd": 1})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in CATEGORIES]}
    coco_path = tmp_path / "coco_gt.json"
    coco_path.write_text(json.dumps(coco))

    lvis_anns = [dict(a) for a in anns if not a["iscrowd"]]
    for a in lvis_anns:
        a.pop("iscrowd")
    present = {i["id"]: {a["category_id"] for a in lvis_anns if a["image_id"] == i["id"]} for i in images}
    lvis_images = []
    for i in images:
        absent = [c for c, _, _ in CATEGORIES if c not in present[i["id"]]]
        not_exhaustive = sorted(present[i["id"]])[:1] if i["id"] == 2 else []
        lvis_images.append(dict(i, neg_category_ids=absent[:1], not_exhaustive_category_ids=not_exhaustive))
    lvis = {"images": lvis_images, "annotations": lvis_anns,
            "categories": [{"id": c, "name": n, "frequency": f, "synset": n, "image_count": 1,
                            "instance_count": 1} for c, n, f in CATEGORIES]}
    lvis_path = tmp_path / "lvis_gt.json"
    lvis_path.write_text(json.dumps(lvis))
    return coco_path, lvis_path, coco


def _uncompressed_counts(m):
    flat = m.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _gt_mask(ann, h, w):
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_util.decode(rle).astype(bool)


def _make_predictions(coco, perfect=False, seed=1):
    """Per-image instances (XYXY, contiguous classes, bool masks) and the same detections in
    the COCO results format, built independently of the code under test."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c for c, _, _ in CATEGORIES)
    per_image, results = {}, []
    for img in coco["images"]:
        h, w = img["height"], img["width"]
        boxes, scores, classes, masks = [], [], [], []
        for ann in coco["annotations"]:
            if ann["image_id"] != img["id"] or ann["iscrowd"]:
                continue
            x, y, bw, bh = ann["bbox"]
            m = _gt_mask(ann, h, w)
            if not perfect:
                if rng.random() < 0.15:
                    continue
                dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
                x, y = x + dx * 0.75, y + dy * 0.5
                bw, bh = bw + float(rng.integers(-2, 3)) * 0.25, bh + float(rng.integers(-2, 3)) * 0.25
                m = np.roll(m, (dy, dx), axis=(0, 1))
            boxes.append([x, y, bw, bh])
            scores.append(float(rng.uniform(0.3, 1.0)) if not perfect else 0.9)
            classes.append(cat_ids.index(ann["category_id"]))
            masks.append(m)
        if not perfect:  # false positives and a duplicate
            for _ in range(int(rng.integers(1, 4))):
                bw, bh = float(rng.integers(6, 40)), float(rng.integers(6, 40))
                x, y = float(rng.integers(0, w - bw)), float(rng.integers(0, h - bh))
                m = np.zeros((h, w), bool)
                m[int(y):int(y + bh), int(x):int(x + bw)] = True
                boxes.append([x, y, bw, bh])
                scores.append(float(rng.uniform(0.0, 0.8)))
                classes.append(int(rng.integers(len(cat_ids))))
                masks.append(m)
            if boxes:
                boxes.append(list(boxes[0]))
                scores.append(scores[0] * 0.5)
                classes.append(classes[0])
                masks.append(masks[0].copy())
        for b, s, c, m in zip(boxes, scores, classes, masks):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": img["id"], "category_id": cat_ids[c], "bbox": list(b), "score": s,
                            "segmentation": rle})
        xyxy = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes],
                            dtype=torch.float64).reshape(-1, 4)
        per_image[img["id"]] = {"boxes": xyxy, "scores": torch.tensor(scores, dtype=torch.float64),
                                "classes": torch.tensor(classes, dtype=torch.long),
                                "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w,
                                                                                                    dtype=torch.bool)}
    return per_image, results


def _pycocotools(coco_path, results, task):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(coco_path))
    dets = copy.deepcopy(results)
    if task == "segm":
        for d in dets:
            d.pop("bbox")
    ev = COCOeval(gt, gt.loadRes(dets), task)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _lvis(lvis_path, results, task, max_dets=300):
    from lvis import LVISEval, LVISResults, LVIS

    _lvis_numpy_shim()
    gt = LVIS(str(lvis_path))
    dets = copy.deepcopy(results)
    if task == "segm":
        for d in dets:
            d.pop("bbox")
    ev = LVISEval(gt, LVISResults(gt, dets, max_dets=max_dets), task)
    ev.run()
    return ev.results


def _pct(v):
    """The library's fraction in percent, -1 (nothing to score) as NaN."""
    return float(v * 100) if v >= 0 else float("nan")


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def _run_evaluator(evaluator, per_image):
    evaluator.reset()
    ids = sorted(per_image)
    for start in range(0, len(ids), 2):  # batches of two images, detectron2-style lists of dicts
        batch = [{"image_id": i} for i in ids[start:start + 2]]
        evaluator.process(batch, [{"instances": per_image[b["image_id"]]} for b in batch])
    return evaluator.evaluate()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coco_lvis")
    coco_path, lvis_path, coco = _make_ground_truth(tmp)
    per_image, results = _make_predictions(coco)
    return {"tmp": tmp, "coco_path": coco_path, "lvis_path": lvis_path, "coco": coco,
            "per_image": per_image, "results": results}


def test_coco_evaluator_equals_pycocotools_box_and_mask_ap(world, tmp_path):
    ours = _run_evaluator(COCOEvaluator(world["coco_path"], output_dir=tmp_path), world["per_image"])
    assert set(ours) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        ev = _pycocotools(world["coco_path"], world["results"], task)
        for idx, name in enumerate(COCO_METRICS):
            assert _same(ours[task][name], _pct(ev.stats[idx])), (task, name, ours[task][name])
        assert 5 < ours[task]["AP"] < 95  # a real mix of hits and misses, not a degenerate case
        for k, (_, cname, _) in enumerate(CATEGORIES):
            p = ev.eval["precision"][:, :, k, 0, -1]
            assert _same(ours[task][f"AP-{cname}"], float(np.mean(p[p > -1]) * 100) if (p > -1).any()
                         else float("nan"))
    # the written results file is the COCO results format of the same detections
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == len(world["results"])
    assert sorted((d["image_id"], d["category_id"], d["bbox"], d["score"]) for d in written) == \
        sorted((d["image_id"], d["category_id"], d["bbox"], d["score"]) for d in world["results"])


def test_lvis_evaluator_equals_lvis_api_with_frequency_groups(world):
    ours = _run_evaluator(LVISEvaluator(world["lvis_path"]), world["per_image"])
    for task in ("bbox", "segm"):
        expected = _lvis(world["lvis_path"], world["results"], task)
        for name in LVIS_METRICS:
            assert _same(ours[task][name], _pct(expected[name])), (task, name, ours[task][name])
        assert not math.isnan(ours[task]["APr"]) and 0 < ours[task]["AP"] < 100


def test_perfect_predictions_give_ap_100(world):
    per_image, _ = _make_predictions(world["coco"], perfect=True)
    coco = _run_evaluator(COCOEvaluator(world["coco_path"], per_class=False), per_image)
    lvis = _run_evaluator(LVISEvaluator(world["lvis_path"]), per_image)
    for task in ("bbox", "segm"):
        assert coco[task]["AP"] == pytest.approx(100.0) and coco[task]["AP50"] == pytest.approx(100.0)
        for name in ("AP", "APr", "APc", "APf"):
            assert lvis[task][name] == pytest.approx(100.0), (task, name)


def _fixed_ap_case(tmp_path):
    """Image 1 holds one object of each of two classes and 350 confident false positives of class
    0; the 300-per-image cap drops the class-1 hit, the per-class cap keeps it."""
    images = [{"id": 1, "width": 128, "height": 128, "neg_category_ids": [],
               "not_exhaustive_category_ids": []},
              {"id": 2, "width": 128, "height": 128, "neg_category_ids": [],
               "not_exhaustive_category_ids": []}]
    boxes = {(1, 1): [10.0, 10.0, 30.0, 30.0], (1, 2): [60.0, 60.0, 40.0, 40.0],
             (2, 1): [20.0, 40.0, 50.0, 30.0]}
    anns = [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": b, "area": b[2] * b[3],
             "segmentation": [_polygon(b, 1)]} for k, ((img, cat), b) in enumerate(boxes.items())]
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "a", "frequency": "f", "synset": "a", "image_count": 2,
                          "instance_count": 2},
                         {"id": 2, "name": "b", "frequency": "r", "synset": "b", "image_count": 1,
                          "instance_count": 1}]}
    path = tmp_path / "lvis_fixed.json"
    path.write_text(json.dumps(gt))
    rng = np.random.default_rng(3)
    results = [{"image_id": img, "category_id": cat, "bbox": list(b), "score": 0.5}
               for (img, cat), b in boxes.items()]
    for _ in range(350):
        x, y = (float(v) for v in rng.integers(0, 100, size=2))
        results.append({"image_id": 1, "category_id": 1, "bbox": [x, y, 3.0, 3.0],
                        "score": float(rng.uniform(0.6, 1.0))})
    return path, results


def _top_k_per_class(results, k):
    by_cat = {}
    for d in results:
        by_cat.setdefault(d["category_id"], []).append(d)
    return [d for c in sorted(by_cat) for d in sorted(by_cat[c], key=lambda d: -d["score"])[:k]]


def test_fixed_ap_differs_from_per_image_cap_and_equals_direct_computation(tmp_path):
    from eva_core.evaluation.lvis import evaluate_lvis

    path, results = _fixed_ap_case(tmp_path)
    standard = evaluate_lvis(path, results, "bbox")
    fixed = evaluate_lvis(path, results, "bbox", max_dets_per_class=10_000)
    assert standard["APr"] == pytest.approx(0.0)  # the class-b hit fell outside the 300 per image
    assert fixed["APr"] == pytest.approx(100.0)
    assert fixed["AP"] > standard["AP"]
    for k in (10_000, 100):
        direct = _lvis(path, _top_k_per_class(results, k), "bbox", max_dets=-1)
        ours = evaluate_lvis(path, results, "bbox", max_dets_per_class=k)
        assert all(_same(ours[m], _pct(direct[m])) for m in LVIS_METRICS)
    # the evaluator's fixed_ap switch is the 10,000-per-class protocol
    ev = LVISEvaluator(path, tasks=("bbox",), fixed_ap=True)
    assert ev.max_dets_per_class == 10_000


def test_scripts_print_save_and_match_the_evaluators(world, tmp_path, capsys):
    import tools.coco_eval
    import tools.lvis_eval

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(world["results"]))
    coco = _run_evaluator(COCOEvaluator(world["coco_path"]), world["per_image"])
    lvis = _run_evaluator(LVISEvaluator(world["lvis_path"]), world["per_image"])
    assert tools.coco_eval.main([str(world["coco_path"]), str(results_path), "--task", "bbox", "segm",
                                 "--output-dir", str(tmp_path / "c")]) == 0
    assert tools.lvis_eval.main([str(world["lvis_path"]), str(results_path), "--task", "bbox", "segm",
                                 "--output-dir", str(tmp_path / "l")]) == 0
    assert tools.lvis_eval.main([str(world["lvis_path"]), str(results_path), "--task", "segm", "--fixed-ap",
                                 "--output-dir", str(tmp_path / "l")]) == 0
    printed = capsys.readouterr().out
    assert "copypaste: Task: segm" in printed and "| APr |" in printed and "| AP-circle |" in printed
    for saved, expected in ((tmp_path / "c" / "coco_eval.json", coco),
                            (tmp_path / "l" / "lvis_eval.json", lvis)):
        got = json.loads(saved.read_text())
        assert got.keys() == expected.keys()
        for task in expected:
            assert got[task].keys() == expected[task].keys()
            assert all(_same(got[task][m], expected[task][m]) for m in expected[task])
    fixed = json.loads((tmp_path / "l" / "lvis_eval_fixed.json").read_text())
    direct = _lvis(world["lvis_path"], _top_k_per_class(world["results"], 10_000), "segm", max_dets=-1)
    assert all(_same(fixed["segm"][m], _pct(direct[m])) for m in LVIS_METRICS)
    assert "| metric | bbox | segm |" in (tmp_path / "c" / "coco_eval.md").read_text()


@pytest.mark.parametrize("bad, message", [
    ({"image_id": 1, "category_id": 3, "score": 0.5, "bbox": [1.0, 2.0, 3.0]}, "bbox"),
    ({"image_id": 1, "category_id": 4, "score": 0.5, "bbox": [1.0, 2.0, 3.0, 4.0]}, "category_id 4"),
    ({"image_id": 77, "category_id": 3, "score": 0.5, "bbox": [1.0, 2.0, 3.0, 4.0]}, "image_id 77"),
    ({"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0]}, "missing 'score'"),
])
def test_malformed_results_json_fails_naming_file_and_entry(world, tmp_path, bad, message):
    from eva_core.evaluation.coco import evaluate_coco_file
    from eva_core.evaluation.lvis import evaluate_lvis_file

    entries = copy.deepcopy(world["results"][:2]) + [bad]
    path = tmp_path / "bad_results.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=rf"bad_results\.json: entry 2 .*{message}"):
        evaluate_coco_file(world["coco_path"], path, ("bbox",))
    with pytest.raises(ValueError, match=rf"bad_results\.json: entry 2 .*{message}"):
        evaluate_lvis_file(world["lvis_path"], path, ("bbox",))
    # a segm evaluation needs an RLE per entry
    path.write_text(json.dumps([{k: v for k, v in world["results"][0].items() if k != "segmentation"}]))
    with pytest.raises(ValueError, match=r"bad_results\.json: entry 0 .*RLE"):
        evaluate_coco_file(world["coco_path"], path, ("segm",))


def test_nested_results_flow_through_inference_on_dataset(world, tmp_path):
    per_image = world["per_image"]

    class ReplayDetector(torch.nn.Module):
        """Returns the stored predictions of each image of the batch."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return [{"image_id": b["image_id"], "instances": per_image[b["image_id"]]} for b in batch]

    loader = [[{"image_id": i} for i in sorted(per_image)[s:s + 2]] for s in range(0, len(per_image), 2)]
    lvis = flatten_results_dict(inference_on_dataset(ReplayDetector(), loader,
                                                     LVISEvaluator(world["lvis_path"])))
    coco = flatten_results_dict(inference_on_dataset(
        ReplayDetector(), loader, DatasetEvaluators([COCOEvaluator(world["coco_path"], tasks=("bbox",))])))
    expected = _pycocotools(world["coco_path"], world["results"], "bbox").stats[0] * 100
    assert coco["bbox/AP"] == float(expected)
    assert lvis["segm/APr"] == float(_lvis(world["lvis_path"], world["results"], "segm")["APr"] * 100)
    assert "bbox/AP-triangle" in coco and "segm/APf" in lvis


def test_two_ranks_gather_into_the_single_process_result(world, monkeypatch):
    """Each rank processes half of the images; rank 0's gathered result equals one process
    seeing all of them."""
    ids = sorted(world["per_image"])
    rank1 = COCOEvaluator(world["coco_path"])
    for i in ids[1::2]:
        rank1.process([{"image_id": i}], [{"instances": world["per_image"][i]}])
    others = iter([rank1._image_ids, rank1._results, rank1._has_masks])
    monkeypatch.setattr(coco_mod.comm, "all_gather_object", lambda obj: [obj, next(others)])
    rank0 = COCOEvaluator(world["coco_path"])
    for i in ids[0::2]:
        rank0.process([{"image_id": i}], [{"instances": world["per_image"][i]}])
    gathered = rank0.evaluate()
    monkeypatch.undo()
    single = _run_evaluator(COCOEvaluator(world["coco_path"]), world["per_image"])
    assert flatten_results_dict(gathered).keys() == flatten_results_dict(single).keys()
    assert all(_same(a, b) for a, b in zip(flatten_results_dict(gathered).values(),
                                          flatten_results_dict(single).values()))


def test_bad_predictions_fail_with_a_clear_error(world):
    ev = COCOEvaluator(world["coco_path"])
    inst = dict(world["per_image"][1])
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        ev.process([{"image_id": 1}], [{"instances": dict(inst, classes=inst["classes"] + 10)}])
    with pytest.raises(ValueError, match="masks must be bool"):
        ev.process([{"image_id": 1}], [{"instances": dict(inst, masks=inst["masks"].float())}])
    with pytest.raises(KeyError, match="image_id"):
        ev.process([{}], [{"instances": inst}])


def test_rle_masks_score_like_bool_masks_and_no_masks_means_box_only(world):
    rle_inputs = {}
    for image_id, inst in world["per_image"].items():
        rles = [mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in inst["masks"]]
        rle_inputs[image_id] = dict(inst, masks=rles)  # counts as bytes, straight from pycocotools
    from_rle = _run_evaluator(COCOEvaluator(world["coco_path"]), rle_inputs)
    from_bool = _run_evaluator(COCOEvaluator(world["coco_path"]), world["per_image"])
    flat_rle, flat_bool = flatten_results_dict(from_rle), flatten_results_dict(from_bool)
    assert flat_rle.keys() == flat_bool.keys() and all(_same(flat_rle[k], flat_bool[k]) for k in flat_rle)
    boxes_only = {i: {k: v for k, v in inst.items() if k != "masks"}
                  for i, inst in world["per_image"].items()}
    assert set(_run_evaluator(COCOEvaluator(world["coco_path"]), boxes_only)) == {"bbox"}
    with pytest.raises(ValueError, match="no masks"):
        _run_evaluator(COCOEvaluator(world["coco_path"], tasks=("bbox", "segm")), boxes_only)


def test_no_detections_give_nan_metrics(world):
    empty = {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "classes": torch.zeros(0, dtype=torch.long)} for i in world["per_image"]}
    coco = _run_evaluator(COCOEvaluator(world["coco_path"]), empty)
    lvis = _run_evaluator(LVISEvaluator(world["lvis_path"]), empty)
    assert set(coco) == {"bbox"} and all(math.isnan(v) for v in coco["bbox"].values())
    assert set(lvis) == {"bbox"} and all(math.isnan(v) for v in lvis["bbox"].values())


def test_results_file_that_is_not_json_is_named(world, tmp_path):
    from eva_core.evaluation.coco import evaluate_coco_file

    path = tmp_path / "truncated.json"
    path.write_text(json.dumps(world["results"])[:100])
    with pytest.raises(ValueError, match=r"truncated\.json: not valid JSON"):
        evaluate_coco_file(world["coco_path"], path, ("bbox",))
    path.write_text(json.dumps({"annotations": world["results"]}))
    with pytest.raises(ValueError, match=r"truncated\.json: a COCO results file is a JSON list"):
        evaluate_coco_file(world["coco_path"], path, ("bbox",))
