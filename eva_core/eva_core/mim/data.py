"""MIM data: one random crop shared by student and teacher, plus a block mask per sample.

Any shared dataset (:class:`~eva_core.data.ImageFolderDataset`, ``FileListDataset``,
``WebDatasetImages``; they already skip corrupt images) is wrapped by :class:`MaskedImageDataset`;
its transform is a :class:`MIMTransform`. Randomness comes from the global RNGs, which the shared
train loader seeds from (seed, stream position), so masks and crops resume exactly.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .masking import BlockMaskGenerator
from .teacher import CLIP_MEAN, CLIP_STD

__all__ = ["MIMTransform", "MaskedImageDataset"]


class MIMTransform:
    """RandomResizedCrop + horizontal flip, drawn once and applied to student and teacher views.

    EVA: scale (0.2, 1), ratio (3/4, 4/3), bicubic, 224, flip, CLIP normalisation, no colour jitter.

    Args:
        img_size: student input side.
        teacher_img_size: teacher input side; when given (or when the teacher's normalisation
            differs) the transform returns ``{"image", "teacher_image"}`` cut from the SAME crop
            box and flip. ``None``: one tensor, the teacher resizes/re-normalises it itself.
        scale, ratio: RandomResizedCrop area and aspect ranges.
        hflip: flip probability.
        interpolation: resampling (``"bicubic"`` in EVA).
        mean, std: student normalisation. teacher_mean, teacher_std: teacher normalisation.
    """

    def __init__(self, img_size: int = 224, teacher_img_size: Optional[int] = None,
                 scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, interpolation: str = "bicubic",
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 teacher_mean: Optional[Sequence[float]] = None,
                 teacher_std: Optional[Sequence[float]] = None):
        from eva_core.data.transforms import interpolation_mode

        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {tuple(scale)}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
        self.img_size = int(img_size)
        self.teacher_img_size = None if teacher_img_size is None else int(teacher_img_size)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        self.interpolation = interpolation_mode(interpolation)
        self.normalize = T.Normalize(tuple(mean), tuple(std))
        t_mean, t_std = teacher_mean or mean, teacher_std or std
        self.two_views = (self.teacher_img_size is not None or tuple(t_mean) != tuple(mean)
                          or tuple(t_std) != tuple(std))
        self.teacher_normalize = T.Normalize(tuple(t_mean), tuple(t_std))

    def __call__(self, img) -> Any:
        # parameters drawn from torch's global RNG: seeded per stream position by the loader
        top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        flip = torch.rand(()) < self.hflip
        student = self._view(img, (top, left, h, w), flip, self.img_size, self.normalize)
        if not self.two_views:
            return student
        size = self.teacher_img_size or self.img_size
        return {"image": student,
                "teacher_image": self._view(img, (top, left, h, w), flip, size, self.teacher_normalize)}

    def _view(self, img, box, flip, size, normalize) -> torch.Tensor:
        out = TF.resized_crop(img, *box, [size, size], interpolation=self.interpolation, antialias=True)
        if flip:
            out = TF.hflip(out)
        return normalize(TF.to_tensor(out))


class MaskedImageDataset(Dataset):
    """Adds ``"mask"`` (bool ``[N]``, True = masked) to every sample of an image dataset.

    Args:
        dataset: a map-style dataset returning dicts with ``"image"`` (a tensor, or the dict a
            :class:`MIMTransform` returns, which is merged into the sample).
        mask_generator: a :class:`BlockMaskGenerator` (EVA: 16x16 grid, 105 patches).
        keep_keys: sample keys to keep (default: all but ``"path"``, which does not batch well
            with webdataset keys; ``None`` keeps everything).
    """

    def __init__(self, dataset: Dataset, mask_generator: BlockMaskGenerator,
                 keep_keys: Optional[Sequence[str]] = ("image", "teacher_image", "label", "mask")):
        if not callable(mask_generator):
            raise TypeError(f"mask_generator must be callable (a BlockMaskGenerator), "
                            f"got {type(mask_generator).__name__}")
        self.dataset = dataset
        self.mask_generator = mask_generator
        self.keep_keys = None if keep_keys is None else tuple(keep_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # dataset attributes (num_classes, num_skipped, ...) read through the wrapper
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        if not isinstance(sample, Mapping) or "image" not in sample:
            raise TypeError(f"MaskedImageDataset expects samples as dicts with an 'image', got "
                            f"{type(sample).__name__}")
        sample = dict(sample)
        if isinstance(sample["image"], Mapping):
            sample.update(sample.pop("image"))
        # a per-sample generator seeded from numpy's global RNG, which the loader seeds from
        # (seed, stream position): the mask is reproducible and resumes exactly
        rng = np.random.default_rng(int(np.random.randint(0, 2**63 - 1, dtype=np.int64)))
        sample["mask"] = torch.from_numpy(self.mask_generator(rng).reshape(-1))
        if self.keep_keys is not None:
            sample = {k: v for k, v in sample.items() if k in self.keep_keys}
        return sample
