"""detectron2's ``FastRCNNConvFCHead``: the RoI box head (ViTDet: 4 convs 256 + LN, then 1 fc 1024).

Module names are detectron2's (``conv1..convN`` each with ``.norm``, ``fc1..fcM``), so checkpoint keys
read ``roi_heads.box_head.{stage}.conv1.norm.weight``
(``docs/recipes/detection.md#detectron2-state-dict-names``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .layers import Conv2d, ShapeSpec, get_norm

__all__ = ["FastRCNNConvFCHead", "as_shape_spec", "c2_msra_fill", "c2_xavier_fill"]


def as_shape_spec(value, name: str = "input_shape") -> ShapeSpec:
    """A ``ShapeSpec`` from itself, an int (channels), a mapping or a ``(channels, height, width,
    stride)`` sequence: a config stores a ``ShapeSpec`` as a list, and the heads accept it back.

    Raises:
        TypeError: any other value; the message names the argument.
    """
    if isinstance(value, ShapeSpec):
        return value
    if isinstance(value, int):
        return ShapeSpec(channels=value)
    if isinstance(value, Mapping):
        return ShapeSpec(**dict(value))
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) <= 4:
        return ShapeSpec(*value)
    raise TypeError(f"{name}={value!r}: expected a ShapeSpec, channels (int), a mapping or "
                    "(channels, height, width, stride)")


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's MSRA init (He normal, fan_out, ReLU gain; zero bias), detectron2's conv init."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's Xavier init (uniform, ``a=1``; zero bias), detectron2's fc init."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class FastRCNNConvFCHead(nn.Sequential):
    """3x3 convs (+ norm + ReLU) then fully connected layers (+ ReLU) on pooled RoI features.

    Args:
        input_shape: the pooled feature shape (channels, height, width), e.g. ``ShapeSpec(256, 7, 7)``.
        conv_dims: output channels of each conv.
        fc_dims: output size of each fc.
        conv_norm: norm after each conv by detectron2 name (``"LN"``) or ``""``; a normed conv has no bias.
    """

    def __init__(self, input_shape: ShapeSpec, *, conv_dims: Sequence[int] = (), fc_dims: Sequence[int] = (),
                 conv_norm: str = ""):
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("FastRCNNConvFCHead needs at least one conv or fc layer")
        input_shape = as_shape_spec(input_shape)
        if input_shape.channels is None:
            raise ValueError(f"FastRCNNConvFCHead input_shape={input_shape}: channels must be set")
        self._output_size = (input_shape.channels, input_shape.height, input_shape.width)
        self.conv_norm_relus = []
        for k, conv_dim in enumerate(conv_dims):
            conv = Conv2d(self._output_size[0], conv_dim, kernel_size=3, padding=1, bias=not conv_norm,
                          norm=get_norm(conv_norm, conv_dim), activation=nn.ReLU())
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            self._output_size = (conv_dim, self._output_size[1], self._output_size[2])
        self.fcs = []
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                if None in self._output_size:
                    raise ValueError(f"FastRCNNConvFCHead input_shape={input_shape}: height and width "
                                     "must be set for the fc layers")
                self.add_module("flatten", nn.Flatten())
            c, h, w = (self._output_size + (1, 1))[:3]
            in_features = int(c * (h or 1) * (w or 1))
            fc = nn.Linear(in_features, fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            self._output_size = (fc_dim,)
        for layer in self.conv_norm_relus:
            c2_msra_fill(layer)
        for layer in self.fcs:
            c2_xavier_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x

    @property
    def output_shape(self) -> ShapeSpec:
        """``ShapeSpec(channels=fc_dim)`` after fcs, else ``(channels, height, width)``."""
        o = self._output_size
        if len(o) == 1:
            return ShapeSpec(channels=o[0])
        return ShapeSpec(channels=o[0], height=o[1], width=o[2])
