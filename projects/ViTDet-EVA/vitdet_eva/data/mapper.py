"""ViTDet's large-scale-jitter (LSJ) train mapper and its test mapper (detectron2's ``DatasetMapper``
with ``RandomFlip``, ``ResizeScale(0.1, 2.0)``, ``FixedSizeCrop``, and ``ResizeShortestEdge(T, T)``).

The random draws follow detectron2's order and formulas, on numpy's global RNG: flip
(``uniform() < 0.5``), scale (``uniform(0.1, 2.0)``), crop offset (one ``uniform()`` times the
spare room on both axes). Inside eva_core's train loader that RNG is seeded from (seed, stream
position) before each read, so the augmentation of a position is a pure function of both.

Image, boxes and masks go through the same geometry: boxes as corners (flipped, scaled, shifted,
clipped to the crop), polygons as points (then rasterized by pycocotools at the crop size), RLE
masks as pixel arrays (nearest-neighbour resize). Crowd regions are dropped (as detectron2's mapper
does), and so is any instance whose box or mask is empty after the crop.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from torch.utils.data import Dataset

from .datasets import BoxMode

__all__ = ["LSJTrainMapper", "ResizeTestMapper", "MappedDataset", "trivial_batch_collator",
           "read_image_rgb", "mask_boxes"]


def read_image_rgb(d: dict) -> np.ndarray:
    """The dict's image as ``uint8 [H, W, 3]`` RGB; its size must equal the dict's height/width."""
    with Image.open(d["file_name"]) as im:
        image = np.asarray(im.convert("RGB"))
    if image.shape[:2] != (d["height"], d["width"]):
        raise ValueError(f"{d['file_name']}: image is {image.shape[1]}x{image.shape[0]} (WxH) but its "
                         f"annotation says {d['width']}x{d['height']}")
    return image


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes ``[N, 4]`` of bool masks ``[N, H, W]`` (pixel ``x`` spans ``[x, x + 1)``)."""
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes


def _xyxy(ann: dict) -> np.ndarray:
    box = np.asarray(ann["bbox"], dtype=np.float64)
    if ann.get("bbox_mode", BoxMode.XYWH_ABS) == BoxMode.XYWH_ABS:
        box = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    return box


class _Geometry:
    """flip (in the input frame) -> scale -> shift by -offset, for points, boxes and arrays."""

    def __init__(self, in_hw, out_hw, flip: bool, offset_xy=(0, 0)):
        self.in_h, self.in_w = in_hw
        self.out_h, self.out_w = out_hw
        self.flip = flip
        self.sx, self.sy = self.out_w / self.in_w, self.out_h / self.in_h
        self.ox, self.oy = offset_xy

    def points(self, xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        if self.flip:
            x = self.in_w - x
        return np.stack([x * self.sx - self.ox, y * self.sy - self.oy], axis=1)

    def box(self, box: np.ndarray) -> np.ndarray:
        pts = self.points(box.reshape(2, 2))
        return np.concatenate([pts.min(0), pts.max(0)])

    def image(self, image: np.ndarray, resample) -> np.ndarray:
        if self.flip:
            image = image[:, ::-1]
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(pil.resize((self.out_w, self.out_h), resample))


def _crop_pad(array: np.ndarray, offset_xy, crop_hw, pad_hw, value) -> np.ndarray:
    ox, oy = offset_xy
    ch, cw = crop_hw
    out = np.full((pad_hw[0], pad_hw[1]) + array.shape[2:], value, dtype=array.dtype)
    out[:ch, :cw] = array[oy:oy + ch, ox:ox + cw]
    return out


def _instance_mask(segm: Any, d: dict, geo: _Geometry, offset_xy, crop_hw, pad_hw) -> np.ndarray:
    if isinstance(segm, list):  # polygons: transform the points, rasterize at the crop size
        polys = [geo.points(np.asarray(p, dtype=np.float64).reshape(-1, 2)).ravel().tolist() for p in segm]
        rle = mask_util.merge(mask_util.frPyObjects(polys, crop_hw[0], crop_hw[1]))
        m = mask_util.decode(rle).astype(bool)
        return _crop_pad(m, (0, 0), crop_hw, pad_hw, False)
    if isinstance(segm, dict):  # RLE: transform the pixels
        m = mask_util.decode(segm)
        if m.shape != (d["height"], d["width"]):
            raise ValueError(f"{d['file_name']}: annotation {segm.get('id', '')} RLE size {list(m.shape)} "
                             f"differs from the image's {[d['height'], d['width']]}")
        m = geo.image(m * 255, Image.NEAREST) > 127
        return _crop_pad(m, offset_xy, crop_hw, pad_hw, False)
    raise ValueError(f"{d['file_name']}: segmentation must be polygons or RLE, got {type(segm).__name__}")


def _instances(d: dict, geo: _Geometry, offset_xy, crop_hw, pad_hw, use_masks: bool,
               recompute_boxes: bool) -> dict[str, torch.Tensor]:
    annos = [a for a in d.get("annotations", []) if a.get("iscrowd", 0) == 0]
    boxes = np.zeros((len(annos), 4), dtype=np.float64)
    for i, a in enumerate(annos):
        boxes[i] = geo.box(_xyxy(a))
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, crop_hw[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, crop_hw[0])
    out = {"gt_boxes": torch.as_tensor(boxes, dtype=torch.float32),
           "gt_classes": torch.tensor([a["category_id"] for a in annos], dtype=torch.int64)}
    keep = (boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5)  # detectron2's nonempty
    if use_masks:
        masks = np.zeros((len(annos),) + tuple(pad_hw), dtype=bool)
        for i, a in enumerate(annos):
            if "segmentation" not in a:
                raise ValueError(f"{d['file_name']}: annotation {a.get('id', i)} has no segmentation "
                                 f"(use_masks=True)")
            masks[i] = _instance_mask(a["segmentation"], d, geo, offset_xy, crop_hw, pad_hw)
        keep &= masks.reshape(len(annos), -1).any(1)
        out["gt_masks"] = torch.from_numpy(masks)
        if recompute_boxes:  # ViTDet's LSJ config: boxes are the tight boxes of the cropped masks
            out["gt_boxes"] = mask_boxes(out["gt_masks"])
    keep_t = torch.from_numpy(keep)
    return {k: v[keep_t] for k, v in out.items()}


def _output(d: dict, image: np.ndarray) -> dict:
    return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": d["height"], "width": d["width"], "image_id": d["image_id"],
            "file_name": d["file_name"]}


