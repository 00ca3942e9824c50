"""COCO / LVIS v1 / Objects365 / custom COCO-format jsons as detectron2-style dataset dicts.

One reader for every instance json: the class count and the class names come from the json's
``categories`` (sorted by id and mapped to contiguous ids ``0..K-1``, detectron2's
``thing_dataset_id_to_contiguous_id``), so a custom dataset needs only the json and image paths
(``docs/recipes/detection.md#datasets``). The file is validated first by
:mod:`eva_core.data.annotations`, so a malformed json fails naming the file and the entry.

What COCO defines is kept as detectron2 keeps it: crowd regions stay in the dicts with
``iscrowd=1`` (the training mapper drops them, the evaluator ignores detections on them); images
without annotations are kept unless ``filter_empty`` (detectron2's training default drops images
that have no non-crowd annotation). Degenerate boxes (width or height 0) are dropped and counted in
:attr:`DetectionDataset.num_degenerate`, with the first few annotation ids logged.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from eva_core.data.annotations import AnnotationFormatError, load_coco_json, load_lvis_json

__all__ = ["BoxMode", "DetectionDataset", "load_detection_json", "is_lvis_json", "json_num_classes"]

logger = logging.getLogger(__name__)


class BoxMode:
    """detectron2's ``BoxMode`` values for the two layouts used here (ints, as in its dicts)."""

    XYXY_ABS = 0
    XYWH_ABS = 1


@dataclass
class DetectionDataset:
    """Dataset dicts plus the metadata detectron2 keeps in ``MetadataCatalog``.

    Attributes:
        dicts: one dict per image: ``file_name, height, width, image_id, annotations`` (each
            ``bbox`` XYWH_ABS, ``bbox_mode``, contiguous ``category_id``, ``segmentation``,
            ``iscrowd``); LVIS images add ``neg_category_ids`` / ``not_exhaustive_category_ids``
            (contiguous ids).
        thing_classes: class names, index = contiguous id.
        thing_dataset_id_to_contiguous_id: json category id -> contiguous id.
        class_image_count: per contiguous id, the json's ``image_count`` (LVIS) or the number of
            images annotated with the class (other jsons); the federated loss weights.
        json_file: the file read.
        num_degenerate: annotations dropped because their box had zero width or height.
        num_empty_filtered: images dropped by ``filter_empty``.
        is_lvis: read with the LVIS v1 schema.
    """

    dicts: list[dict]
    thing_classes: list[str]
    thing_dataset_id_to_contiguous_id: dict[int, int]
    class_image_count: list[int]
    json_file: str
    num_degenerate: int = 0
    num_empty_filtered: int = 0
    is_lvis: bool = False
    degenerate_ids: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.thing_classes)

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> dict:
        return self.dicts[index]


def is_lvis_json(data: dict) -> bool:
    """True when the categories carry LVIS v1's ``frequency`` field (COCO / Objects365 do not)."""
    cats = data.get("categories")
    return bool(isinstance(cats, list) and cats and isinstance(cats[0], dict) and "frequency" in cats[0])


def _peek_lvis(json_file: str) -> bool:
    # the same reader as the validators, so a broken file fails with the same message; "auto" thus
    # parses the json twice (pass dataset_format to read a large LVIS / Objects365 file once)
    from eva_core.data.annotations import _read_json

    return is_lvis_json(_read_json(json_file))


@functools.lru_cache(maxsize=8)
def _num_categories(json_file: str, mtime_ns: int) -> int:
    from eva_core.data.annotations import AnnotationFormatError, _read_json

    cats = _read_json(json_file).get("categories")
    if not isinstance(cats, list) or not cats:
        raise AnnotationFormatError(f"{json_file}: categories: expected a non-empty list of classes")
    return len(cats)


def json_num_classes(json_file: str | os.PathLike) -> int:
    """The class count of an instances json (``len(categories)``), so a recipe's
    ``model.roi_heads.num_classes`` follows its dataset (a custom json needs no code edit).

    Cached per file and modification time: a config asks once per head that needs it.

    Raises:
        FileNotFoundError: no such json.
        AnnotationFormatError: the json has no non-empty ``categories`` list.
    """
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{json_file}: no such instances json (it gives the class count)")
    return _num_categories(json_file, os.stat(json_file).st_mtime_ns)


