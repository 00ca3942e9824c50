"""mmseg's training pipeline for EVA / ViT-Adapter segmentation, and its single-scale test resize.

Training (``SegTrainTransform``), in mmseg's order and with its formulas:

1. ``Resize(img_scale, ratio_range=(0.5, 2.0), keep_ratio=True)``: ``ratio ~ U(0.5, 2.0)``, target
   scale ``(int(long * ratio), int(short * ratio))`` of ``img_scale`` (3584 x 896 for crop 896),
   image rescaled by ``min(long_target / long_side, short_target / short_side)`` (bilinear; label
   nearest), sizes rounded ``int(x * f + 0.5)`` as mmcv's ``imrescale``.
2. ``RandomCrop(crop, cat_max_ratio=0.75)``: offsets ``randint(0, margin + 1)``; the crop is drawn
   again (up to 10 times) while one class covers >= 75 % of its labelled pixels or it holds only
   one class.
3. ``RandomFlip(0.5)``, horizontal.
4. ``PhotoMetricDistortion``: brightness (+U(-32, 32)), then contrast (xU(0.5, 1.5)) either
   here or last (``mode = randint(2)``), saturation (xU(0.5, 1.5) in HSV), hue (+randint(-18, 18)
   mod 180, OpenCV's 0..179 hue), each applied with probability 1/2 and clipped to uint8.
5. ``Normalize`` (ImageNet mean / std in 0..255), 6. ``Pad`` to the crop size: image 0 (after
   normalisation), label 255.

Draws use numpy's global RNG, which eva_core's train loader seeds from (seed, stream position) per
sample, so a position's augmentation is reproducible and resumable.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

__all__ = ["SegTrainTransform", "SegTestTransform", "rescale_size", "random_resize", "random_crop",
           "photo_metric_distortion", "normalize_image", "MMSEG_MEAN", "MMSEG_STD"]

#: ImageNet mean / std in 0..255 (mmseg's ``img_norm_cfg`` with ``to_rgb=True``)
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


def rescale_size(hw: tuple[int, int], scale: Sequence[int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with ``keep_ratio``: the largest size with long side <= max(scale)
    and short side <= min(scale), as ``(H, W)``."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _resize(image: np.ndarray, label: np.ndarray | None, hw: tuple[int, int]):
    size = (hw[1], hw[0])  # cv2 takes (W, H)
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label.astype(np.uint8 if label.max(initial=0) < 256 else np.int32),
                           size, interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return image, label


def random_resize(image: np.ndarray, label: np.ndarray, scale: Sequence[int],
                  ratio_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: keep-ratio resize to ``scale`` times a ratio drawn from ``ratio_range``."""
    ratio = np.random.random_sample() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return _resize(image, label, rescale_size(image.shape[:2], target))


def random_crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float,
                ignore_index: int = 255, tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: a ``crop`` (H, W) window (smaller when the image is), redrawn while one class dominates."""

    def draw() -> tuple[int, int, int, int]:
        oy = np.random.randint(0, max(image.shape[0] - crop[0], 0) + 1)
        ox = np.random.randint(0, max(image.shape[1] - crop[1], 0) + 1)
        return oy, oy + crop[0], ox, ox + crop[1]

    y0, y1, x0, x1 = draw()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            classes, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[classes != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = draw()
    return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photo_metric_distortion(image: np.ndarray, brightness_delta: int = 32,
                            contrast_range: tuple[float, float] = (0.5, 1.5),
                            saturation_range: tuple[float, float] = (0.5, 1.5),
                            hue_delta: int = 18) -> np.ndarray:
    """Step 4 on a uint8 RGB image (mmseg's ``PhotoMetricDistortion``, same draws in the same order)."""

    def contrast(img: np.ndarray) -> np.ndarray:
        return _convert(img, alpha=np.random.uniform(*contrast_range)) if np.random.randint(2) else img

    if np.random.randint(2):
        image = _convert(image, beta=np.random.uniform(-brightness_delta, brightness_delta))
    mode = np.random.randint(2)
    if mode == 1:
        image = contrast(image)
    if np.random.randint(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=np.random.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if np.random.randint(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + np.random.randint(-hue_delta, hue_delta)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0:
        image = contrast(image)
    return image


def normalize_image(image: np.ndarray, mean: Sequence[float] = MMSEG_MEAN,
                    std: Sequence[float] = MMSEG_STD) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` RGB -> float ``[3, H, W]`` ``(x - mean) / std``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class SegTrainTransform:
    """Training pipeline (see the module docstring) on a :class:`SemSegDataset` sample.

    Returns ``{"image": float [3, crop_h, crop_w], "sem_seg": int64 [crop_h, crop_w], "file_name"}``
    (padding: image 0, label ``ignore_index``).

    Args:
        crop_size: ``(H, W)`` of the crop, e.g. ``(896, 896)``.
        scale: ``img_scale`` of the random resize (long, short), e.g. ``(3584, 896)``.
        ratio_range: range of the resize ratio.
        cat_max_ratio: largest share one class may have in a crop (1.0: no redraw).
        flip_prob: horizontal-flip probability.
        photometric: apply :func:`photo_metric_distortion`.
        mean, std: normalisation in 0..255.
        ignore_index: label of unlabelled and padded pixels.
    """

    def __init__(self, crop_size: Sequence[int] = (896, 896), scale: Sequence[int] = (3584, 896),
                 ratio_range: Sequence[float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 flip_prob: float = 0.5, photometric: bool = True, mean: Sequence[float] = MMSEG_MEAN,
                 std: Sequence[float] = MMSEG_STD, ignore_index: int = 255):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"SegTrainTransform: ratio_range {tuple(ratio_range)} must be 0 < low <= high")
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, label = random_resize(sample["image"], sample["sem_seg"], self.scale, self.ratio_range)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio, self.ignore_index)
        if np.random.rand() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photo_metric_distortion(np.ascontiguousarray(image))
        tensor = normalize_image(image, self.mean, self.std)
        h, w = label.shape
        padded = torch.zeros(3, *self.crop_size)
        padded[:, :h, :w] = tensor
        target = torch.full(self.crop_size, self.ignore_index, dtype=torch.long)
        target[:h, :w] = torch.from_numpy(np.ascontiguousarray(label))
        return {"image": padded, "sem_seg": target, "file_name": sample["file_name"]}


class SegTestTransform:
    """Test-time input: the image keep-ratio resized to ``scale`` (None: as is) and normalised; the
    label map stays at the original size, where predictions are scored (mmseg's convention).

    Returns ``{"image": float [3, h, w], "sem_seg": int64 [H, W], "file_name", "ori_size": (H, W)}``.
    """

    def __init__(self, scale: Sequence[int] | None = (3584, 896), mean: Sequence[float] = MMSEG_MEAN,
                 std: Sequence[float] = MMSEG_STD):
        self.scale = None if scale is None else (int(scale[0]), int(scale[1]))
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        if self.scale is not None:
            image, _ = _resize(image, None, rescale_size(image.shape[:2], self.scale))
        return {"image": normalize_image(image, self.mean, self.std),
                "sem_seg": torch.from_numpy(np.ascontiguousarray(sample["sem_seg"])).long(),
                "file_name": sample["file_name"], "ori_size": tuple(sample["sem_seg"].shape)}
