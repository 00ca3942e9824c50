"""``EncoderDecoderMask2Former``: EVAAdapter backbone + Mask2Former head + set criterion, as one model.

Batch contract (what the engine's trainer and ``inference_on_dataset`` pass to ``model(batch)``):

* ``batch["image"]``: normalised images, ``FloatTensor[B, 3, H, W]`` (or, in eval, a list of
  ``[3, H_i, W_i]`` for images of different sizes);
* ``batch["sem_seg"]``: ground-truth label maps, ``LongTensor[B, H, W]`` (or a list of ``[H, W]``)
  with class ids ``0 .. num_classes - 1`` and ``ignore_label`` (255) for unlabelled / padded pixels;
  needed in training only (``SemSegEvaluator`` reads it in eval);
* ``batch["ori_size"]`` (eval, optional): one ``(H, W)`` per image, the size of its original label
  map when the test pipeline resized the image; the scores are resized (bilinear) to it, as mmseg
  resizes to ``ori_shape``.

In ``train()`` mode ``model(batch)`` returns the weighted loss dict of
:class:`~mask2former_eva.criterion.SetCriterion` (``loss_ce``, ``loss_mask``, ``loss_dice`` and
``loss_*_{i}`` per auxiliary prediction), which the trainer sums. In ``eval()`` mode it returns
``{"sem_seg": FloatTensor[B, K, H, W]}`` per-class scores at the input resolution (a list of
``{"sem_seg": [K, H_i, W_i]}`` for a list of images or when ``ori_size`` is given), the form
``eva_core.evaluation.sem_seg.SemSegEvaluator`` reads.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .criterion import SetCriterion, mask2former_weight_dict
from .mask2former_head import Mask2FormerHead
from .matcher import HungarianMatcher

__all__ = ["EncoderDecoderMask2Former", "build_criterion", "semantic_targets", "slide_windows"]


def build_criterion(num_classes: int, num_aux: int, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                    dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                    oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> SetCriterion:
    """The EVA release's Mask2Former criterion (docs/recipes/segmentation.md): matcher costs and loss
    weights class 2 / mask 5 / dice 5, no-object 0.1, 12544 points, oversample 3, importance 0.75."""
    matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points=num_points)
    weights = mask2former_weight_dict(class_weight, mask_weight, dice_weight, num_aux=num_aux)
    return SetCriterion(num_classes, matcher, weights, eos_coef=no_object_weight, num_points=num_points,
                        oversample_ratio=oversample_ratio, importance_sample_ratio=importance_sample_ratio)


def semantic_targets(label_map: torch.Tensor, num_classes: int, ignore_label: int = 255,
                     name: str = "label map") -> dict[str, torch.Tensor]:
    """One binary mask per class present in ``label_map`` (ignored pixels belong to none).

    Args:
        label_map: ``[H, W]`` integer class ids.
        num_classes: valid ids are ``0 .. num_classes - 1``.
        ignore_label: the id of unlabelled pixels.
        name: what to call the map in errors.

    Returns:
        ``{"labels": LongTensor[T] (ascending), "masks": FloatTensor[T, H, W]}``.

    Raises:
        ValueError: a value that is neither a class id nor ``ignore_label``.
    """
    if label_map.dim() != 2 or label_map.is_floating_point():
        raise ValueError(f"{name}: expected an integer [H, W] label map, got {label_map.dtype} of shape "
                         f"{tuple(label_map.shape)}")
    classes = label_map.unique()
    classes = classes[classes != ignore_label]
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise ValueError(f"{name}: holds label {int(bad[0])}, expected 0 .. {num_classes - 1} or "
                         f"ignore_label {ignore_label}")
    masks = label_map[None] == classes[:, None, None]
    return {"labels": classes.long(), "masks": masks.float()}


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding windows ``(y1, y2, x1, x2)``: a grid of ``stride`` steps, the last window of
    each row / column moved back to end at the border; a side shorter than the crop is one window."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


class EncoderDecoderMask2Former(nn.Module):
    """Semantic segmentor: ``backbone`` (4 maps at strides 4-32) -> ``decode_head`` -> losses or scores.

    Args:
        backbone: returns ``[f1, f2, f3, f4]`` at strides 4, 8, 16, 32 (an
            :class:`~mask2former_eva.vit_adapter.EVAAdapter`); input sides must be multiples of
            ``size_divisor``.
        decode_head: a :class:`~mask2former_eva.mask2former_head.Mask2FormerHead`.
        criterion: the training loss (default: :func:`build_criterion` for the head's class count and
            decoder depth, the release's settings).
        ignore_label: label-map value of unlabelled pixels (255).
        test_mode: ``"whole"`` (one pass over the padded image) or ``"slide"`` (mmseg's sliding
            window: ``crop_size`` windows every ``stride``, overlapping scores averaged by count).
        crop_size: slide window ``(h, w)`` (896 in the release).
        stride: slide step ``(h, w)`` (512 in the release).
        test_scales: test-time resize ratios; the scores of every scale (and flip) are resized back
            to the input and averaged (``(1.0,)``: single scale).
        test_flip: also run the horizontally flipped image at each scale.
        size_divisor: inputs are zero-padded bottom-right to a multiple of this (32: the adapter's
            coarsest stride); predictions are cropped back.
        image_key: batch key of the images.
        label_key: batch key of the label maps.
        output_key: key of the scores in the eval output.
        size_key: batch key of the original ``(H, W)`` per image (eval; optional in the batch).
    """

    def __init__(self, backbone: nn.Module, decode_head: Mask2FormerHead,
                 criterion: SetCriterion | None = None, *, ignore_label: int = 255,
                 test_mode: str = "whole", crop_size: int | Sequence[int] = 896,
                 stride: int | Sequence[int] = 512, test_scales: Sequence[float] = (1.0,),
                 test_flip: bool = False,
                 size_divisor: int = 32, image_key: str = "image", label_key: str = "sem_seg",
                 output_key: str = "sem_seg", size_key: str = "ori_size") -> None:
        super().__init__()
        if test_mode not in ("whole", "slide"):
            raise ValueError(f"EncoderDecoderMask2Former: test_mode must be 'whole' or 'slide', got "
                             f"{test_mode!r}")
        if not test_scales or any(float(s) <= 0 for s in test_scales):
            raise ValueError(f"EncoderDecoderMask2Former: test_scales must be positive ratios, got "
                             f"{test_scales}")
        self.backbone = backbone
        self.decode_head = decode_head
        self.num_classes = decode_head.num_classes
        self.criterion = criterion if criterion is not None else build_criterion(self.num_classes,
                                                                                  decode_head.num_layers)
        if self.criterion.num_classes != self.num_classes:
            raise ValueError(f"EncoderDecoderMask2Former: criterion has {self.criterion.num_classes} "
                             f"classes, the head {self.num_classes}")
        # the no-object class weight is configuration, not learned state: kept out of checkpoints so that
        # a released file (which has no such tensor) covers the whole state dict (min_loaded 1.0)
        empty_weight = getattr(self.criterion, "empty_weight", None)
        if torch.is_tensor(empty_weight) and "empty_weight" in self.criterion.state_dict():
            delattr(self.criterion, "empty_weight")
            self.criterion.register_buffer("empty_weight", empty_weight, persistent=False)
        self.ignore_label = int(ignore_label)
        self.test_mode = test_mode
        self.crop_size, self.stride = _pair(crop_size), _pair(stride)
        self.test_scales = tuple(float(s) for s in test_scales)
        self.test_flip = bool(test_flip)
        self.size_divisor = int(size_divisor)
        self.image_key, self.label_key, self.output_key = image_key, label_key, output_key
        self.size_key = size_key

    def no_weight_decay(self) -> set[str]:
        """The backbone's no-decay names (prefixed)."""
        nwd = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{k}" for k in nwd()} if callable(nwd) else set()

    # ------------------------------------------------------------------ helpers
    def _pad(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        h, w = images.shape[-2:]
        d = self.size_divisor
        pad_h, pad_w = (-h) % d, (-w) % d
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), value=0.0)
            if labels is not None:
                labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_label)
        return images, labels

    def _get(self, batch: Mapping, key: str):
        if not isinstance(batch, Mapping) or key not in batch:
            keys = sorted(batch.keys()) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"EncoderDecoderMask2Former: batch has no {key!r} entry (batch keys: {keys})")
        return batch[key]

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping):
        """Losses in ``train()`` mode, ``{output_key: scores}`` in ``eval()`` mode (see the module
        docstring)."""
        images = self._get(batch, self.image_key)
        if self.training:
            return self.forward_train(images, self._get(batch, self.label_key), batch.get("file_name"))
        sizes = batch.get(self.size_key)
        if torch.is_tensor(images) and sizes is None:
            return {self.output_key: self.inference(images)}
        per_image = list(self.inference(images)) if torch.is_tensor(images) else \
            [self.inference(img[None])[0] for img in images]
        if sizes is not None:
            if len(sizes) != len(per_image):
                raise ValueError(f"EncoderDecoderMask2Former: batch[{self.size_key!r}] has {len(sizes)} "
                                 f"sizes for {len(per_image)} images")
            per_image = [s if tuple(s.shape[-2:]) == tuple(int(v) for v in size) else
                         F.interpolate(s[None], size=tuple(int(v) for v in size), mode="bilinear",
                                       align_corners=False)[0]
                         for s, size in zip(per_image, sizes)]
        return [{self.output_key: s} for s in per_image]

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor | Sequence[torch.Tensor],
                      names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Weighted Mask2Former losses of a batch of images ``[B, 3, H, W]`` and label maps ``[B, H, W]``."""
        if not torch.is_tensor(images) or images.dim() != 4:
            raise ValueError("EncoderDecoderMask2Former: training images must be one [B, 3, H, W] tensor, "
                             "got "
                             f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
        labels = torch.stack(list(labels)) if not torch.is_tensor(labels) else labels
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"EncoderDecoderMask2Former: label maps {tuple(labels.shape)} do not match "
                             f"images {tuple(images.shape)} (need [B, H, W] at the image size)")
        images, labels = self._pad(images, labels.long())
        targets = [semantic_targets(lab, self.num_classes, self.ignore_label,
                                    name=names[i] if names is not None else f"label map {i} of the batch")
                   for i, lab in enumerate(labels)]
        outputs = self.decode_head(self.backbone(images))
        return self.criterion.weight_losses(self.criterion(outputs, targets))

    # ------------------------------------------------------------------ inference
    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, K, H, W]`` scores of one pass (padded to ``size_divisor``, cropped back)."""
        h, w = images.shape[-2:]
        padded, _ = self._pad(images)
        scores = self.decode_head.semantic_scores(self.backbone(padded), size=padded.shape[-2:])
        return scores[..., :h, :w]

    def slide_inference(self, images: torch.Tensor) -> torch.Tensor:
        """mmseg's sliding-window inference: scores of every window summed, divided by the count."""
        batch, _, height, width = images.shape
        scores = images.new_zeros(batch, self.num_classes, height, width, dtype=torch.float32)
        count = images.new_zeros(1, 1, height, width, dtype=torch.float32)
        for y1, y2, x1, x2 in slide_windows(height, width, self.crop_size, self.stride):
            scores[:, :, y1:y2, x1:x2] += self.encode_decode(images[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        return scores / count

    def _infer_once(self, images: torch.Tensor) -> torch.Tensor:
        return self.slide_inference(images) if self.test_mode == "slide" else self.encode_decode(images)

    def inference(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, K, H, W]`` averaged over ``test_scales`` and (with ``test_flip``) flips."""
        if images.dim() != 4:
            raise ValueError(f"EncoderDecoderMask2Former: images must be [B, 3, H, W], got "
                             f"{tuple(images.shape)}")
        size = images.shape[-2:]
        total, runs = None, 0
        for scale in self.test_scales:
            scaled_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            scaled = images if scale == 1.0 else F.interpolate(images, size=scaled_size, mode="bilinear",
                                                               align_corners=False)
            for flip in ((False, True) if self.test_flip else (False,)):
                scores = self._infer_once(scaled.flip(-1) if flip else scaled)
                if flip:
                    scores = scores.flip(-1)
                if scores.shape[-2:] != size:
                    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
                total = scores if total is None else total + scores
                runs += 1
        return total / runs
