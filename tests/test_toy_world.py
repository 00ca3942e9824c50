"""Specification of the toy world: every format round-trips through its real reader and its
labels agree with what is drawn in the pixels."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from eva_core.data import ImageFolderDataset, WebDatasetImages, read_file_list
from eva_core.data.annotations import load_coco_json, load_lvis_api, load_lvis_json
from eva_core.data.toy_world import (COLORS, MOTIONS, SHAPES, Shape, generate_toy_world, main,
                                     make_ade20k, make_coco, make_imagefolder, polygon_area, shape_polygon)

# Below about this many pixels (radius ~6) shape outlines are too coarse to tell apart reliably.
MIN_RECOGNIZABLE_AREA = 120
PALETTE = np.array(list(COLORS.values()), dtype=np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_toy_world(tmp_path_factory.mktemp("toy"), seed=0, size="small")


# ----------------------------------------------------------------------------- pixel helpers
def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def palette_index_map(rgb: np.ndarray, tolerance: float = 60.0) -> np.ndarray:
    """Per pixel: index of the palette colour within ``tolerance`` (RGB distance), else -1."""
    dist = np.linalg.norm(rgb[:, :, None, :] - PALETTE[None, None], axis=-1)
    index = dist.argmin(-1)
    index[dist.min(-1) > tolerance] = -1
    return index


def shape_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels painted with some palette colour (the background is grey by construction)."""
    return palette_index_map(rgb) >= 0


