"""Clip transforms: one set of random parameters per clip, applied to every frame.

``docs/recipes/video.md#sampling-and-augmentation``. A clip is a float tensor ``[T, 3, H, W]`` in
[0, 1] (what :class:`video.data.datasets.VideoClipDataset` reads). As the EVA-01 video release (an X-CLIP
fork) does: training resizes the shorter side to ``256 / 224 * size``, takes TSN's multi-scale crop
(crop side a scale in (1, .875, .75, .66) of the shorter side, width and height at most one scale step
apart, the crop at one of 13 fixed positions), resizes it to ``size``, flips with probability 0.5, jitters
colour with probability 0.8 and turns gray with probability 0.2, then normalises (ImageNet mean / std).
Test: one view is the centre ``size`` crop after resizing the shorter side to ``256 / 224 * size``; three
views are crops along the longer side (start, centre, end) after resizing the shorter side to ``size``.

Random draws use torch's global generator only, which eva_core's train loader seeds from
(seed, stream position) before every sample: the augmentation of a sample is a pure function of
them, so a resumed run is exact (``eva_core/eva_core/data/loader.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from eva_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MULTISCALE_CROP_SCALES", "multiscale_crop_box", "three_crop_boxes", "resize_shorter_side",
           "VideoTrainTransform", "VideoTestTransform"]

MULTISCALE_CROP_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def _check_clip(clip: torch.Tensor) -> None:
    if not torch.is_tensor(clip) or clip.dim() != 4 or clip.shape[1] != 3:
        raise ValueError(f"expected a clip [T, 3, H, W], got {getattr(clip, 'shape', type(clip).__name__)}")


def _randint(high: int) -> int:
    return int(torch.randint(high, ()).item())


def multiscale_crop_box(height: int, width: int, size: int, scales: Sequence[float] = MULTISCALE_CROP_SCALES,
                        max_distort: int = 1, more_fix_crop: bool = True) -> tuple[int, int, int, int]:
    """TSN's GroupMultiScaleCrop box ``(top, left, crop_h, crop_w)``, drawn from torch's generator.

    Crop sides are ``scale * min(H, W)`` (snapped to ``size`` when within 3 pixels); height and width
    take scales at most ``max_distort`` steps apart; the box sits at one of 5 (corners and centre) or,
    with ``more_fix_crop``, 13 positions on a 4 x 4 grid of the free space.
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[_randint(len(pairs))]
    step_h, step_w = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # (row, col) in quarters of the free space
    if more_fix_crop:
        grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    row, col = grid[_randint(len(grid))]
    return row * step_h, col * step_w, crop_h, crop_w


