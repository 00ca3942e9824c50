#!/usr/bin/env python
"""Run a ViTDet-EVA detector on image files or folders; write a COCO results json and one PNG per image.

    python projects/ViTDet-EVA/demo.py --config-file projects/ViTDet-EVA/configs/COCO/<config>.py \
        --input photos/ street.jpg --output demo_out --categories-json instances_val2017.json \
        train.init_checkpoint=eva_coco_det.pth model.roi_heads.use_soft_nms=True

The model and its weights come from the config, exactly as ``tools/lazyconfig_train_net.py
--eval-only`` builds them (``key=value`` words at the end override entries; the weights are
``train.init_checkpoint``, else the last checkpoint of ``train.output_dir``, and must fill the
model). Each image is resized as the test loader does (longer side to the backbone's
``square_pad``, or ``--image-size``), and the detections are mapped back to its own pixels.

Outputs in ``--output``:

* ``results.json``: every detection in the COCO results format (``image_id``, ``category_id``,
  ``bbox`` XYWH, ``score``, ``segmentation`` as RLE), scoreable with ``tools/coco_eval.py``; the
  image ids are those of ``--categories-json`` when it lists the image's file name, else 1, 2, ...
  in input order (``image_ids.json`` maps file to id);
* ``<image stem>.png``: the image with the detections scoring at least ``--confidence-threshold``
  drawn: mask overlay, box and ``"<class name> <score>"``.

Class names and json category ids come from ``--categories-json`` (any COCO / LVIS json: its
``categories``, sorted by id, are the model's classes 0..K-1, as in training); without it the
classes are named ``class_<k>`` with category id ``k + 1``.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger("vitdet_eva.demo")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(inputs: Sequence[str]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders searched one level deep), sorted per folder.

    Raises:
        FileNotFoundError: an input does not exist, or no image file is found at all.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"--input {list(inputs)}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_categories(json_file: str | None, num_classes: int) -> tuple[list[str], list[int], dict[str, int]]:
    """``(class names, json category ids, {file name: image id})`` for the model's ``num_classes``.

    Raises:
        ValueError: the json has no ``categories`` list, or a different class count from the model.
    """
    if json_file is None:
        return [f"class_{k}" for k in range(num_classes)], list(range(1, num_classes + 1)), {}
    with open(json_file) as f:
        data = json.load(f)
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise ValueError(f"--categories-json {json_file}: expected a COCO/LVIS json with a 'categories' "
                         "list of {'id', 'name'} entries")
    cats = sorted(cats, key=lambda c: c["id"])
    if len(cats) != num_classes:
        raise ValueError(f"--categories-json {json_file}: {len(cats)} categories but the model has "
                         f"num_classes={num_classes} (model.roi_heads.num_classes)")
    ids = {Path(im["file_name"]).name: int(im["id"]) for im in data.get("images", [])
           if isinstance(im, dict) and "file_name" in im and "id" in im}
    return [str(c.get("name", c["id"])) for c in cats], [int(c["id"]) for c in cats], ids


def build_model(cfg, device: str) -> torch.nn.Module:
    """The config's model in eval mode with its evaluation weights (as ``--eval-only`` loads them)."""
    from eva_core.engine.config_build import build_model as build
    from eva_core.engine.defaults import load_weights_for_eval

    model = build(cfg)
    report = load_weights_for_eval(cfg, model)
    logger.info(f"weights: {report}")
    return model.to(device).eval()


def test_image_size(cfg, override: int | None) -> int:
    """The test resize target: ``--image-size``, else the backbone's ``square_pad``."""
    if override:
        return int(override)
    square = int(cfg.model.backbone.get("square_pad", 0) or 0)
    if square <= 0:
        raise ValueError("the config's model.backbone.square_pad is 0: give --image-size (the test resize)")
    return square


@torch.no_grad()
def predict(model: torch.nn.Module, path: Path, image_size: int):
    """Detections of one image file, in its own pixels (``Instances`` with full-image bool masks)."""
    from vitdet_eva.data import ResizeTestMapper

    with Image.open(path) as im:
        width, height = im.size
    mapped = ResizeTestMapper(image_size)({"file_name": str(path), "height": height, "width": width,
                                           "image_id": 0})
    return model([mapped])[0]["instances"].to("cpu")


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """One saturated colour per class, spread around the hue circle (golden-ratio steps)."""
    out = []
    for k in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def drawn_indices(scores: torch.Tensor, threshold: float, max_drawn: int | None = None) -> torch.Tensor:
    """Indices of the detections to draw: score ``>= threshold``, the ``max_drawn`` best (None: all)."""
    keep = torch.nonzero(scores >= threshold).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    return keep if max_drawn is None else keep[:max_drawn]


