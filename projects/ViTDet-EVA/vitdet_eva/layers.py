"""detectron2's small layer vocabulary that ViTDet's modules are written in.

``Conv2d`` (a conv that carries its ``norm`` and ``activation``, so state-dict keys read
``<conv>.weight`` / ``<conv>.norm.weight`` as in detectron2 checkpoints), ``get_norm`` (norm by
name; ``"LN"`` is the channels-first LayerNorm with eps 1e-6 used by the pyramid and the heads,
``docs/recipes/detection.md#facts-read-off-the-release-model``) and ``ShapeSpec``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

__all__ = ["ShapeSpec", "Conv2d", "LayerNorm", "get_norm"]


class ShapeSpec(NamedTuple):
    """Shape of a feature map without the batch axis (detectron2's ``ShapeSpec``)."""

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None


class LayerNorm(LayerNorm2d):
    """LayerNorm over the channel axis of ``[B, C, H, W]`` (detectron2's ``LayerNorm``, eps 1e-6)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__(normalized_shape, eps=eps)


_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "LN": LayerNorm,
    "BN": nn.BatchNorm2d,
    "GN": lambda c: nn.GroupNorm(32, c),
}


def get_norm(norm: str | Callable[[int], nn.Module] | None, out_channels: int) -> nn.Module | None:
    """A norm module for ``out_channels`` by detectron2 name (``""``/``None``: no norm).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if norm is None or norm == "":
        return None
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(f"norm={norm!r}: expected one of {sorted(_NORMS)}, '' or a callable")
        return _NORMS[norm](out_channels)
    return norm(out_channels)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by its own ``norm`` and ``activation`` (detectron2's ``Conv2d``).

    Args:
        norm: a module applied after the convolution (``None``: none); it is a child, so its weights
            are saved as ``<name>.norm.*``.
        activation: a callable applied last (``None``: none).
        Other arguments as ``nn.Conv2d``.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
