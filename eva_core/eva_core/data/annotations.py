"""Loading and validating COCO / LVIS instance annotation files.

A malformed file fails before training starts, with the file and the offending entry named, e.g.
``instances_val2017.json: annotations[17] (id 42): bbox must have 4 numbers, got [1, 2]``.
"""
from __future__ import annotations

import json
import math
import os
from numbers import Real
from typing import Any

__all__ = ["AnnotationFormatError", "load_coco_json", "load_lvis_json", "load_lvis_api",
           "ensure_lvis_numpy_compat", "LVIS_FREQUENCIES"]

LVIS_FREQUENCIES = ("r", "c", "f")


class AnnotationFormatError(ValueError):
    """An annotation file is malformed; the message names the file and the entry."""


def ensure_lvis_numpy_compat() -> None:
    """Restore ``np.float`` (removed in numpy 1.24), which lvis 0.5.3's LVISEval still uses.

    The single place the project patches numpy for lvis; call it before using ``lvis``.
    """
    import numpy as np

    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    # json.load reads NaN / Infinity tokens as floats; a non-finite coordinate or area is an error
    return _is_number(value) and math.isfinite(value)


class _Checker:
    """Collects the location prefix (file, list, index, id) for error messages."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, message: str) -> None:
        raise AnnotationFormatError(f"{self.path}: {where}: {message}")

    def entries(self, data: dict, key: str, required: bool = True) -> list:
        if key not in data:
            if required:
                self.fail("top level", f"missing required key '{key}' (a list)")
            return []
        if not isinstance(data[key], list):
            self.fail(key, f"must be a list, got {type(data[key]).__name__}")
        return data[key]

    @staticmethod
    def where(key: str, index: int, entry: Any) -> str:
        if isinstance(entry, dict) and "id" in entry:
            return f"{key}[{index}] (id {entry['id']})"
        return f"{key}[{index}]"

    def require(self, where: str, entry: Any, key: str, check, expected: str) -> Any:
        if not isinstance(entry, dict):
            self.fail(where, f"must be an object, got {type(entry).__name__}")
        if key not in entry:
            self.fail(where, f"missing required key '{key}' ({expected})")
        if not check(entry[key]):
            self.fail(where, f"{key} must be {expected}, got {entry[key]!r}")
        return entry[key]


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: "
                                    f"{e.msg}") from e
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path}: top level must be an object, got {type(data).__name__}")
    return data


def _unique_ids(c: _Checker, key: str, entries: list) -> set[int]:
    ids: set[int] = set()
    for i, entry in enumerate(entries):
        where = c.where(key, i, entry)
        value = c.require(where, entry, "id", _is_int, "an integer")
        if value in ids:
            c.fail(where, f"duplicate id {value}")
        ids.add(value)
    return ids


def _is_polygon_list(seg: Any) -> bool:
    return (isinstance(seg, list) and len(seg) > 0 and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_finite_number(v) for v in p)
        for p in seg))


def _is_rle(seg: Any) -> bool:
    return (isinstance(seg, dict) and "counts" in seg and isinstance(seg.get("size"), list)
            and len(seg["size"]) == 2)


def _check_images(c: _Checker, images: list, lvis: bool) -> set[int]:
    ids = _unique_ids(c, "images", images)
    for i, img in enumerate(images):
        where = c.where("images", i, img)
        for key in ("width", "height"):
            c.require(where, img, key, lambda v: _is_int(v) and v > 0, "a positive integer")
        if lvis and "file_name" not in img:  # LVIS v1 names images only through coco_url
            c.require(where, img, "coco_url", lambda v: isinstance(v, str) and v, "a non-empty string")
        else:
            c.require(where, img, "file_name", lambda v: isinstance(v, str) and v, "a non-empty string")
    return ids


def _check_categories(c: _Checker, categories: list, lvis: bool) -> set[int]:
    ids = _unique_ids(c, "categories", categories)
    for i, cat in enumerate(categories):
        where = c.where("categories", i, cat)
        c.require(where, cat, "name", lambda v: isinstance(v, str) and v, "a non-empty string")
        if lvis:
            c.require(where, cat, "frequency", lambda v: v in LVIS_FREQUENCIES,
                      f"one of {list(LVIS_FREQUENCIES)}")
            for key in ("image_count", "instance_count"):
                c.require(where, cat, key, lambda v: _is_int(v) and v >= 0, "a non-negative integer")
            c.require(where, cat, "synset", lambda v: isinstance(v, str) and v, "a non-empty string")
    return ids


def _check_annotation(c: _Checker, where: str, ann: dict, image_ids: set[int],
                      category_ids: set[int], lvis: bool) -> None:
    c.require(where, ann, "image_id", lambda v: v in image_ids, "the id of an entry in 'images'")
    c.require(where, ann, "category_id", lambda v: v in category_ids,
              "the id of an entry in 'categories'")
    bbox = c.require(where, ann, "bbox", lambda v: isinstance(v, list), "a list [x, y, w, h]")
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        c.fail(where, f"bbox must have 4 numbers, got {bbox!r}")
    if not all(_is_finite_number(v) for v in bbox):
        c.fail(where, f"bbox must have finite coordinates (no NaN / Infinity), got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        c.fail(where, f"bbox width and height must be >= 0, got {bbox!r}")
    c.require(where, ann, "area", lambda v: _is_finite_number(v) and v >= 0, "a finite non-negative number")
    iscrowd = 0
    if not lvis:
        iscrowd = c.require(where, ann, "iscrowd", lambda v: v in (0, 1), "0 or 1")
    if "segmentation" in ann or lvis:
        c.require(where, ann, "segmentation",
                  lambda v: _is_polygon_list(v) or (iscrowd == 1 and _is_rle(v)),
                  "a list of polygons (each an even list of >= 6 finite numbers)"
                  + ("" if lvis else " or, when iscrowd is 1, an RLE {counts, size}"))


def _load_instances(path: str | os.PathLike, lvis: bool) -> dict:
    path = str(path)
    data = _read_json(path)
    c = _Checker(path)
    images = c.entries(data, "images")
    categories = c.entries(data, "categories")
    annotations = c.entries(data, "annotations")
    image_ids = _check_images(c, images, lvis)
    category_ids = _check_categories(c, categories, lvis)
    _unique_ids(c, "annotations", annotations)
    for i, ann in enumerate(annotations):
        _check_annotation(c, c.where("annotations", i, ann), ann, image_ids, category_ids, lvis)
    if lvis:
        for i, img in enumerate(images):
            where = c.where("images", i, img)
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                c.require(where, img, key,
                          lambda v: isinstance(v, list) and all(x in category_ids for x in v),
                          "a list of ids of entries in 'categories'")
    return data


def load_coco_json(path: str | os.PathLike) -> dict:
    """Read a COCO instances file and check its structure.

    Checks: ``images`` (unique int ``id``, ``file_name``, positive ``width``/``height``),
    ``categories`` (unique ``id``, ``name``), ``annotations`` (unique ``id``, known ``image_id``
    and ``category_id``, ``bbox`` of 4 numbers xywh with w, h >= 0, ``area`` >= 0, ``iscrowd``
    0/1, ``segmentation`` polygons or, for crowds, RLE).

    Returns:
        The parsed JSON dict (unchanged).

    Raises:
        FileNotFoundError: no such file.
        AnnotationFormatError: naming the file and the offending entry.
    """
    return _load_instances(path, lvis=False)


def load_lvis_json(path: str | os.PathLike) -> dict:
    """Read an LVIS v1 file and check its structure.

    As :func:`load_coco_json` (no ``iscrowd``; images named by ``coco_url`` or ``file_name``), plus
    categories with ``frequency`` in r/c/f, ``image_count``, ``instance_count`` and ``synset``, and
    images with ``neg_category_ids`` / ``not_exhaustive_category_ids`` lists of known category ids.
    """
    return _load_instances(path, lvis=True)


def load_lvis_api(path: str | os.PathLike):
    """Validate an LVIS file, then open it with the official ``lvis.LVIS`` API."""
    load_lvis_json(path)
    ensure_lvis_numpy_compat()
    from lvis import LVIS

    return LVIS(str(path))