def three_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """Three ``size`` crops ``(top, left, h, w)`` along the longer side: start, centre, end."""
    if min(height, width) < size:
        raise ValueError(f"three_crop_boxes: frame {height}x{width} is smaller than the crop {size}")
    if width >= height:
        top = (height - size) // 2
        return [(top, left, size, size) for left in (0, (width - size) // 2, width - size)]
    left = (width - size) // 2
    return [(top, left, size, size) for top in (0, (height - size) // 2, height - size)]


def _default_resize_short(size: int) -> int:
    return int(256 / 224 * size)  # 256 for 224, the release's scale_resize


def resize_shorter_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    """Resize ``[..., H, W]`` so that its shorter side is ``short`` (aspect ratio kept)."""
    h, w = clip.shape[-2:]
    if min(h, w) == short:
        return clip
    return _resize(clip, (round(h * short / min(h, w)), round(w * short / min(h, w))))


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)


def _normalize(clip: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=clip.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=clip.dtype).view(1, 3, 1, 1)
    return (clip - m) / s


class VideoTrainTransform:
    """Training augmentation of a clip with the same random parameters for all its frames.

    Args:
        size: output side.
        scales: multi-scale crop scales (TSN's 1, .875, .75, .66).
        hflip: flip probability.
        color_jitter: probability of colour jitter (0 disables it).
        brightness, contrast, saturation, hue: jitter strengths (torchvision ``ColorJitter``).
        grayscale: probability of turning the clip gray.
        resize_short: the shorter side before cropping (default ``int(256 / 224 * size)``; 0 keeps the
            frame size).
        mean, std: normalisation (None skips it).
    """

    def __init__(self, size: int = 224, scales: Sequence[float] = MULTISCALE_CROP_SCALES, *,
                 resize_short: int | None = None, hflip: float = 0.5, color_jitter: float = 0.8,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 grayscale: float = 0.2, mean: Sequence[float] | None = IMAGENET_MEAN,
                 std: Sequence[float] | None = IMAGENET_STD):
        for name, p in (("hflip", hflip), ("color_jitter", color_jitter), ("grayscale", grayscale)):
            if not 0 <= p <= 1:
                raise ValueError(f"VideoTrainTransform: {name} probability must be in [0, 1], got {p}")
        if not scales or min(scales) <= 0 or max(scales) > 1:
            raise ValueError(f"VideoTrainTransform: scales must be in (0, 1], got {tuple(scales)}")
        self.size, self.scales = int(size), tuple(float(s) for s in scales)
        self.resize_short = _default_resize_short(self.size) if resize_short is None else int(resize_short)
        self.hflip, self.color_jitter, self.grayscale = hflip, color_jitter, grayscale
        self.jitter = ColorJitter(brightness, contrast, saturation, hue)
        self.mean, self.std = mean, std

    def _jitter(self, clip: torch.Tensor) -> torch.Tensor:
        j = self.jitter
        order, b, c, s, h = ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        # torchvision's functional ops treat [T, 3, H, W] frame by frame with the same factors
        for op in order.tolist():
            if op == 0 and b is not None:
                clip = TF.adjust_brightness(clip, b)
            elif op == 1 and c is not None:
                clip = TF.adjust_contrast(clip, c)
            elif op == 2 and s is not None:
                clip = TF.adjust_saturation(clip, s)
            elif op == 3 and h is not None:
                clip = TF.adjust_hue(clip, h)
        return clip

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """``[T, 3, H, W]`` in [0, 1] -> ``[T, 3, size, size]``."""
        _check_clip(clip)
        if self.resize_short:
            clip = resize_shorter_side(clip, self.resize_short)
        top, left, h, w = multiscale_crop_box(clip.shape[-2], clip.shape[-1], self.size, self.scales)
        clip = _resize(clip[..., top:top + h, left:left + w], (self.size, self.size))
        if float(torch.rand(())) < self.hflip:
            clip = clip.flip(-1)
        if float(torch.rand(())) < self.color_jitter:
            clip = self._jitter(clip)
        if float(torch.rand(())) < self.grayscale:
            clip = TF.rgb_to_grayscale(clip, num_output_channels=3)
        clip = clip.clamp(0, 1)
        return _normalize(clip, self.mean, self.std) if self.mean is not None else clip


class VideoTestTransform:
    """Test views of a clip: shorter side resized, then one centre crop or three crops.

    Args:
        size: output side.
        num_crops: 1 (centre: ``[T, 3, size, size]``) or 3 (start, centre, end of the longer side:
            ``[3, T, 3, size, size]``).
        resize_short: the shorter side before cropping (default: ``size`` for three crops,
            ``int(256 / 224 * size)`` for one, as the release).
        mean, std: normalisation (None skips it).
    """

    def __init__(self, size: int = 224, num_crops: int = 3, *, resize_short: int | None = None,
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD):
        if num_crops not in (1, 3):
            raise ValueError(f"VideoTestTransform: num_crops must be 1 or 3, got {num_crops}")
        self.size, self.num_crops, self.mean, self.std = int(size), num_crops, mean, std
        if resize_short is None:
            resize_short = self.size if num_crops == 3 else _default_resize_short(self.size)
        if resize_short < self.size:
            raise ValueError(f"VideoTestTransform: resize_short {resize_short} is smaller than the crop "
                             f"{size}")
        self.resize_short = int(resize_short)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_clip(clip)
        clip = resize_shorter_side(clip, self.resize_short)
        boxes = three_crop_boxes(clip.shape[-2], clip.shape[-1], self.size)
        if self.num_crops == 1:
            boxes = boxes[1:2]  # the centre
        views = torch.stack([clip[..., t:t + ch, le:le + cw] for t, le, ch, cw in boxes])
        if self.mean is not None:
            views = _normalize(views.flatten(0, 1), self.mean, self.std).view_as(views)
        return views[0] if self.num_crops == 1 else views
