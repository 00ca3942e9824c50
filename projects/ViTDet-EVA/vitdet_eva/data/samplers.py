"""Repeat-factor sampling (LVIS, Gupta et al. 2019; detectron2's ``RepeatFactorTrainingSampler``).

A category seen in a fraction ``f(c)`` of the training images gets ``r(c) = max(1, sqrt(t / f(c)))``
(``t = 0.001`` for LVIS); an image repeats ``r(I) = max over its categories of r(c)`` times in
expectation. The fractional part is rounded stochastically (``floor(r) + 1`` with probability
``frac(r)``).

Rather than a second sampler, the repeats are an index expansion: :class:`RepeatFactorDataset`
lists each image ``floor(r)`` or ``floor(r) + 1`` times (drawn once from a seed), and eva_core's
resumable train sampler shuffles that list every epoch, so exact resume, rank sharding and the
per-position augmentation seeds work unchanged. Unlike detectron2, which redraws the rounding
every epoch, the rounding here is fixed per seed; the expected repeats are the same.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["repeat_factors_from_category_frequency", "repeat_factor_indices", "RepeatFactorDataset"]


def repeat_factors_from_category_frequency(dataset_dicts: Sequence[dict], repeat_thresh: float = 0.001,
                                           ) -> torch.Tensor:
    """Per-image repeat factors ``r(I)`` from the category frequency of ``dataset_dicts``.

    Args:
        dataset_dicts: detectron2-style dicts (``annotations`` with ``category_id``); crowd
            annotations count, as in detectron2.
        repeat_thresh: ``t``; categories in fewer than a fraction ``t`` of the images are repeated.

    Returns:
        float32 tensor ``[len(dataset_dicts)]``; images without annotations get 1.
    """
    if not repeat_thresh > 0:
        raise ValueError(f"repeat_thresh must be > 0, got {repeat_thresh}")
    if len(dataset_dicts) == 0:
        raise ValueError("dataset_dicts is empty; repeat factors need at least one image")
    category_images: dict[int, int] = defaultdict(int)
    image_cats = []
    for d in dataset_dicts:
        cats = {ann["category_id"] for ann in d["annotations"]}
        image_cats.append(cats)
        for c in cats:
            category_images[c] += 1
    num_images = len(dataset_dicts)
    category_rep = {c: max(1.0, math.sqrt(repeat_thresh / (n / num_images)))
                    for c, n in category_images.items()}
    return torch.tensor([max((category_rep[c] for c in cats), default=1.0) for cats in image_cats],
                        dtype=torch.float32)


def repeat_factor_indices(repeat_factors: torch.Tensor | Sequence[float], seed: int = 0) -> list[int]:
    """Image index ``i`` listed ``floor(r_i)`` times, plus once more with probability ``frac(r_i)``.

    Args:
        repeat_factors: per-image factors, each >= 0.
        seed: the stochastic rounding's seed (a pure function of it).

    Returns:
        The expanded index list, in image order (the train sampler shuffles it).
    """
    factors = np.asarray(torch.as_tensor(repeat_factors, dtype=torch.float64))
    if factors.ndim != 1 or not np.all(np.isfinite(factors)) or np.any(factors < 0):
        raise ValueError(f"repeat_factors must be a 1-D list of finite numbers >= 0, got shape "
                         f"{factors.shape} with min {factors.min() if factors.size else None}")
    whole = np.floor(factors)
    extra = np.random.default_rng([int(seed), 0x5EED]).random(len(factors)) < (factors - whole)
    counts = (whole + extra).astype(np.int64)
    return np.repeat(np.arange(len(factors)), counts).tolist()


class RepeatFactorDataset(Dataset):
    """A map-style view of ``dataset`` whose item ``k`` is ``dataset[indices[k]]``.

    Give it to ``eva_core.data.build_train_loader`` in place of ``dataset``.

    Args:
        dataset: the map-style dataset (e.g. :class:`~vitdet_eva.data.mapper.MappedDataset`).
        repeat_factors: per-item factors (:func:`repeat_factors_from_category_frequency`).
        seed: seed of the stochastic rounding.
    """

    def __init__(self, dataset: Any, repeat_factors: torch.Tensor | Sequence[float], seed: int = 0):
        if len(repeat_factors) != len(dataset):
            raise ValueError(f"got {len(repeat_factors)} repeat factors for a dataset of "
                             f"{len(dataset)} items")
        self.dataset = dataset
        self.indices = repeat_factor_indices(repeat_factors, seed)
        if not self.indices:
            raise ValueError("every repeat factor rounded to 0: the expanded dataset is empty")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        return self.dataset[self.indices[k]]
