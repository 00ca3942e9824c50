"""Image transforms for training and evaluation, built on torchvision.transforms.

Train: RandomResizedCrop(scale, ratio) -> horizontal flip -> optional RandAugment (timm string,
e.g. ``"rand-m9-mstd0.5-inc1"``) -> ToTensor -> Normalize.
Eval: Resize(shorter side to ``img_size / crop_pct``) -> CenterCrop(img_size) -> ToTensor ->
Normalize (``crop_pct=1.0`` is EVA's "test crop ratio 1.0").
"""
from __future__ import annotations

import math
from typing import Sequence

from timm.data.constants import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN,
                                 OPENAI_CLIP_STD)
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "build_transform",
           "interpolation_mode"]

IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
CLIP_MEAN: tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)
CLIP_STD: tuple[float, float, float] = tuple(OPENAI_CLIP_STD)

_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                   "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS,
                   "box": InterpolationMode.BOX, "hamming": InterpolationMode.HAMMING}


def interpolation_mode(name: str) -> InterpolationMode:
    """torchvision InterpolationMode for a name such as ``"bicubic"``."""
    try:
        return _INTERPOLATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                         f"got {name!r}") from None


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {tuple(value)}")
    return float(value[0]), float(value[1])


def build_transform(is_train: bool, img_size: int = 224, *,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), hflip: float = 0.5,
                    interpolation: str = "bicubic", crop_pct: float = 0.875,
                    auto_augment: str | None = None, normalize: bool = True) -> T.Compose:
    """Classification / MIM transform for a PIL RGB image.

    Args:
        is_train: random crop + flip (+ RandAugment) if True, resize + center crop otherwise.
        img_size: output side length.
        mean, std: normalization constants (IMAGENET_* or CLIP_*).
        scale, ratio: RandomResizedCrop area fraction and aspect-ratio ranges.
        hflip: horizontal flip probability (0 disables it).
        interpolation: resampling name (``bicubic`` in EVA).
        crop_pct: eval center-crop fraction; the shorter side is resized to img_size / crop_pct.
        auto_augment: timm RandAugment string such as ``"rand-m9-mstd0.5-inc1"`` (train only).
        normalize: append Normalize(mean, std).
    """
    interp = interpolation_mode(interpolation)
    if is_train:
        ops: list = [T.RandomResizedCrop(img_size, scale=_check_range("scale", scale),
                                         ratio=_check_range("ratio", ratio), interpolation=interp)]
        if hflip > 0:
            ops.append(T.RandomHorizontalFlip(p=hflip))
        if auto_augment:
            ops.append(_rand_augment(auto_augment, img_size, mean, interpolation))
    else:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        ops = [T.Resize(math.floor(img_size / crop_pct), interpolation=interp),
               T.CenterCrop(img_size)]
    ops.append(T.ToTensor())
    if normalize:
        ops.append(T.Normalize(mean=tuple(mean), std=tuple(std)))
    return T.Compose(ops)


def _rand_augment(config: str, img_size: int, mean: Sequence[float], interpolation: str):
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    if not config.startswith("rand"):
        raise ValueError(f"auto_augment must be a timm RandAugment string starting with 'rand', "
                         f"got {config!r}")
    # timm's hparams: translate and fill colour as in timm's create_transform; PIL interpolation
    hparams = {"translate_const": int(img_size * 0.45),
               "img_mean": tuple(round(255 * m) for m in mean),
               "interpolation": str_to_pil_interp(interpolation)}
    return rand_augment_transform(config, hparams)
