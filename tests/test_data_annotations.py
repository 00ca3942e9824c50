"""Specification of COCO / LVIS annotation validation: broken entries are named precisely."""
from __future__ import annotations

import copy
import json

import pytest

from eva_core.data.annotations import (AnnotationFormatError, ensure_lvis_numpy_compat,
                                       load_coco_json, load_lvis_json)
from eva_core.data.toy_world import make_coco, make_lvis


@pytest.fixture(scope="module")
def toy_jsons(tmp_path_factory):
    out = tmp_path_factory.mktemp("ann")
    coco = json.loads(open(make_coco(out, num_train=6, num_val=1, img_size=48)["coco_train_json"]).read())
    lvis = json.loads(open(make_lvis(out, num_train=10, num_val=1, img_size=48, num_colors=2)
                           ["lvis_train_json"]).read())
    return coco, lvis


def write(tmp_path, data, name="instances.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_valid_toy_files_load_unchanged(toy_jsons, tmp_path):
    coco, lvis = toy_jsons
    assert load_coco_json(write(tmp_path, coco)) == coco
    assert load_lvis_json(write(tmp_path, lvis, "lvis.json")) == lvis


def test_short_bbox_is_named_with_file_index_and_id(toy_jsons, tmp_path):
    coco = copy.deepcopy(toy_jsons[0])
    coco["annotations"][2]["bbox"] = [1, 2]
    ann_id = coco["annotations"][2]["id"]
    with pytest.raises(AnnotationFormatError) as err:
        load_coco_json(write(tmp_path, coco))
    assert str(err.value) == (f"{tmp_path / 'instances.json'}: annotations[2] (id {ann_id}): "
                              f"bbox must have 4 numbers, got [1, 2]")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(category_id=999),
     r"annotations\[0\] \(id \d+\): category_id must be the id of an entry in 'categories', got 999"),
    (lambda d: d["annotations"][1].update(image_id=-5), r"annotations\[1\].*image_id.*got -5"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]), r"annotations\[0\].*segmentation"),
    (lambda d: d["annotations"][0].pop("iscrowd"), r"missing required key 'iscrowd'"),
    (lambda d: d["images"][0].update(width=0),
     r"images\[0\] \(id \d+\): width must be a positive integer, got 0"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[\d+\] \(id \d+\): duplicate id"),
    (lambda d: d.pop("categories"), r"top level: missing required key 'categories'"),
])
def test_broken_coco_entries_are_named(toy_jsons, tmp_path, mutate, message):
    coco = copy.deepcopy(toy_jsons[0])
    mutate(coco)
    with pytest.raises(AnnotationFormatError, match=message):
        load_coco_json(write(tmp_path, coco))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["categories"][3].update(frequency="x"),
     r"categories\[3\] \(id 4\): frequency must be one of \['r', 'c', 'f'\], got 'x'"),
    (lambda d: d["categories"][0].pop("image_count"), r"categories\[0\].*missing required key 'image_count'"),
    (lambda d: d["images"][0].update(neg_category_ids=[12345]),
     r"images\[0\].*neg_category_ids must be a list of ids of entries in 'categories'"),
    (lambda d: d["images"][0].pop("not_exhaustive_category_ids"), r"not_exhaustive_category_ids"),
])
def test_broken_lvis_entries_are_named(toy_jsons, tmp_path, mutate, message):
    lvis = copy.deepcopy(toy_jsons[1])
    mutate(lvis)
    with pytest.raises(AnnotationFormatError, match=message):
        load_lvis_json(write(tmp_path, lvis, "lvis.json"))


def test_invalid_json_is_named_with_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(AnnotationFormatError, match=r"broken.json: not valid JSON at line 2 column"):
        load_coco_json(path)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_lvis_json(tmp_path / "absent.json")


def test_lvis_numpy_shim_restores_np_float():
    import numpy as np

    ensure_lvis_numpy_compat()
    assert np.float is float


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_box_annotation_is_refused_naming_entry(toy_jsons, tmp_path, bad):
    coco = copy.deepcopy(toy_jsons[0])
    coco["annotations"][3]["bbox"][1] = bad
    ann_id = coco["annotations"][3]["id"]
    path = write(tmp_path, coco)  # json.dumps writes NaN / Infinity, which json.load reads back
    with pytest.raises(AnnotationFormatError) as err:
        load_coco_json(path)
    message = str(err.value)
    assert message.startswith(f"{path}: annotations[3] (id {ann_id}): bbox must have finite coordinates")
    assert repr(bad) in message


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(area=float("nan")), r"annotations\[0\].*area must be a finite"),
    (lambda d: d["annotations"][1].update(segmentation=[[0, 0, 4, float("inf"), 4, 4]]),
     r"annotations\[1\].*segmentation must be a list of polygons .*finite numbers"),
])
def test_non_finite_area_and_polygon_are_refused_naming_entry(toy_jsons, tmp_path, mutate, message):
    coco = copy.deepcopy(toy_jsons[0])
    mutate(coco)
    with pytest.raises(AnnotationFormatError, match=message):
        load_coco_json(write(tmp_path, coco))
