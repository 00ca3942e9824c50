"""Anchors of detectron2's ``DefaultAnchorGenerator``.

ViTDet: sizes 32..512, ratios 0.5 / 1 / 2, strides 4..64.

Layout and order are detectron2's, so RPN weights trained there predict for the same anchors here:
per level, anchors run over grid rows (y), then columns (x), then the level's cell anchors; the
cell anchors run over sizes, then aspect ratios. A cell anchor of size ``s`` and ratio ``a = h / w``
is centred on 0 with ``w = sqrt(s**2 / a)``, ``h = a * w``, and is *not* rounded (torchvision's
``AnchorGenerator`` rounds it to integers, and orders ratios before sizes; otherwise they agree).
"""
from __future__ import annotations

import math
from collections import abc
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["DefaultAnchorGenerator", "generate_cell_anchors"]


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """XYXY anchors ``[len(sizes) * len(aspect_ratios), 4]`` centred on (0, 0), size-major."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def _broadcast_params(params: Sequence, num_features: int, name: str) -> list[list[float]]:
    """detectron2's rule: a flat list (ViTDet's ``aspect_ratios=[0.5, 1.0, 2.0]``) or a single inner list
    applies to every level; otherwise one list per level."""
    if not isinstance(params, abc.Sequence) or isinstance(params, str) or len(params) == 0:
        raise ValueError(f"DefaultAnchorGenerator {name}={params!r}: expected a non-empty list of numbers "
                         "or of lists")
    if not isinstance(params[0], abc.Sequence):
        return [list(params)] * num_features
    if len(params) == 1:
        return [list(params[0])] * num_features
    if len(params) != num_features:
        raise ValueError(f"DefaultAnchorGenerator {name} has {len(params)} lists; expected 1 or one per "
                         f"level ({num_features} strides)")
    return [list(p) for p in params]


class DefaultAnchorGenerator(nn.Module):
    """One set of cell anchors per feature level, tiled over that level's grid.

    Args:
        sizes: anchor sizes (sqrt of area, input pixels) per level, e.g. ``[[32], [64], ...]``;
            a flat list or a single inner list is used for every level.
        aspect_ratios: ``h / w`` ratios per level, or one (flat) list for all.
        strides: each level's stride in input pixels.
        offset: the first anchor centre is at ``offset * stride``. The default is detectron2's
            constructor default, 0.5; its yacs configs (``MODEL.ANCHOR_GENERATOR.OFFSET``) and ViTDet's
            LazyConfigs (``configs/common/models/cascade_mask_rcnn_vitdet.py``) pass 0.0.
    """

    box_dim = 4

    def __init__(self, *, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int], offset: float = 0.5):
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"DefaultAnchorGenerator offset={offset}: expected 0 <= offset < 1")
        self.strides = [int(s) for s in strides]
        self.num_features = len(self.strides)
        self.offset = float(offset)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        for i, (s, a) in enumerate(zip(sizes, aspect_ratios)):
            # Non-persistent: anchors are derived from the config, so checkpoints carry no anchor keys.
            self.register_buffer(f"cell_anchors_{i}", generate_cell_anchors(s, a), persistent=False)

    @property
    def cell_anchors(self) -> list[torch.Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(self.num_features)]

    @property
    def num_cell_anchors(self) -> list[int]:
        """Anchors per grid cell at each level (detectron2's ``num_cell_anchors``)."""
        return [len(a) for a in self.cell_anchors]

    @property
    def num_anchors(self) -> list[int]:
        return self.num_cell_anchors

    def _grid_anchors(self, grid_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        anchors = []
        for (h, w), stride, base in zip(grid_sizes, self.strides, self.cell_anchors):
            shifts_x = torch.arange(self.offset * stride, w * stride, step=stride, dtype=torch.float32,
                                    device=base.device)
            shifts_y = torch.arange(self.offset * stride, h * stride, step=stride, dtype=torch.float32,
                                    device=base.device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors ``[Hi * Wi * A, 4]`` (XYXY, input pixels) for each level's feature map ``[B, C, Hi, Wi]``.

        Raises:
            ValueError: the number of feature maps differs from the number of strides.
        """
        if len(features) != self.num_features:
            raise ValueError(f"DefaultAnchorGenerator got {len(features)} feature maps; it was built for "
                             f"{self.num_features} (strides {self.strides})")
        return self._grid_anchors([tuple(f.shape[-2:]) for f in features])
