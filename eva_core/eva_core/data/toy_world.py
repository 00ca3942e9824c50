"""The toy world: small, seeded datasets of rendered shape scenes in the real dataset formats.

Every image is a noisy, low-saturation textured background with saturated shapes drawn on it
(circle, square, triangle, star, cross in eight colours, random position, size and rotation).
Each shape is a polygon; the same polygon is drawn with PIL and written as the annotation, so
labels, boxes, masks, motions and captions are determined by what is drawn.

Formats (paths relative to the output folder):

- ``imagefolder/{train,val}/<shape>/*.jpg``: one shape per image, class = shape type.
- ``imagefolder_color/{train,val}/<colour>/*.jpg``: one shape (any type) per image, class = its
  colour (eight classes, ``COLORS``). A tiny EVA learns colours on a CPU in seconds but not shapes,
  so the toy MIM pipeline and the toy transfer proof use this set (paths
  ``imagefolder_color_{train,val}``).
- ``coco/{train2017,val2017}/*.jpg`` + ``coco/annotations/instances_{train,val}2017.json``:
  COCO instances; category = shape type; polygon ``segmentation``, ``bbox`` xywh, ``area``
  (polygon area), ``iscrowd`` 0. ``make_coco(..., label="color")`` writes the same images to
  ``coco_color/`` with category = colour (the classes the toy CLIP teacher knows).
- ``lvis/{train2017,val2017}/*.jpg`` + ``lvis/lvis_v1_{train,val}.json``: LVIS v1; category =
  colour + shape (``red_circle``) drawn with a long-tailed (Zipf) frequency. ``frequency`` comes
  from the train ``image_count`` with thresholds scaled to the toy size (LVIS uses 10 / 100 images
  out of 100k): rare <= max(1, 2% of train images), common <= max(rare + 1, 6%), else frequent.
  ``neg_category_ids`` are categories verified absent; in some images one extra instance of an
  annotated category is drawn but NOT annotated, and that category is listed in
  ``not_exhaustive_category_ids`` (as in LVIS).
- ``ade20k/images/{training,validation}/*.jpg`` + ``ade20k/annotations/{...}/*.png``: ADE20K
  layout; label png value ``k`` = shape class ``k`` (1-based, ``ade20k/meta.json`` lists them) and
  0 = background, which ADE's reduce-zero-label convention maps to the ignore index 255 (so
  training sees classes 0..K-1 and ignores the background). ``make_ade20k(..., label="color")``:
  the same images in ``ade20k_color/`` with class = colour.
- ``kinetics/videos/{train,val}/*.mp4`` + ``kinetics/{train,val}_list.txt`` (``path label``,
  paths relative to ``kinetics/``) + ``kinetics/classes.txt``: one shape moving in a straight
  line; class = motion direction. mpeg4 in mp4 (PyAV), single-threaded so bytes are reproducible.
- ``captions/images/*.jpg`` + ``captions/captions.csv`` (``filepath,caption``, paths relative to
  the csv folder) + ``captions/shards/captions-NNNNNN.tar`` (webdataset: ``key.jpg`` +
  ``key.txt``): 1-3 shapes, caption lists them left to right ("a red circle and a blue square").

Generation is a pure function of the seed: every image draws from its own
``numpy.random.default_rng([seed, format, split, index])``.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import tarfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLORS", "IMAGEFOLDER_LABELS", "MOTIONS", "SIZES", "Shape", "shape_polygon",
           "polygon_area", "render_background", "draw_shapes", "shape_mask", "sample_shapes", "caption_for",
           "make_imagefolder", "make_coco", "make_lvis", "make_ade20k", "make_kinetics",
           "make_captions", "generate_toy_world", "main"]

SHAPES = ("circle", "square", "triangle", "star", "cross")
# Saturated colours far from the grey background and from each other (JPEG-robust).
COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230),
          "yellow": (235, 215, 40), "magenta": (225, 45, 210), "cyan": (40, 210, 225),
          "orange": (250, 140, 20), "purple": (120, 40, 180)}
MOTIONS = ("moving_left", "moving_right", "moving_up", "moving_down")
_MOTION_STEP = {"moving_left": (-1, 0), "moving_right": (1, 0), "moving_up": (0, -1),
                "moving_down": (0, 1)}
_FORMAT_IDS = {"imagefolder": 1, "coco": 2, "lvis": 3, "ade20k": 4, "kinetics": 5, "captions": 6,
               "imagefolder_color": 7}
IMAGEFOLDER_LABELS = ("shape", "color")
_SPLIT_IDS = {"train": 0, "val": 1}

# Sizes: "small" is for tests; "default" is still generated in well under 30 s on 2 cores.
SIZES = {
    "small": {"imagefolder": dict(train_per_class=12, val_per_class=4, img_size=32),
              "imagefolder_color": dict(train_per_class=6, val_per_class=3, img_size=32),
              "coco": dict(num_train=8, num_val=4, img_size=64),
              "lvis": dict(num_train=40, num_val=10, img_size=64, num_colors=6),
              "ade20k": dict(num_train=8, num_val=4, img_size=64),
              "kinetics": dict(train_per_class=3, val_per_class=2, img_size=32, num_frames=8),
              "captions": dict(num_images=16, img_size=64, shard_size=8)},
    "default": {"imagefolder": dict(train_per_class=200, val_per_class=40, img_size=64),
                "imagefolder_color": dict(train_per_class=100, val_per_class=25, img_size=32),
                "coco": dict(num_train=160, num_val=40, img_size=128),
                "lvis": dict(num_train=300, num_val=60, img_size=128, num_colors=8),
                "ade20k": dict(num_train=80, num_val=20, img_size=128),
                "kinetics": dict(train_per_class=16, val_per_class=4, img_size=64, num_frames=16),
                "captions": dict(num_images=320, img_size=96, shard_size=100)},
}


@dataclass(frozen=True)
class Shape:
    """One drawn object: centre (cx, cy) and circumradius in pixels, rotation in radians."""
    kind: str
    color: str
    cx: float
    cy: float
    radius: float
    angle: float


def _rng(seed: int, fmt: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _FORMAT_IDS[fmt], _SPLIT_IDS[split], int(index)])


def _unit_outline(kind: str) -> list[tuple[float, float]]:
    """Outline of the kind with circumradius 1, centred on the origin, unrotated."""
    if kind == "star":
        return [((1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi * k / 5),
                 (1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi * k / 5)) for k in range(10)]
    if kind == "cross":  # plus sign; arms 0.5 wide, tips on the unit circle
        a, b = 0.25, math.sqrt(1 - 0.25 ** 2)
        quarter = [(b, -a), (b, a), (a, a)]
        return [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))
                for x, y in quarter]
    n = {"circle": 32, "square": 4, "triangle": 3}.get(kind)
    if n is None:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPES}")
    return [(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n)]


def shape_polygon(shape: Shape) -> list[tuple[float, float]]:
    """Vertices (x, y) of the shape in COCO pixel coordinates (pixel i covers [i, i + 1))."""
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    return [(round(shape.cx + shape.radius * (x * c - y * s), 2),
             round(shape.cy + shape.radius * (x * s + y * c), 2))
            for x, y in _unit_outline(shape.kind)]


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon."""
    xs, ys = np.array(points).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def polygon_bbox(points: Sequence[tuple[float, float]]) -> list[float]:
    """COCO ``[x, y, w, h]`` of the polygon."""
    xs, ys = np.array(points).T
    return [round(float(xs.min()), 2), round(float(ys.min()), 2),
            round(float(xs.max() - xs.min()), 2), round(float(ys.max() - ys.min()), 2)]


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey-ish texture: a random gradient, stripes and pixel noise; low saturation by design."""
    base = rng.uniform(70, 150)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    theta = rng.uniform(0, 2 * math.pi)
    gradient = rng.uniform(-30, 30) * (xx * math.cos(theta) + yy * math.sin(theta))
    stripes = rng.uniform(0, 12) * np.sin(2 * math.pi * rng.uniform(2, 6) *
                                          (xx * math.sin(theta) - yy * math.cos(theta)))
    grey = base + gradient + stripes
    tint = rng.uniform(-8, 8, size=3)
    noise = 6 * rng.standard_normal((size, size, 3), dtype=np.float32)
    return np.clip(grey[..., None] + tint + noise, 0, 255).astype(np.uint8)


def shape_mask(shape: Shape, size: int, supersample: int = 4) -> np.ndarray:
    """Pixels whose area the polygon covers by at least half (``supersample``^2 sub-pixels).

    The same mask paints the image and the semantic labels, and it matches COCO's polygon
    rasterization up to boundary pixels.
    """
    xs, ys = zip(*shape_polygon(shape))
    x0, y0 = max(int(min(xs)) - 1, 0), max(int(min(ys)) - 1, 0)
    x1, y1 = min(int(max(xs)) + 2, size), min(int(max(ys)) + 2, size)
    mask = np.zeros((size, size), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return mask
    k = supersample
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    # PIL fills sub-pixel j when its integer coordinate is inside; its centre is at j + 0.5
    ImageDraw.Draw(canvas).polygon([((x - x0) * k - 0.5, (y - y0) * k - 0.5)
                                    for x, y in shape_polygon(shape)], fill=1)
    cover = np.asarray(canvas, dtype=np.float32).reshape(y1 - y0, k, x1 - x0, k).mean((1, 3))
    mask[y0:y1, x0:x1] = cover >= 0.5
    return mask


def draw_shapes(background: np.ndarray, shapes: Sequence[Shape]) -> Image.Image:
    """Paint the shapes (in order) on a copy of the background."""
    pixels = background.copy()
    for shape in shapes:
        pixels[shape_mask(shape, pixels.shape[0])] = COLORS[shape.color]
    return Image.fromarray(pixels)


def _random_shape(rng: np.random.Generator, size: int, kind: str, color: str,
                  min_frac: float, max_frac: float) -> Shape:
    radius = float(rng.uniform(min_frac, max_frac) * size)
    margin = radius + 1
    return Shape(kind, color, float(rng.uniform(margin, size - margin)),
                 float(rng.uniform(margin, size - margin)), radius,
                 float(rng.uniform(0, 2 * math.pi)))


def _overlaps(shape: Shape, others: Sequence[Shape], gap: float = 2.0) -> bool:
    return any(math.hypot(shape.cx - o.cx, shape.cy - o.cy) < shape.radius + o.radius + gap
               for o in others)


def sample_shapes(rng: np.random.Generator, size: int, specs: Sequence[tuple[str, str]], *,
                  min_frac: float = 0.08, max_frac: float = 0.2, tries: int = 50,
                  avoid: Sequence[Shape] = ()) -> list[Shape]:
    """Place one shape per ``(kind, colour)`` spec, overlapping neither each other nor ``avoid``;
    specs that find no free spot in ``tries`` attempts are left out, so the result may be
    shorter than ``specs``."""
    placed: list[Shape] = []
    for kind, color in specs:
        for _ in range(tries):
            shape = _random_shape(rng, size, kind, color, min_frac, max_frac)
            if not _overlaps(shape, [*avoid, *placed]):
                placed.append(shape)
                break
    return placed


def caption_for(shapes: Sequence[Shape]) -> str:
    """English caption listing the shapes left to right: "a red circle and a blue square"."""
    parts = [f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind}"
             for s in sorted(shapes, key=lambda s: s.cx)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=95, subsampling=0)  # 4:4:4 keeps colour edges crisp


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _random_color(rng: np.random.Generator) -> str:
    return list(COLORS)[int(rng.integers(len(COLORS)))]


# --------------------------------------------------------------------------- ImageFolder
# circumradius as a fraction of the image side; small colour shapes keep the colour a local cue
# (a random-init encoder's pooled features barely see it), which is what makes pre-training matter
_IMAGEFOLDER_RADIUS = {"shape": (0.25, 0.42), "color": (0.12, 0.3)}


def make_imagefolder(out: str | os.PathLike, num_classes: int | None = None, train_per_class: int = 200,
                     val_per_class: int = 40, img_size: int = 64, seed: int = 0,
                     label: str = "shape") -> dict[str, str]:
    """Classification set: one shape per image on a textured background.

    Args:
        out: output folder; the set goes to ``out/imagefolder`` (``label="shape"``) or
            ``out/imagefolder_color`` (``label="color"``).
        num_classes: the first ``num_classes`` of ``SHAPES`` / ``COLORS`` (None: all of them).
        train_per_class / val_per_class: images per class folder.
        img_size: square image side in pixels.
        seed: the only source of randomness.
        label: ``"shape"``: class folder = shape type, colour random; ``"color"``: class folder =
            colour name, shape type random.

    Returns:
        ``{"imagefolder_train": ..., "imagefolder_val": ...}`` (``imagefolder_color_*`` for colour).
    """
    if label not in IMAGEFOLDER_LABELS:
        raise ValueError(f"label must be one of {IMAGEFOLDER_LABELS}, got {label!r}")
    names = list(SHAPES) if label == "shape" else list(COLORS)
    num_classes = len(names) if num_classes is None else num_classes
    if not 1 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be in [1, {len(names)}] for label={label!r}, got {num_classes}")
    fmt = "imagefolder" if label == "shape" else "imagefolder_color"
    min_frac, max_frac = _IMAGEFOLDER_RADIUS[label]
    root = Path(out) / fmt
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(names[:num_classes]):
            for i in range(per_class):
                rng = _rng(seed, fmt, split, index * per_class + i)
                if label == "shape":
                    kind, color = name, _random_color(rng)
                else:
                    kind, color = SHAPES[int(rng.integers(len(SHAPES)))], name
                shape = _random_shape(rng, img_size, kind, color, min_frac, max_frac)
                image = draw_shapes(render_background(rng, img_size), [shape])
                _save_jpeg(image, root / split / name / f"{name}_{i:05d}.jpg")
    return {f"{fmt}_train": str(root / "train"), f"{fmt}_val": str(root / "val")}


# --------------------------------------------------------------------------- COCO
def _instance_annotation(ann_id: int, image_id: int, category_id: int, shape: Shape,
                         with_iscrowd: bool) -> dict:
    points = shape_polygon(shape)
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id,
           "segmentation": [[v for xy in points for v in xy]],
           "area": round(polygon_area(points), 2), "bbox": polygon_bbox(points)}
    if with_iscrowd:  # COCO has the key; LVIS v1 does not
        ann["iscrowd"] = 0
    return ann


def _image_entry(image_id: int, file_name: str, size: int) -> dict:
    return {"id": image_id, "file_name": file_name, "width": size, "height": size,
            "license": 1, "date_captured": "2026-01-01 00:00:00"}


def make_coco(out: str | os.PathLike, num_train: int = 160, num_val: int = 40,
              img_size: int = 128, seed: int = 0, max_objects: int = 4,
              label: str = "shape") -> dict[str, str]:
    """COCO instances set: 1..max_objects non-overlapping shapes per image.

    Args:
        label: the category of an object: ``"shape"`` (5 categories, ``coco/``) or ``"color"`` (8,
            ``coco_color/``: what the toy CLIP teacher knows). The images are the same for both.

    Returns:
        ``coco_{train,val}_json`` and ``coco_{train,val}_images`` paths.
    """
    if label not in IMAGEFOLDER_LABELS:
        raise ValueError(f"label must be one of {IMAGEFOLDER_LABELS}, got {label!r}")
    root = Path(out) / ("coco" if label == "shape" else "coco_color")
    names = list(SHAPES) if label == "shape" else list(COLORS)
    categories = [{"id": k + 1, "name": name, "supercategory": label} for k, name in enumerate(names)]
    paths: dict[str, str] = {}
    ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        for i in range(count):
            rng = _rng(seed, "coco", split, i)
            image_id = i + 1 + (0 if split == "train" else 1_000_000)
            specs = [(SHAPES[int(rng.integers(len(SHAPES)))], _random_color(rng))
                     for _ in range(int(rng.integers(1, max_objects + 1)))]
            shapes = sample_shapes(rng, img_size, specs)
            file_name = f"{image_id:012d}.jpg"
            _save_jpeg(draw_shapes(render_background(rng, img_size), shapes),
                       root / f"{split}2017" / file_name)
            images.append(_image_entry(image_id, file_name, img_size))
            for shape in shapes:
                name = shape.kind if label == "shape" else shape.color
                annotations.append(_instance_annotation(ann_id, image_id, names.index(name) + 1, shape, True))
                ann_id += 1
        json_path = root / "annotations" / f"instances_{split}2017.json"
        _write_json({"info": {"description": f"EVA toy world COCO {split} (seed {seed})",
                              "version": "1.0", "year": 2026},
                     "licenses": [{"id": 1, "name": "CC0", "url": ""}],
                     "images": images, "annotations": annotations, "categories": categories},
                    json_path)
        paths[f"coco_{split}_json"] = str(json_path)
        paths[f"coco_{split}_images"] = str(root / f"{split}2017")
    return paths


# --------------------------------------------------------------------------- LVIS
def _lvis_categories(num_colors: int) -> list[tuple[str, str]]:
    return [(color, kind) for color in list(COLORS)[:num_colors] for kind in SHAPES]


def _zipf_weights(num: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, num + 1) ** exponent
    weights = weights[rng.permutation(num)]  # which category is frequent depends on the seed
    return weights / weights.sum()


def _lvis_frequency(image_count: int, num_train: int) -> str:
    rare_max = max(1, round(0.02 * num_train))
    common_max = max(rare_max + 1, round(0.06 * num_train))
    return "r" if image_count <= rare_max else "c" if image_count <= common_max else "f"


def _lvis_scene(rng, index, num_train_forced, cats, weights, img_size, split):
    num = int(rng.integers(1, 5))
    picks = [int(c) for c in rng.choice(len(cats), size=num, p=weights)]
    if split == "train" and index < num_train_forced:
        picks[0] = index  # every category is annotated in at least one train image
    specs = [(cats[c][1], cats[c][0]) for c in picks]
    shapes = sample_shapes(rng, img_size, specs, min_frac=0.07, max_frac=0.16)
    extra = None
    if shapes and rng.random() < 0.25:  # an unannotated extra instance -> not exhaustive
        copy = shapes[int(rng.integers(len(shapes)))]
        found = sample_shapes(rng, img_size, [(copy.kind, copy.color)], min_frac=0.07,
                              max_frac=0.16, avoid=shapes)
        extra = found[0] if found else None
    return shapes, extra


def make_lvis(out: str | os.PathLike, num_train: int = 300, num_val: int = 60,
              img_size: int = 128, seed: int = 0, num_colors: int = 8) -> dict[str, str]:
    """LVIS v1 set with long-tailed colour+shape categories (see the module docstring).

    Returns:
        ``lvis_{train,val}_json`` and ``lvis_{train,val}_images`` paths.
    """
    cats = _lvis_categories(num_colors)
    if num_train < len(cats):
        raise ValueError(f"num_train={num_train} must be >= the number of LVIS categories "
                         f"({len(cats)}) so that every category has a training image")
    root = Path(out) / "lvis"
    weights = _zipf_weights(len(cats), np.random.default_rng([seed, _FORMAT_IDS["lvis"], 99]))
    cat_id = {(kind, color): k + 1 for k, (color, kind) in enumerate(cats)}
    splits: dict[str, tuple[list, list]] = {}
    ann_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        for i in range(count):
            rng = _rng(seed, "lvis", split, i)
            shapes, extra = _lvis_scene(rng, i, len(cats), cats, weights, img_size, split)
            image_id = i + 1 + (0 if split == "train" else 1_000_000)
            file_name = f"{image_id:012d}.jpg"
            drawn = shapes + ([extra] if extra else [])
            _save_jpeg(draw_shapes(render_background(rng, img_size), drawn),
                       root / f"{split}2017" / file_name)
            present = {cat_id[(s.kind, s.color)] for s in drawn}
            absent = sorted(set(range(1, len(cats) + 1)) - present)
            negatives = sorted(int(c) for c in rng.choice(absent, size=min(3, len(absent)),
                                                           replace=False))
            entry = _image_entry(image_id, file_name, img_size)
            entry.update({"coco_url": f"{split}2017/{file_name}", "neg_category_ids": negatives,
                          "not_exhaustive_category_ids":
                              [cat_id[(extra.kind, extra.color)]] if extra else []})
            images.append(entry)
            for shape in shapes:
                annotations.append(_instance_annotation(
                    ann_id, image_id, cat_id[(shape.kind, shape.color)], shape, False))
                ann_id += 1
        splits[split] = (images, annotations)
    categories = _lvis_category_entries(cats, splits["train"][1], num_train)
    paths: dict[str, str] = {}
    for split, (images, annotations) in splits.items():
        json_path = root / f"lvis_v1_{split}.json"
        _write_json({"info": {"description": f"EVA toy world LVIS v1 {split} (seed {seed})"},
                     "licenses": [{"id": 1, "name": "CC0", "url": ""}], "images": images,
                     "annotations": annotations, "categories": categories}, json_path)
        paths[f"lvis_{split}_json"] = str(json_path)
        paths[f"lvis_{split}_images"] = str(root / f"{split}2017")
    return paths


def _lvis_category_entries(cats, train_annotations, num_train) -> list[dict]:
    image_sets: dict[int, set] = {k + 1: set() for k in range(len(cats))}
    instances = {k + 1: 0 for k in range(len(cats))}
    for ann in train_annotations:
        image_sets[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    entries = []
    for k, (color, kind) in enumerate(cats):
        cid = k + 1
        entries.append({"id": cid, "name": f"{color}_{kind}", "synset": f"{color}_{kind}.n.01",
                        "synonyms": [f"{color}_{kind}"], "def": f"a {color} {kind}",
                        "image_count": len(image_sets[cid]), "instance_count": instances[cid],
                        "frequency": _lvis_frequency(len(image_sets[cid]), num_train)})
    return entries


# --------------------------------------------------------------------------- ADE20K
def make_ade20k(out: str | os.PathLike, num_train: int = 80, num_val: int = 20,
                img_size: int = 128, seed: int = 0, max_objects: int = 5,
                label: str = "shape") -> dict[str, str]:
    """Semantic segmentation set in ADEChallengeData2016 layout (0 = background / ignore).

    Args:
        label: the class of a pixel: ``"shape"`` (5 classes, ``ade20k/``) or ``"color"`` (8,
            ``ade20k_color/``: what the toy CLIP teacher knows). The images are the same for both;
            ``meta.json`` lists the classes.

    Returns:
        ``ade20k_root``, ``ade20k_meta`` and ``ade20k_{train,val}_{images,annotations}`` paths.
    """
    if label not in IMAGEFOLDER_LABELS:
        raise ValueError(f"label must be one of {IMAGEFOLDER_LABELS}, got {label!r}")
    names = list(SHAPES) if label == "shape" else list(COLORS)
    root = Path(out) / ("ade20k" if label == "shape" else "ade20k_color")
    paths = {"ade20k_root": str(root), "ade20k_meta": str(root / "meta.json")}
    for split, folder, count in (("train", "training", num_train), ("val", "validation", num_val)):
        for i in range(count):
            rng = _rng(seed, "ade20k", split, i)
            specs = [(SHAPES[int(rng.integers(len(SHAPES)))], _random_color(rng))
                     for _ in range(int(rng.integers(1, max_objects + 1)))]
            shapes = sample_shapes(rng, img_size, specs, max_frac=0.25)
            name = f"ADE_{'train' if split == 'train' else 'val'}_{i + 1:08d}"
            _save_jpeg(draw_shapes(render_background(rng, img_size), shapes),
                       root / "images" / folder / f"{name}.jpg")
            label_map = np.zeros((img_size, img_size), dtype=np.uint8)
            for shape in shapes:
                value = names.index(shape.kind if label == "shape" else shape.color) + 1
                label_map[shape_mask(shape, img_size)] = value
            (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label_map).save(root / "annotations" / folder / f"{name}.png")
        paths[f"ade20k_{split}_images"] = str(root / "images" / folder)
        paths[f"ade20k_{split}_annotations"] = str(root / "annotations" / folder)
    _write_json({"classes": names, "label_values": {k: i + 1 for i, k in enumerate(names)},
                 "background_value": 0, "reduce_zero_label": True, "ignore_index": 255},
                root / "meta.json")
    return paths


# --------------------------------------------------------------------------- Kinetics
def _write_mp4(frames: Sequence[np.ndarray], path: Path, fps: int = 8) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1  # one thread: identical bytes for identical input
        stream.bit_rate = 400_000
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _motion_clip(rng: np.random.Generator, motion: str, size: int, num_frames: int) -> list:
    background = render_background(rng, size)
    radius = float(rng.uniform(0.12, 0.18) * size)
    dx, dy = _MOTION_STEP[motion]
    travel = size - 2 * (radius + 1)  # start at one edge, end at the other
    start = (radius + 1) + (travel if (dx < 0 or dy < 0) else 0)
    across = float(rng.uniform(radius + 1, size - radius - 1))
    kind, color = SHAPES[int(rng.integers(len(SHAPES)))], _random_color(rng)
    angle = float(rng.uniform(0, 2 * math.pi))
    frames = []
    for t in range(num_frames):
        along = start + (dx + dy) * travel * t / max(num_frames - 1, 1)
        cx, cy = (along, across) if dx else (across, along)
        frames.append(np.asarray(draw_shapes(background, [Shape(kind, color, cx, cy, radius,
                                                                angle)])))
    return frames


def make_kinetics(out: str | os.PathLike, train_per_class: int = 16, val_per_class: int = 4,
                  img_size: int = 64, num_frames: int = 16, seed: int = 0) -> dict[str, str]:
    """Kinetics-style clips: one shape crossing the frame; class = motion direction.

    Returns:
        ``kinetics_root``, ``kinetics_{train,val}_list`` and ``kinetics_classes`` paths.
    """
    if img_size % 2:
        raise ValueError(f"img_size must be even for yuv420p video, got {img_size}")
    root = Path(out) / "kinetics"
    paths = {"kinetics_root": str(root), "kinetics_classes": str(root / "classes.txt")}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        lines = []
        for label, motion in enumerate(MOTIONS):
            for i in range(per_class):
                rng = _rng(seed, "kinetics", split, label * per_class + i)
                rel = f"videos/{split}/{motion}_{i:04d}.mp4"
                _write_mp4(_motion_clip(rng, motion, img_size, num_frames), root / rel)
                lines.append(f"{rel} {label}\n")
        (root / f"{split}_list.txt").write_text("".join(lines))
        paths[f"kinetics_{split}_list"] = str(root / f"{split}_list.txt")
    (root / "classes.txt").write_text("".join(f"{m}\n" for m in MOTIONS))
    return paths


# --------------------------------------------------------------------------- captions
def _add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: reproducible shards
    tar.addfile(info, io.BytesIO(data))


def make_captions(out: str | os.PathLike, num_images: int = 320, img_size: int = 96,
                  seed: int = 0, shard_size: int = 100) -> dict[str, str]:
    """Image-caption pairs as a csv and as webdataset shards (``key.jpg`` + ``key.txt``).

    Returns:
        ``captions_csv``, ``captions_images`` and ``captions_shards`` (a brace pattern).
    """
    root = Path(out) / "captions"
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rows, shard, tar = [], -1, None
    for i in range(num_images):
        if i % shard_size == 0:
            if tar is not None:
                tar.close()
            shard += 1
            tar = tarfile.open(root / "shards" / f"captions-{shard:06d}.tar", "w",
                               format=tarfile.USTAR_FORMAT)
        rng = _rng(seed, "captions", "train", i)
        specs = [(SHAPES[int(rng.integers(len(SHAPES)))], _random_color(rng))
                 for _ in range(int(rng.integers(1, 4)))]
        shapes = sample_shapes(rng, img_size, specs, min_frac=0.1, max_frac=0.2)
        image = draw_shapes(render_background(rng, img_size), shapes)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95, subsampling=0)
        key, caption = f"{i:06d}", caption_for(shapes)
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / f"{key}.jpg").write_bytes(buf.getvalue())
        _add_tar_member(tar, f"{key}.jpg", buf.getvalue())
        _add_tar_member(tar, f"{key}.txt", caption.encode("utf-8"))
        rows.append((f"images/{key}.jpg", caption))
    if tar is not None:
        tar.close()
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        writer.writerows(rows)
    return {"captions_csv": str(root / "captions.csv"), "captions_images": str(root / "images"),
            "captions_shards": str(root / "shards" / f"captions-{{000000..{shard:06d}}}.tar")}


# --------------------------------------------------------------------------- all formats
_MAKERS = {"imagefolder": make_imagefolder,
           "imagefolder_color": functools.partial(make_imagefolder, label="color"),
           "coco": make_coco, "lvis": make_lvis, "ade20k": make_ade20k, "kinetics": make_kinetics,
           "captions": make_captions}


def generate_toy_world(out_dir: str | os.PathLike, seed: int = 0, size: str = "default",
                       formats: Sequence[str] | None = None) -> dict[str, str]:
    """Write every toy-world format under ``out_dir`` and a manifest ``toy_world.json``.

    Args:
        out_dir: output folder (created).
        seed: the only source of randomness.
        size: ``"small"`` (tests) or ``"default"``.
        formats: subset of ``imagefolder, imagefolder_color, coco, lvis, ade20k, kinetics,
            captions`` (all if None).

    Returns:
        Absolute paths by name (``imagefolder_train``, ``imagefolder_color_train``,
        ``coco_train_json``, ``lvis_val_json``, ``ade20k_root``, ``kinetics_train_list``,
        ``captions_shards``, ``manifest``, ...).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    formats = list(_MAKERS) if formats is None else list(formats)
    unknown = sorted(set(formats) - set(_MAKERS))
    if unknown:
        raise ValueError(f"unknown toy-world formats {unknown}; expected some of {list(_MAKERS)}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {"root": str(out)}
    for fmt in formats:
        paths.update(_MAKERS[fmt](out, seed=seed, **SIZES[size][fmt]))
    manifest = {"seed": seed, "size": size, "formats": formats, "shapes": list(SHAPES),
                "colors": list(COLORS), "motions": list(MOTIONS),
                "paths": {k: os.path.relpath(v, out) for k, v in paths.items()}}
    _write_json(manifest, out / "toy_world.json")
    paths["manifest"] = str(out / "toy_world.json")
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """CLI: ``python tools/make_toy_world.py --out DIR --seed S --size small|default``."""
    parser = argparse.ArgumentParser(description="Generate the EVA toy world datasets.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--formats", nargs="+", choices=list(_MAKERS), default=None,
                        help="only these formats (default: all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = generate_toy_world(args.out, seed=args.seed, size=args.size, formats=args.formats)
    print(json.dumps(paths, indent=1))
    print(f"toy world ({args.size}, seed {args.seed}) written to {paths['root']} in "
          f"{time.perf_counter() - start:.1f} s")
    return paths


if __name__ == "__main__":
    main()