def count_blobs(mask: np.ndarray) -> int:
    """Connected regions (8-connected, at least 3 pixels: JPEG can detach a star tip's pixel)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    return int((np.bincount(labels.ravel())[1:] >= 3).sum())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# rotations after which each kind looks the same again
SYMMETRY = {"circle": 2 * math.pi, "square": math.pi / 2, "triangle": 2 * math.pi / 3,
            "star": 2 * math.pi / 5, "cross": math.pi / 2}


def best_matching_kind(mask: np.ndarray) -> str:
    """Which shape kind best explains a binary mask: regular-shape templates centred on the mask
    centroid, scaled to its area, tried over rotations and small scale changes; best IoU wins."""
    ys, xs = np.nonzero(mask)
    y0, x0 = max(ys.min() - 3, 0), max(xs.min() - 3, 0)
    crop = mask[y0:ys.max() + 4, x0:xs.max() + 4]
    cy, cx = ys.mean() + 0.5 - y0, xs.mean() + 0.5 - x0
    scores = {}
    for kind in SHAPES:
        unit_area = polygon_area(shape_polygon(Shape(kind, "red", 0, 0, 1.0, 0.0)))
        angles = [0.0] if kind == "circle" else np.linspace(0, SYMMETRY[kind], 18, endpoint=False)
        best = 0.0
        for scale, angle in itertools.product((0.95, 1.0, 1.05), angles):
            radius = scale * math.sqrt(mask.sum() / unit_area)
            template = Image.new("L", crop.shape[::-1], 0)
            points = shape_polygon(Shape(kind, "red", cx, cy, radius, float(angle)))
            ImageDraw.Draw(template).polygon([(x - 0.5, y - 0.5) for x, y in points], fill=1)
            best = max(best, iou(np.asarray(template, dtype=bool), crop))
        scores[kind] = best
    return max(scores, key=scores.get)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "toy_world.json"}


# ----------------------------------------------------------------------------- generation
def test_generation_is_deterministic_for_a_seed_and_changes_with_the_seed(world, tmp_path):
    again = generate_toy_world(tmp_path / "again", seed=0, size="small")
    other = generate_toy_world(tmp_path / "other", seed=1, size="small",
                               formats=["imagefolder", "imagefolder_color", "kinetics"])
    reference = tree_digest(Path(world["root"]))
    assert tree_digest(Path(again["root"])) == reference
    other_digest = tree_digest(Path(other["root"]))
    common = set(other_digest) & set(reference)
    assert any(f.endswith(".mp4") for f in common)
    assert any(f.startswith("imagefolder_color/") for f in common)
    assert all(other_digest[f] != reference[f] for f in common if f.endswith((".jpg", ".mp4")))


def test_default_size_generates_everything_within_30_seconds(tmp_path):
    # CPU time of this process: the bound holds on a busy shared machine too
    start = time.process_time()
    paths = generate_toy_world(tmp_path, seed=0, size="default")
    assert time.process_time() - start < 30
    assert len(ImageFolderDataset(paths["imagefolder_train"])) == 1000
    assert len(ImageFolderDataset(paths["imagefolder_color_train"])) == 100 * len(COLORS)


def test_cli_writes_the_requested_formats_and_a_manifest(tmp_path, capsys):
    paths = main(["--out", str(tmp_path), "--seed", "3", "--size", "small", "--formats", "coco"])
    manifest = json.loads(Path(paths["manifest"]).read_text())
    assert manifest["seed"] == 3 and manifest["formats"] == ["coco"]
    assert (tmp_path / manifest["paths"]["coco_val_json"]).is_file()
    assert not (tmp_path / "lvis").exists()
    assert "written to" in capsys.readouterr().out


def test_unknown_format_or_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"unknown toy-world formats \['pascal'\]"):
        generate_toy_world(tmp_path, formats=["pascal"])
    with pytest.raises(ValueError, match="size must be one of"):
        generate_toy_world(tmp_path, size="huge")
    with pytest.raises(ValueError, match="label must be one of"):
        make_imagefolder(tmp_path, label="texture")
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, 8\] for label='color'"):
        make_imagefolder(tmp_path, num_classes=9, label="color")


# ----------------------------------------------------------------------------- ImageFolder
def test_imagefolder_class_is_the_shape_drawn_in_the_image(world):
    val = ImageFolderDataset(world["imagefolder_val"])
    assert val.classes == sorted(SHAPES)
    assert len(val) == 4 * len(SHAPES) and len(ImageFolderDataset(world["imagefolder_train"])) == 60
    for path, label in val.samples:
        mask = shape_pixels(load_rgb(path))
        assert mask.sum() > 20, path
        assert best_matching_kind(mask) == val.classes[label], path


def test_imagefolder_color_class_is_the_colour_drawn_and_shape_types_vary(world):
    train = ImageFolderDataset(world["imagefolder_color_train"])
    val = ImageFolderDataset(world["imagefolder_color_val"])
    assert train.classes == val.classes == sorted(COLORS)
    assert len(train) == 6 * len(COLORS) and len(val) == 3 * len(COLORS)
    kinds = set()
    for path, label in train.samples + val.samples:
        colors = palette_index_map(load_rgb(path))
        painted = colors[colors >= 0]
        assert painted.size > 10, path
        # one shape, one colour: nearly every painted pixel is the class colour
        assert (painted == list(COLORS).index(train.classes[label])).mean() > 0.9, path
        assert count_blobs(colors >= 0) == 1, path
        if painted.size >= MIN_RECOGNIZABLE_AREA:
            kinds.add(best_matching_kind(colors >= 0))
    assert len(kinds) >= 3  # the shape type is random, not tied to the class


# ----------------------------------------------------------------------------- COCO
def test_coco_json_loads_in_pycocotools_and_masks_match_the_drawn_shapes(world):
    from pycocotools.coco import COCO

    load_coco_json(world["coco_train_json"])
    coco = COCO(world["coco_train_json"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    assert len(coco.getImgIds()) == 8 and len(coco.getAnnIds()) >= 8
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        rgb = load_rgb(Path(world["coco_train_images"]) / img["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        union = np.zeros(rgb.shape[:2], dtype=bool)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            union |= mask
            assert abs(ann["area"] - mask.sum()) < 0.15 * mask.sum() + 4
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            # thin polygon tips may not cover a pixel: allow 1.5 px
            assert abs(xs.min() - x) <= 1.5 and abs(xs.max() + 1 - (x + w)) <= 1.5
            assert abs(ys.min() - y) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5
            assert ann["iscrowd"] == 0
            if mask.sum() >= MIN_RECOGNIZABLE_AREA:
                checked += 1
                assert best_matching_kind(mask) == coco.cats[ann["category_id"]]["name"]
        # every painted pixel belongs to an annotation and vice versa
        assert iou(union, shape_pixels(rgb)) > 0.85
    assert checked >= 5


def test_coco_color_labels_are_the_painted_colour_on_the_same_images(tmp_path):
    from pycocotools.coco import COCO

    by_shape = make_coco(tmp_path, num_train=4, num_val=1, img_size=64, seed=2)
    by_color = make_coco(tmp_path, num_train=4, num_val=1, img_size=64, seed=2, label="color")
    assert Path(by_color["coco_train_json"]).parent.parent.name == "coco_color"
    shape_coco, color_coco = COCO(by_shape["coco_train_json"]), COCO(by_color["coco_train_json"])
    assert [c["name"] for c in color_coco.loadCats(color_coco.getCatIds())] == list(COLORS)
    assert shape_coco.getAnnIds() == color_coco.getAnnIds()
    for img in color_coco.loadImgs(color_coco.getImgIds()):
        name = img["file_name"]
        rgb = load_rgb(Path(by_color["coco_train_images"]) / name)
        assert np.array_equal(rgb, load_rgb(Path(by_shape["coco_train_images"]) / name))
        colors = palette_index_map(rgb)
        for ann in color_coco.loadAnns(color_coco.getAnnIds(imgIds=img["id"])):
            assert ann["segmentation"] == shape_coco.anns[ann["id"]]["segmentation"]
            painted = colors[color_coco.annToMask(ann).astype(bool) & (colors >= 0)]
            majority = list(COLORS)[np.bincount(painted, minlength=len(COLORS)).argmax()]
            assert color_coco.cats[ann["category_id"]]["name"] == majority
    with pytest.raises(ValueError, match="label must be one of"):
        make_coco(tmp_path, num_train=1, num_val=1, img_size=32, label="size")


# ----------------------------------------------------------------------------- LVIS
def test_lvis_json_loads_in_lvis_api_with_long_tailed_frequencies(world):
    api = load_lvis_api(world["lvis_train_json"])
    cats = api.load_cats(None)
    assert {c["frequency"] for c in cats} == {"r", "c", "f"}
    counts = sorted((c["image_count"] for c in cats), reverse=True)
    assert counts[-1] >= 1 and counts[0] >= 5 * counts[-1]
    for cat in cats:
        anns = api.load_anns(api.get_ann_ids(cat_ids=[cat["id"]]))
        assert cat["instance_count"] == len(anns)
        assert cat["image_count"] == len({a["image_id"] for a in anns})
        assert cat["synset"].endswith(".n.01")
    val = load_lvis_json(world["lvis_val_json"])
    assert val["categories"] == api.dataset["categories"]


def test_lvis_negatives_are_absent_and_unannotated_instances_are_marked_not_exhaustive(world):
    api = load_lvis_api(world["lvis_train_json"])
    name_of = {c["id"]: c["name"] for c in api.load_cats(None)}
    color_index = {name: i for i, name in enumerate(COLORS)}
    saw_not_exhaustive = False
    for img in api.load_imgs(None):
        anns = api.load_anns(api.get_ann_ids(img_ids=[img["id"]]))
        annotated = {a["category_id"] for a in anns}
        assert not annotated & set(img["neg_category_ids"])
        assert len(img["neg_category_ids"]) > 0
        rgb = load_rgb(Path(world["lvis_train_images"]) / img["file_name"])
        colors = palette_index_map(rgb)
        expected_blobs = {}  # colour -> drawn instances = annotations + unannotated extras
        for cid in [a["category_id"] for a in anns] + img["not_exhaustive_category_ids"]:
            color = color_index[name_of[cid].split("_")[0]]
            expected_blobs[color] = expected_blobs.get(color, 0) + 1
        saw_not_exhaustive |= bool(img["not_exhaustive_category_ids"])
        for color, count in expected_blobs.items():
            assert count_blobs(colors == color) == count, (img["file_name"], list(COLORS)[color])
    assert saw_not_exhaustive


def test_lvis_eval_scores_perfect_detections_as_ap_one(world):
    from lvis import LVISEval, LVISResults

    api = load_lvis_api(world["lvis_val_json"])
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in api.load_anns(None)]
    evaluator = LVISEval(api, LVISResults(api, detections), iou_type="bbox")
    evaluator.run()
    assert evaluator.get_results()["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- ADE20K
def test_ade20k_labels_mark_the_drawn_shapes_and_zero_marks_background(world):
    meta = json.loads((Path(world["ade20k_root"]) / "meta.json").read_text())
    assert meta["classes"] == list(SHAPES) and meta["background_value"] == 0
    images = sorted(Path(world["ade20k_train_images"]).glob("*.jpg"))
    assert len(images) == 8
    for image_path in images:
        label = np.asarray(Image.open(Path(world["ade20k_train_annotations"]) /
                                      image_path.with_suffix(".png").name))
        assert label.dtype == np.uint8 and set(np.unique(label)) <= set(range(len(SHAPES) + 1))
        assert iou(label > 0, shape_pixels(load_rgb(image_path))) > 0.85
        blobs, count = ndimage.label(label > 0)
        for blob in range(1, count + 1):
            values = np.unique(label[blobs == blob])
            assert len(values) == 1
            if (blobs == blob).sum() >= MIN_RECOGNIZABLE_AREA:
                assert best_matching_kind(blobs == blob) == SHAPES[values[0] - 1]


def test_ade20k_color_labels_are_the_painted_colour_on_the_same_images(tmp_path):
    by_shape = make_ade20k(tmp_path, num_train=3, num_val=1, img_size=64, seed=4)
    by_color = make_ade20k(tmp_path, num_train=3, num_val=1, img_size=64, seed=4, label="color")
    assert Path(by_color["ade20k_root"]).name == "ade20k_color"
    assert json.loads(Path(by_color["ade20k_meta"]).read_text())["classes"] == list(COLORS)
    for image_path in sorted(Path(by_color["ade20k_train_images"]).glob("*.jpg")):
        rgb = load_rgb(image_path)
        assert np.array_equal(rgb, load_rgb(Path(by_shape["ade20k_train_images"]) / image_path.name))
        png = image_path.with_suffix(".png").name
        color_label = np.asarray(Image.open(Path(by_color["ade20k_train_annotations"]) / png))
        shape_label = np.asarray(Image.open(Path(by_shape["ade20k_train_annotations"]) / png))
        assert np.array_equal(color_label > 0, shape_label > 0)
        painted = palette_index_map(rgb)
        inside = (color_label > 0) & (painted >= 0)
        # JPEG edges aside, each labelled pixel carries the index of the colour painted there
        assert (color_label[inside] == painted[inside] + 1).mean() > 0.95
    with pytest.raises(ValueError, match="label must be one of"):
        make_ade20k(tmp_path, num_train=1, num_val=1, img_size=32, label="size")


# ----------------------------------------------------------------------------- Kinetics
def test_kinetics_clips_decode_with_av_and_move_in_the_labelled_direction(world):
    import av

    root = Path(world["kinetics_root"])
    assert (root / "classes.txt").read_text().split() == list(MOTIONS)
    entries = read_file_list(world["kinetics_train_list"])
    assert len(entries) == 3 * len(MOTIONS)
    for rel, label in entries:
        with av.open(str(root / rel)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
        first, last = (np.argwhere(shape_pixels(f.astype(np.float32))).mean(0) for f in
                       (frames[0], frames[-1]))
        dy, dx = last - first
        expected = {"moving_left": (0, -1), "moving_right": (0, 1), "moving_up": (-1, 0),
                    "moving_down": (1, 0)}[MOTIONS[label]]
        along = dy * expected[0] + dx * expected[1]
        across = dx * expected[0] + dy * expected[1]
        assert along > 8 and abs(across) < 3, (rel, dy, dx)


# ----------------------------------------------------------------------------- captions
def test_captions_csv_and_webdataset_shards_agree_and_describe_the_drawn_shapes(world):
    import webdataset as wds

    csv_path = Path(world["captions_csv"])
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and set(rows[0]) == {"filepath", "caption"}
    shard_samples = list(wds.WebDataset(world["captions_shards"], shardshuffle=False))
    assert [s["__key__"] for s in shard_samples] == [Path(r["filepath"]).stem for r in rows]
    for row, sample in zip(rows, shard_samples):
        image_path = csv_path.parent / row["filepath"]
        assert sample["txt"].decode() == row["caption"]
        assert sample["jpg"] == image_path.read_bytes()
        colors = palette_index_map(load_rgb(image_path))
        blobs, count = ndimage.label(colors >= 0, structure=np.ones((3, 3)))
        blob_ids = [b for b in range(1, count + 1) if (blobs == b).sum() >= 3]
        left_to_right = sorted(blob_ids, key=lambda b: np.argwhere(blobs == b)[:, 1].mean())
        drawn_colors = [list(COLORS)[np.bincount(colors[blobs == b]).argmax()] for b in left_to_right]
        described = [phrase.split()[1] for phrase in row["caption"].replace(" and ", ", ").split(", ")]
        assert described == drawn_colors, row
    readable = WebDatasetImages(world["captions_shards"])
    assert len(readable) == 16 and readable[0]["text"] == rows[0]["caption"]
