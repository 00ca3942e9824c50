"""Segmentation outputs as files: PNG label maps and colourised overlays (mmseg's ``show_result``).

* :func:`save_label_png`: an 8-bit single-channel PNG of class ids that the datasets read back:
  with ``reduce_zero_label`` (ADE20K's submission format) class ``c`` is written as ``c + 1`` and
  ignored pixels as 0, otherwise ids as they are and ignored pixels as ``ignore_index``.
* :func:`colorize`: class ids -> RGB with a palette (ADE20K's by default; ignored pixels black).
* :func:`overlay`: ``image * (1 - opacity) + colours * opacity`` (mmseg's blend, opacity 0.5).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .data.classes import palette_for

__all__ = ["save_label_png", "colorize", "overlay", "save_overlay", "label_map"]

ArrayLike = np.ndarray | torch.Tensor


def label_map(prediction: ArrayLike) -> np.ndarray:
    """An int64 ``[H, W]`` label map from a label map or from logits ``[C, H, W]`` (argmax)."""
    if torch.is_tensor(prediction):
        prediction = prediction.detach().cpu()
        if prediction.dim() == 3:
            prediction = prediction.argmax(0)
        prediction = prediction.numpy()
    prediction = np.asarray(prediction)
    if prediction.ndim == 3:
        prediction = prediction.argmax(0)
    if prediction.ndim != 2:
        raise ValueError(f"expected a label map [H, W] or logits [C, H, W], got shape {prediction.shape}")
    return prediction.astype(np.int64)


def save_label_png(prediction: ArrayLike, path: str | os.PathLike, *, reduce_zero_label: bool = False,
                   ignore_index: int = 255) -> Path:
    """Write class ids as an 8-bit PNG (see the module docstring for the id convention).

    Raises:
        ValueError: an id does not fit in 8 bits after the shift.
    """
    labels = label_map(prediction)
    ignored = labels == ignore_index
    values = np.where(ignored, 0, labels + 1) if reduce_zero_label else labels
    if values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError(f"{path}: class ids {labels.min()}..{labels.max()} do not fit an 8-bit PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def colorize(prediction: ArrayLike, palette: Sequence[Sequence[int]] | None = None, *,
             num_classes: int | None = None, ignore_index: int = 255) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``: each class in its palette colour, ``ignore_index`` black.

    Args:
        prediction: label map or logits.
        palette: one RGB triple per class (default :func:`palette_for` of ``num_classes``, or of the
            largest id + 1).
        num_classes: number of classes when ``palette`` is None.
        ignore_index: id drawn black.

    Raises:
        ValueError: an id has no palette colour.
    """
    labels = label_map(prediction)
    valid = labels != ignore_index
    if palette is None:
        palette = palette_for(num_classes or int(labels[valid].max(initial=0)) + 1)
    table = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if valid.any() and (labels[valid].min() < 0 or labels[valid].max() >= len(table)):
        raise ValueError(f"class id {int(labels[valid].max())} has no colour in a palette of {len(table)}")
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[valid] = table[labels[valid]]
    return out


def overlay(image: ArrayLike, prediction: ArrayLike, palette: Sequence[Sequence[int]] | None = None, *,
            opacity: float = 0.5, num_classes: int | None = None, ignore_index: int = 255) -> np.ndarray:
    """The image (uint8 ``[H, W, 3]`` RGB) blended with the colourised prediction of the same size."""
    image = np.asarray(image)
    colours = colorize(prediction, palette, num_classes=num_classes, ignore_index=ignore_index)
    if image.shape[:2] != colours.shape[:2]:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} (WxH) but the prediction is "
                         f"{colours.shape[1]}x{colours.shape[0]}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity {opacity} must lie in [0, 1]")
    blended = image.astype(np.float32) * (1 - opacity) + colours.astype(np.float32) * opacity
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def save_overlay(image: ArrayLike, prediction: ArrayLike, path: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`overlay` as a PNG (keyword arguments as :func:`overlay`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, prediction, **kwargs)).save(path)
    return path
