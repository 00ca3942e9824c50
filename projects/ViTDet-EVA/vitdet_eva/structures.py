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


__all__ += ["Instances"]


class Instances:
    """Per-image fields of equal length (detectron2's ``Instances``), e.g. ``gt_boxes``, ``proposal_boxes``.

    Box fields are plain ``[N, 4]`` XYXY tensors in input pixels (detectron2 wraps them in ``Boxes``).

    Args:
        image_size: ``(h, w)`` of the image the fields belong to.
        **fields: initial fields, each a tensor or list of length N.
    """

    def __init__(self, image_size: tuple[int, int], **fields):
        object.__setattr__(self, "_image_size", tuple(int(s) for s in image_size))
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str):
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise AttributeError(f"Instances has no field {name!r}; it has {sorted(fields)}")
        return fields[name]

    def set(self, name: str, value) -> None:
        """Add or replace a field; its length must equal the others'.

        Raises:
            ValueError: the length differs from the existing fields'.
        """
        if self._fields and len(value) != len(self):
            raise ValueError(f"Instances field {name!r} has length {len(value)}; the other fields "
                             f"have {len(self)}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str):
        return self._fields[name]

    def get_fields(self) -> dict:
        return dict(self._fields)

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        return 0

    def __getitem__(self, item) -> "Instances":
        """The instances selected by an index, slice, bool mask or index tensor."""
        if isinstance(item, int):
            item = slice(item, item + 1 if item != -1 else None)
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                out.set(name, value[item])
            elif isinstance(item, slice):
                out.set(name, value[item])
            else:
                idx = torch.as_tensor(item)
                idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx
                out.set(name, [value[i] for i in idx.tolist()])
        return out

    def to(self, *args, **kwargs) -> "Instances":
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out.set(name, value.to(*args, **kwargs) if isinstance(value, torch.Tensor) else value)
        return out

    def __repr__(self) -> str:
        return (f"Instances(num_instances={len(self)}, image_size={self._image_size}, "
                f"fields={sorted(self._fields)})")