class LSJTrainMapper:
    """Dataset dict -> ``{"image": uint8 [3, T, T] RGB, "instances": {gt_boxes XYXY, gt_classes,
    gt_masks bool [N, T, T]}, "height", "width", "image_id", "file_name"}``.

    Args:
        image_size: ``T`` (1024 for Objects365 first, 1280 after; REFERENCE numbers in
            ``docs/recipes/detection.md``).
        min_scale, max_scale: ``ResizeScale`` range relative to ``T`` (0.1, 2.0).
        flip_prob: horizontal flip probability.
        pad: pad the crop bottom-right to ``T x T`` (image with ``pad_value``, masks with False);
            False leaves square padding to the model (ViTDet's ``square_pad``).
        pad_value: detectron2's ``FixedSizeCrop`` default, 128.
        use_masks: produce ``gt_masks``.
        recompute_boxes: replace the boxes by the tight boxes of the cropped masks
            (``recompute_boxes=True`` in ViTDet's LSJ loader).
    """

    def __init__(self, image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0,
                 flip_prob: float = 0.5, pad: bool = True, pad_value: float = 128.0,
                 use_masks: bool = True, recompute_boxes: bool = False):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if recompute_boxes and not use_masks:
            raise ValueError("recompute_boxes=True needs use_masks=True")
        self.image_size = int(image_size)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.flip_prob = float(flip_prob)
        self.pad, self.pad_value = bool(pad), pad_value
        self.use_masks, self.recompute_boxes = bool(use_masks), bool(recompute_boxes)

    def __call__(self, d: dict) -> dict:
        image = read_image_rgb(d)
        h, w = image.shape[:2]
        t = self.image_size
        flip = np.random.uniform(0.0, 1.0) < self.flip_prob
        scale = np.random.uniform(self.min_scale, self.max_scale)
        out_scale = min(t * scale / h, t * scale / w)
        new_h, new_w = (int(v) for v in np.round(np.multiply((h, w), out_scale)))
        new_h, new_w = max(new_h, 1), max(new_w, 1)
        spare = np.maximum(np.subtract((new_h, new_w), (t, t)), 0)
        oy, ox = (int(v) for v in np.round(spare * np.random.uniform(0.0, 1.0)))
        crop_hw = (min(new_h, t), min(new_w, t))
        pad_hw = (t, t) if self.pad else crop_hw
        geo = _Geometry((h, w), (new_h, new_w), flip, (ox, oy))
        image = _crop_pad(geo.image(image, Image.BILINEAR), (ox, oy), crop_hw, pad_hw,
                          np.uint8(round(self.pad_value)))
        out = _output(d, image)
        out["instances"] = _instances(d, geo, (ox, oy), crop_hw, pad_hw, self.use_masks,
                                      self.recompute_boxes)
        return out


class ResizeTestMapper:
    """Test mapper: longest side resized to ``T`` (detectron2's ``ResizeShortestEdge(T, max_size=T)``
    arithmetic), then padded bottom-right to ``T x T`` when ``pad``. Annotations are not mapped
    (the evaluator reads the json); ``height`` / ``width`` stay the original size.
    """

    def __init__(self, image_size: int = 1024, pad: bool = True, pad_value: float = 128.0):
        self.image_size, self.pad, self.pad_value = int(image_size), bool(pad), pad_value

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        t = self.image_size
        scale = t / min(h, w)
        new_h, new_w = h * scale, w * scale
        if max(new_h, new_w) > t:
            scale = t / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)

    def __call__(self, d: dict) -> dict:
        image = read_image_rgb(d)
        new_hw = self.output_size(*image.shape[:2])
        geo = _Geometry(image.shape[:2], new_hw, False)
        pad_hw = (self.image_size, self.image_size) if self.pad else new_hw
        image = _crop_pad(geo.image(image, Image.BILINEAR), (0, 0), new_hw, pad_hw,
                          np.uint8(round(self.pad_value)))
        out = _output(d, image)
        out["image_size"] = new_hw  # the unpadded size, for rescaling predictions
        return out


class MappedDataset(Dataset):
    """Map-style dataset: item ``i`` is ``mapper(dicts[i])`` (for eva_core's loaders)."""

    def __init__(self, dicts: Sequence[dict], mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.dicts[index])


def trivial_batch_collator(batch: list) -> list:
    """detectron2's collator: a batch is the list of mapped dicts."""
    return batch
