"""Image classifier wrapper that speaks the repository's model contract.

``ImageClassifier`` turns any timm-API classifier (``forward_features`` / ``forward_head`` /
``reset_classifier``, e.g. ``eva_core.create_model("eva_giant_patch14_224")``) into a model the
engine can train: ``model(batch)`` returns ``{"loss_cls": loss}`` in train mode and logits in eval
mode. Mixup / CutMix and the losses are timm's; this file only wires them together.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["ImageClassifier", "freeze_patch_embedding"]


def _detach_output(module: nn.Module, args: Any, output: Any) -> Any:
    return output.detach() if torch.is_tensor(output) else output


def freeze_patch_embedding(net: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Stop the gradient right after the patch embedding of ``net`` (EVA fine-tuning).

    EVA fine-tunes with the patch embedding frozen
    (``docs/recipes/classification.md#frozen-patch-embedding``). Its parameters get
    ``requires_grad=False`` (so optimizers and weight decay leave them alone) and the embedding's
    output is detached, so no backward pass runs through the patch convolution at all.

    Args:
        net: a model with a ``patch_embed`` sub-module.

    Returns:
        The forward-hook handle (``handle.remove()`` undoes the detach).

    Raises:
        AttributeError: ``net`` has no ``patch_embed`` module.
    """
    patch_embed = getattr(net, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        raise AttributeError(
            f"freeze_patch_embedding: {type(net).__name__} has no `patch_embed` module to freeze; "
            "expected a ViT/EVA-style timm model")
    for p in patch_embed.parameters():
        p.requires_grad_(False)
    return patch_embed.register_forward_hook(_detach_output)


class ImageClassifier(nn.Module):
    """Classification model: timm-API net + loss (+ optional Mixup/CutMix).

    Args:
        net: a timm-API classifier (``net(images) -> logits``; ``num_classes``,
            ``reset_classifier``).
        criterion: loss module ``criterion(logits, target)``. Default: timm's
            ``SoftTargetCrossEntropy`` when ``mixup`` is given (Mixup produces soft targets and
            already applies label smoothing), else ``torch.nn.CrossEntropyLoss``. Recipes pass
            ``timm.loss.LabelSmoothingCrossEntropy(smoothing=...)`` for label smoothing.
        mixup: optional ``timm.data.Mixup`` applied to the training batch before the forward.
            Needs an even per-step batch size.
        num_classes: if given and different from ``net.num_classes``, the head is replaced via
            ``net.reset_classifier(num_classes)`` (the "custom dataset" knob).
        freeze_patch_embed: stop gradients after the patch embedding (see
            :func:`freeze_patch_embedding`).

    Forward:
        ``batch`` is a dict with ``"image"`` (``[B,3,H,W]``) and, in train mode, ``"label"``
        (``[B]`` int64). A bare image tensor is accepted in eval mode.
        Train mode returns ``{"loss_cls": scalar}``; eval mode returns logits ``[B, C]``.
    """

    def __init__(self, net: nn.Module, criterion: nn.Module | None = None, mixup: Any = None,
                 num_classes: int | None = None, *, freeze_patch_embed: bool = False) -> None:
        super().__init__()
        self.net = net
        if num_classes is not None:
            num_classes = int(num_classes)
            if num_classes <= 0:
                raise ValueError(f"ImageClassifier: num_classes must be positive, got {num_classes}")
            if getattr(net, "num_classes", None) != num_classes:
                if not hasattr(net, "reset_classifier"):
                    raise AttributeError(
                        f"ImageClassifier: num_classes={num_classes} differs from the net's "
                        f"{getattr(net, 'num_classes', None)} and {type(net).__name__} has no "
                        "reset_classifier()")
                net.reset_classifier(num_classes)
        self.num_classes = getattr(net, "num_classes", num_classes)
        if mixup is not None:
            mix_classes = getattr(mixup, "num_classes", None)
            if mix_classes is not None and self.num_classes is not None and mix_classes != self.num_classes:
                raise ValueError(
                    f"ImageClassifier: mixup.num_classes={mix_classes} but the classifier has "
                    f"{self.num_classes} classes; set both to the dataset's class count")
        self.mixup = mixup
        if criterion is None:
            if mixup is not None:
                from timm.loss import SoftTargetCrossEntropy

                criterion = SoftTargetCrossEntropy()
            else:
                criterion = nn.CrossEntropyLoss()
        self.criterion = criterion
        self.patch_embed_frozen = bool(freeze_patch_embed)
        if freeze_patch_embed:
            freeze_patch_embedding(net)

    # The engine's layer-decay / weight-decay helpers look these up on the model they are given.
    def no_weight_decay(self) -> set[str]:
        fn = getattr(self.net, "no_weight_decay", None)
        return {f"net.{n}" for n in fn()} if callable(fn) else set()

    @staticmethod
    def _images(batch: Any) -> torch.Tensor:
        if torch.is_tensor(batch):
            return batch
        if not isinstance(batch, Mapping) or "image" not in batch:
            keys = list(batch.keys()) if isinstance(batch, Mapping) else type(batch).__name__
            raise KeyError(f"ImageClassifier: batch must be a dict with an 'image' tensor, got {keys}")
        return batch["image"]

    def forward(self, batch: Any) -> dict[str, torch.Tensor] | torch.Tensor:
        images = self._images(batch)
        if not self.training:
            return self.net(images)
        if not isinstance(batch, Mapping) or "label" not in batch:
            raise KeyError("ImageClassifier: training needs batch['label'] (int64 class indices [B])")
        target = batch["label"]
        if self.mixup is not None:
            if images.shape[0] % 2:
                raise ValueError(
                    f"ImageClassifier: Mixup/CutMix needs an even per-step batch size, got "
                    f"{images.shape[0]}; change the total batch size or grad_accum_steps")
            images, target = self.mixup(images, target)
        logits = self.net(images)
        return {"loss_cls": self.criterion(logits, target)}
