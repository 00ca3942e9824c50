"""The memory planner's hooks for the segmentor (``tools/estimate_memory.py``).

``eva_core.memory`` simulates one training step on fake tensors. The segmentor's example batch
(:func:`mask2former_eva.data.build.memory_example_batch`: crops of the config's size with ten classes
per label map, real integer label maps) makes the targets for real: the per-class masks come from
``torch.unique`` on real values, so their number is exact. The Hungarian matching runs scipy on the
cost matrices, which the fake tensors cannot give; :func:`segmentation_planning_context` keeps the
cost matrices (their memory is part of the step) and returns a matching of the size the real one has
(``min(num_queries, num_targets)`` pairs per image), so the figure is exact, not a bound
(projects/Mask2Former-EVA/MEMORY.md). ``eva_core.memory`` imports this module by convention
(``<package>.memory``) when it plans a model of this package.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from eva_core.memory import real_mode, register_example_batch, register_planning_context

from .data.build import memory_example_batch
from .matcher import HungarianMatcher
from .segmentor import EncoderDecoderMask2Former

__all__ = ["memory_example_batch", "segmentation_planning_context"]

register_example_batch(EncoderDecoderMask2Former)(memory_example_batch)


def _matching_of_real_size(matcher: HungarianMatcher, outputs: dict, targets: list[dict]) -> list:
    """``HungarianMatcher.forward`` without scipy: the cost matrices are computed (their memory counts),
    the assignment pairs query ``i`` with target ``i`` -- as many pairs as the real matching makes."""
    indices = []
    for cost in matcher.cost_matrices(outputs, targets):
        n = min(cost.shape[0], cost.shape[1])
        with real_mode():
            indices.append((torch.arange(n, dtype=torch.int64), torch.arange(n, dtype=torch.int64)))
    return indices


@register_planning_context(EncoderDecoderMask2Former)
@contextlib.contextmanager
def segmentation_planning_context(model: EncoderDecoderMask2Former, cfg: Any):
    """Swap the Hungarian matching for one of the same size that reads no values."""
    original = HungarianMatcher.forward
    HungarianMatcher.forward = _matching_of_real_size
    try:
        yield
    finally:
        HungarianMatcher.forward = original