def draw_detections(image: np.ndarray, instances, class_names: Sequence[str], threshold: float,
                    max_drawn: int | None = None) -> Image.Image:
    """``image`` (uint8 ``[H, W, 3]``) with the detections scoring ``>= threshold`` (at most the
    ``max_drawn`` best): masks, boxes, labels."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    keep = drawn_indices(instances.scores, threshold, max_drawn)
    if len(keep):
        inst = instances[keep]
        palette = class_colors(len(class_names))
        colors = [palette[int(c)] for c in inst.pred_classes]
        if inst.has("pred_masks"):
            canvas = draw_segmentation_masks(canvas, inst.pred_masks.bool(), alpha=0.45, colors=colors)
        labels = [f"{class_names[int(c)]} {float(s):.2f}" for c, s in zip(inst.pred_classes, inst.scores)]
        canvas = draw_bounding_boxes(canvas, inst.pred_boxes, labels=labels, colors=colors, width=2)
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def run_demo(cfg, inputs: Sequence[str], output: str | Path, *, categories_json: str | None = None,
             confidence_threshold: float = 0.5, max_drawn: int | None = None, image_size: int | None = None,
             device: str = "cpu") -> dict:
    """Predict, write ``results.json``, ``image_ids.json`` and the PNGs; returns a summary dict.

    Returns:
        ``{"results_json", "pngs": [...], "num_detections": {file: n}, "num_drawn": {file: n}}``.
    """
    from eva_core.evaluation.coco import instances_to_coco_json

    files = list_images(inputs)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg, device)
    # from the built model: the config may compute it (LVIS / custom jsons: ``json_num_classes``)
    names, category_ids, json_image_ids = read_categories(categories_json, int(model.roi_heads.num_classes))
    size = test_image_size(cfg, image_size)
    results, image_ids, pngs = [], {}, []
    num_detections, num_drawn = {}, {}
    for index, path in enumerate(files):
        image_id = json_image_ids.get(path.name, index + 1)
        image_ids[str(path)] = image_id
        inst = predict(model, path, size)
        fields = {"boxes": inst.pred_boxes, "scores": inst.scores, "classes": inst.pred_classes}
        if inst.has("pred_masks"):
            fields["masks"] = inst.pred_masks.bool()
        results += instances_to_coco_json(fields, image_id, category_ids)
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        png = out / f"{path.stem}.png"
        draw_detections(image, inst, names, confidence_threshold, max_drawn).save(png)
        pngs.append(str(png))
        num_detections[str(path)] = len(inst)
        num_drawn[str(path)] = len(drawn_indices(inst.scores, confidence_threshold, max_drawn))
        logger.info(f"{path}: {len(inst)} detections, {num_drawn[str(path)]} drawn -> {png}")
    results_json = out / "results.json"
    results_json.write_text(json.dumps(results))
    (out / "image_ids.json").write_text(json.dumps(image_ids, indent=1))
    return {"results_json": str(results_json), "pngs": pngs, "num_detections": num_detections,
            "num_drawn": num_drawn}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a LazyConfig .py or a run's config.yaml")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--output", required=True, help="folder for results.json and the PNGs")
    parser.add_argument("--categories-json", default=None,
                        help="a COCO/LVIS json whose categories name the classes (and whose images give ids)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a drawn detection (results.json keeps all)")
    parser.add_argument("--max-drawn", type=int, default=None,
                        help="draw at most this many detections per image, the best-scoring first")
    parser.add_argument("--image-size", type=int, default=None,
                        help="test resize of the longer side (default: model.backbone.square_pad)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides key=value, e.g. train.init_checkpoint=model_final.pth")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry; a bad input, config key or checkpoint prints ``error: ...`` and exits with status 2."""
    from eva_core.checkpoint import CheckpointMismatchError
    from eva_core.config import ConfigFileError, LazyConfig, UnknownConfigKeyError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
        summary = run_demo(cfg, args.input, args.output, categories_json=args.categories_json,
                           confidence_threshold=args.confidence_threshold, max_drawn=args.max_drawn,
                           image_size=args.image_size, device=args.device)
    except (FileNotFoundError, ValueError, UnknownConfigKeyError, ConfigFileError,
            CheckpointMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