def _image_file(image_root: str, img: dict) -> str:
    if "file_name" in img:
        return os.path.join(image_root, img["file_name"])
    # LVIS v1 names images only by their COCO url (".../train2017/000000391895.jpg"); its val split
    # mixes COCO train2017 and val2017 images, so detectron2 reads them as image_root/<split>/<file>
    # (image_root = the COCO folder); a flat folder of the files (image_root/<file>) works too
    split_folder, name = img["coco_url"].split("/")[-2:]
    nested = os.path.join(image_root, split_folder, name)
    return nested if os.path.isfile(nested) else os.path.join(image_root, name)


def _segmentation(segm: Any, height: int, width: int) -> Any:
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        # uncompressed RLE (COCO crowds): compress it, as detectron2 does
        from pycocotools import mask as mask_util

        return mask_util.frPyObjects(segm, *segm["size"])
    return segm


def load_detection_json(json_file: str | os.PathLike, image_root: str | os.PathLike, *,
                        dataset_format: str = "auto", filter_empty: bool = False) -> DetectionDataset:
    """Read a COCO-format instances json (COCO, LVIS v1, Objects365 or custom).

    Args:
        json_file: the instances json.
        image_root: folder the images' ``file_name`` (or, for LVIS, the last part of
            ``coco_url``) is relative to.
        dataset_format: ``"coco"``, ``"lvis"`` or ``"auto"`` (LVIS when categories have
            ``frequency``).
        filter_empty: drop images without a non-crowd annotation (detectron2's training default).

    Returns:
        A :class:`DetectionDataset`.

    Raises:
        FileNotFoundError: no such json.
        AnnotationFormatError: the json is malformed (the message names the file and the entry).
        ValueError: unknown ``dataset_format``.
    """
    json_file, image_root = str(json_file), str(image_root)
    if dataset_format not in ("auto", "coco", "lvis"):
        raise ValueError(f"dataset_format must be 'auto', 'coco' or 'lvis', got {dataset_format!r}")
    lvis = _peek_lvis(json_file) if dataset_format == "auto" else dataset_format == "lvis"
    data = load_lvis_json(json_file) if lvis else load_coco_json(json_file)
    if not data["categories"]:
        raise AnnotationFormatError(f"{json_file}: categories: the list is empty; at least one class "
                                    f"is needed")

    cats = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    degenerate: list[int] = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            degenerate.append(ann["id"])
            continue
        per_image[ann["image_id"]].append(ann)

    dicts: list[dict] = []
    images_with_class: list[set[int]] = [set() for _ in cats]
    num_filtered = 0
    for img in data["images"]:
        height, width = img["height"], img["width"]
        objs = []
        for ann in per_image[img["id"]]:
            obj = {"bbox": [float(v) for v in ann["bbox"]], "bbox_mode": BoxMode.XYWH_ABS,
                   "category_id": id_map[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0)),
                   "id": ann["id"]}
            if "segmentation" in ann:
                obj["segmentation"] = _segmentation(ann["segmentation"], height, width)
            objs.append(obj)
            images_with_class[obj["category_id"]].add(img["id"])
        if filter_empty and not any(o["iscrowd"] == 0 for o in objs):
            num_filtered += 1
            continue
        record = {"file_name": _image_file(image_root, img), "height": height, "width": width,
                  "image_id": img["id"], "annotations": objs}
        if lvis:
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                record[key] = [id_map[c] for c in img.get(key, [])]
        dicts.append(record)

    if lvis:
        image_count = [int(c["image_count"]) for c in cats]
    else:
        image_count = [len(s) for s in images_with_class]
    if degenerate:
        logger.warning("%s: dropped %d annotations with zero-width or zero-height boxes (ids %s%s)",
                       json_file, len(degenerate), degenerate[:5], " ..." if len(degenerate) > 5 else "")
    if num_filtered:
        logger.info("%s: dropped %d images without non-crowd annotations", json_file, num_filtered)
    return DetectionDataset(dicts=dicts, thing_classes=[c["name"] for c in cats],
                            thing_dataset_id_to_contiguous_id=id_map, class_image_count=image_count,
                            json_file=json_file, num_degenerate=len(degenerate),
                            num_empty_filtered=num_filtered, is_lvis=lvis, degenerate_ids=degenerate)
