"""Batched images of different sizes (detectron2's ``ImageList``), padded as the backbone asks.

ViTDet pads every image to one square (``SimpleFeaturePyramid(square_pad=...)``, reported as
``padding_constraints["square_size"]``) so the position tables are resized once per run
(``docs/recipes/detection.md#backbone-conventions-kept-from-detectron2``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["ImageList"]


class ImageList:
    """A padded batch ``tensor [B, C, H, W]`` and each image's ``(h, w)`` before padding.

    Args:
        tensor: the padded batch.
        image_sizes: ``(h, w)`` of each image; ``image_list[i]`` is that image without its padding.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: Sequence[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = [tuple(int(s) for s in hw) for hw in image_sizes]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args, **kwargs) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Mapping[str, int] | None = None,
    ) -> "ImageList":
        """Pad images ``[C, Hi, Wi]`` bottom-right to one size (detectron2's rule).

        The size is the largest image's, replaced by ``square_size`` in both sides when
        ``padding_constraints`` has one > 0, then rounded up to a multiple of ``size_divisibility``
        (``padding_constraints["size_divisibility"]`` overrides it, as in detectron2; the pyramid's
        misspelled ``size_divisiblity`` key is not read, also as in detectron2).

        Raises:
            ValueError: no images, images with different leading shapes, or an image larger than
                ``square_size`` (it would have to be cropped).
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        lead = tuple(tensors[0].shape[:-2])
        for i, t in enumerate(tensors):
            if tuple(t.shape[:-2]) != lead:
                raise ValueError(f"image {i} has shape {tuple(t.shape)}; expected {lead} + (H, W) "
                                 "like image 0")
        image_sizes = [tuple(t.shape[-2:]) for t in tensors]
        max_h = max(h for h, _ in image_sizes)
        max_w = max(w for _, w in image_sizes)
        constraints = dict(padding_constraints or {})
        square = int(constraints.get("square_size", 0) or 0)
        if square > 0:
            for i, (h, w) in enumerate(image_sizes):
                if h > square or w > square:
                    raise ValueError(f"image {i} of size {(h, w)} does not fit square_size {square}: resize "
                                     "it first (the transforms must bound the longer side)")
            max_h = max_w = square
        size_divisibility = int(constraints.get("size_divisibility", size_divisibility))
        if size_divisibility > 1:
            max_h = -(-max_h // size_divisibility) * size_divisibility
            max_w = -(-max_w // size_divisibility) * size_divisibility
        batched = tensors[0].new_full((len(tensors), *lead, max_h, max_w), pad_value)
        for img, slot in zip(tensors, batched):
            slot[..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched, image_sizes)
