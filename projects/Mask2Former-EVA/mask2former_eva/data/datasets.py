"""Semantic-segmentation datasets in the released folder formats: ADE20K, COCO-Stuff-164K, custom.

One reader, :class:`SemSegDataset`, pairs every image in an image folder with the label PNG of the
same stem in a label folder (mmseg's ``CustomDataset`` rule: ``<stem><img_suffix>`` ->
``<stem><seg_map_suffix>``). The three sets differ only in folders, suffixes, class names and the
zero-label rule:

* ADE20K (``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png``; png value 0 is "other" and ``reduce_zero_label``
  maps it to the ignore index 255 and every other value ``k`` to class ``k - 1`` (150 classes).
* COCO-Stuff-164K: ``images/{train2017,val2017}/*.jpg`` and
  ``annotations/{train2017,val2017}/*_labelTrainIds.png`` (the train-id maps mmseg's
  ``tools/convert_datasets/coco_stuff164k.py`` writes): ids 0..170 already, 255 unlabelled.
* Custom: any image folder + label-PNG folder + a class-list file (one name per line); the class
  count is the number of names, so a new dataset needs no code edit.

Every sample is read whole and checked: an image that cannot be decoded raises
:class:`eva_core.data.datasets.CorruptImageError` naming the file (``strict=False`` opts into
eva_core's skip-and-count instead), a label map that is missing, unreadable, not single-channel,
of another size than its image, or holding a value that is neither a class nor the ignore index
raises naming the file. Nothing is dropped silently.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from eva_core.data.datasets import PathLabelDataset

from .classes import ADE20K_CLASSES, COCO_STUFF_CLASSES

__all__ = ["SemSegDataset", "ade20k_dataset", "coco_stuff164k_dataset", "custom_sem_seg_dataset",
           "read_class_list", "LabelMapError"]

IGNORE_INDEX = 255


class LabelMapError(ValueError):
    """A label map is missing, unreadable or inconsistent with its image; the message names it."""


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (surrounding blanks stripped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no names, an empty line between names, or a repeated name
            (naming the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline or blank tail is not a class
    names: list[str] = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise ValueError(f"{path}:{number}: empty line; expected one class name per line")
        if name in names:
            raise ValueError(f"{path}:{number}: class {name!r} repeats line {names.index(name) + 1}")
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no class names; expected one per line")
    return names


class SemSegDataset(PathLabelDataset):
    """Images with per-pixel label PNGs; each item is ``transform(sample)``.

    The sample given to the transform is ``{"image": uint8 [H, W, 3] RGB, "sem_seg": int64 [H, W]
    (classes 0..C-1, ignore_index elsewhere), "file_name", "seg_file_name", "height", "width"}``;
    without a transform the arrays become tensors (``image`` float ``[3, H, W]`` in 0..255).

    Args:
        image_dir: folder of images.
        label_dir: folder of label PNGs.
        class_names: the ``C`` class names (label value ``c`` after the zero rule is class ``c``).
        img_suffix: image file ending; every file with it is a sample (sorted by name).
        seg_map_suffix: label file ending replacing ``img_suffix``.
        reduce_zero_label: png value 0 -> ignore, ``k`` -> ``k - 1`` (ADE20K).
        ignore_index: value of unlabelled pixels (must not be a class id).
        transform: callable on the sample dict.
        strict: an undecodable image raises (True) or is replaced by the next readable sample and
            counted, as eva_core's datasets do (False).

    Raises:
        FileNotFoundError: a folder does not exist, holds no image, or an image has no label map.
        ValueError: no class names, or ``ignore_index`` collides with a class id.
    """

    def __init__(self, image_dir: str | os.PathLike, label_dir: str | os.PathLike,
                 class_names: Sequence[str], *, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 transform: Callable | None = None, strict: bool = True):
        super().__init__(transform, strict=strict)
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        self.class_names = [str(n) for n in class_names]
        if not self.class_names:
            raise ValueError("SemSegDataset: class_names is empty")
        if 0 <= int(ignore_index) < len(self.class_names):
            raise ValueError(f"SemSegDataset: ignore_index {ignore_index} is one of the "
                             f"{len(self.class_names)} class ids")
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = int(ignore_index)
        for what, folder in (("image", self.image_dir), ("label", self.label_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"SemSegDataset: {what} folder {folder} does not exist")
        images = sorted(p for p in self.image_dir.iterdir() if p.name.endswith(img_suffix))
        if not images:
            raise FileNotFoundError(f"SemSegDataset: no '*{img_suffix}' image in {self.image_dir}")
        for image in images:  # samples: (image path, label-map path)
            label = self.label_dir / (image.name[: -len(img_suffix)] + seg_map_suffix)
            if not label.is_file():
                raise FileNotFoundError(f"SemSegDataset: image {image} has no label map {label}")
            self.samples.append((str(image), str(label)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_label(self, index: int, size_wh: tuple[int, int]) -> np.ndarray:
        """The label map of sample ``index`` as int64 ``[H, W]`` after the zero rule, checked."""
        image_path, path = self.samples[index]
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise LabelMapError(f"label map {path} has mode {im.mode}; expected a single-channel "
                                        "PNG (mode L, P or I) of class ids")
                if im.size != size_wh:
                    raise LabelMapError(f"label map {path} is {im.size[0]}x{im.size[1]} (WxH) but its image "
                                        f"{image_path} is {size_wh[0]}x{size_wh[1]}")
                label = np.asarray(im).astype(np.int64)  # P mode: the palette indices are the ids
        except (OSError, SyntaxError, EOFError) as e:
            raise LabelMapError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e
        if self.reduce_zero_label:
            # mmseg's rule: 0 -> ignore, k -> k - 1 (the ignore value itself stays ignore)
            ignored = (label == 0) | (label == self.ignore_index)
            label = np.where(ignored, self.ignore_index, label - 1)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            value = int(label[bad][0]) + int(self.reduce_zero_label)  # the value as stored in the png
            expected = (f"1..{self.num_classes} (reduce_zero_label; 0 = ignore)" if self.reduce_zero_label
                        else f"0..{self.num_classes - 1}")
            raise LabelMapError(f"label map {path} holds value {value}; expected {expected} for "
                                f"{self.num_classes} classes, or {self.ignore_index} (ignore)")
        return label

    def __getitem__(self, index: int) -> dict[str, Any]:
        j, img = self._decode_or_skip(int(index))
        sample = {"image": np.array(img, dtype=np.uint8), "sem_seg": self.read_label(j, img.size),
                  "file_name": self.samples[j][0], "seg_file_name": self.samples[j][1],
                  "height": img.size[1], "width": img.size[0]}
        if self.transform is not None:
            return self.transform(sample)
        sample["image"] = torch.from_numpy(sample["image"]).permute(2, 0, 1).float()
        sample["sem_seg"] = torch.from_numpy(sample["sem_seg"])
        return sample


def _split_dirs(root: str | os.PathLike, split: str, splits: Sequence[str]) -> tuple[Path, Path]:
    if split not in splits:
        raise ValueError(f"split {split!r}: expected one of {list(splits)}")
    return Path(root) / "images" / split, Path(root) / "annotations" / split


def ade20k_dataset(root: str | os.PathLike, split: str = "training", *,
                   class_names: Sequence[str] | None = None, transform: Callable | None = None,
                   strict: bool = True) -> SemSegDataset:
    """ADEChallengeData2016 (``root/images/<split>/*.jpg``, ``root/annotations/<split>/*.png``).

    Args:
        root: the ``ADEChallengeData2016`` folder (or the toy world's ``ade20k`` folder).
        split: ``"training"`` or ``"validation"``.
        class_names: default the 150 ADE20K classes; a set in the same layout with other classes
            (the toy world's, listed in its ``meta.json``) passes its own.
        transform, strict: as :class:`SemSegDataset`.
    """
    image_dir, label_dir = _split_dirs(root, split, ("training", "validation"))
    return SemSegDataset(image_dir, label_dir, class_names or ADE20K_CLASSES, img_suffix=".jpg",
                         seg_map_suffix=".png", reduce_zero_label=True, transform=transform, strict=strict)


def coco_stuff164k_dataset(root: str | os.PathLike, split: str = "train2017", *,
                           transform: Callable | None = None, strict: bool = True) -> SemSegDataset:
    """COCO-Stuff-164K (``root/images/<split>/*.jpg``, ``root/annotations/<split>/*_labelTrainIds.png``).

    Label ids are the 171 train ids 0..170 with 255 unlabelled (mmseg's ``COCOStuffDataset``,
    ``reduce_zero_label=False``).

    Args:
        root: the ``coco_stuff164k`` folder.
        split: ``"train2017"`` or ``"val2017"``.
        transform, strict: as :class:`SemSegDataset`.
    """
    image_dir, label_dir = _split_dirs(root, split, ("train2017", "val2017"))
    return SemSegDataset(image_dir, label_dir, COCO_STUFF_CLASSES, img_suffix=".jpg",
                         seg_map_suffix="_labelTrainIds.png", reduce_zero_label=False,
                         transform=transform, strict=strict)


def custom_sem_seg_dataset(image_dir: str | os.PathLike, label_dir: str | os.PathLike,
                           class_list: str | os.PathLike, *, img_suffix: str = ".jpg",
                           seg_map_suffix: str = ".png", reduce_zero_label: bool = False,
                           ignore_index: int = IGNORE_INDEX, transform: Callable | None = None,
                           strict: bool = True) -> SemSegDataset:
    """Any images + label PNGs with a class-list file (:func:`read_class_list`); ``C`` = its lines.

    Label value ``c`` is the ``c``-th name (0-based; with ``reduce_zero_label`` value 0 is ignored
    and value ``c`` is the ``(c - 1)``-th name).
    """
    return SemSegDataset(image_dir, label_dir, read_class_list(class_list), img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         ignore_index=ignore_index, transform=transform, strict=strict)
