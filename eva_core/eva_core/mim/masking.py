"""BEiT-style block-wise masking with an exact number of masked patches.

EVA masks 105 of the 256 patches of a 16x16 grid (about 40%) in rectangular blocks of at least 16
patches whose aspect ratio is log-uniform in [0.3, 1/0.3] (BEiT, Bao et al. 2021). BEiT's own
generator can stop short of the target when no block fits the remaining budget; a variable number of
masked tokens per sample makes batches ragged, so here the mask is topped up to the exact
count, growing from the edge of the existing blocks so the mask stays blocky.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["BlockMaskGenerator"]

SeedLike = Union[None, int, np.random.Generator]


def _as_generator(rng: SeedLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {type(rng).__name__}")


class BlockMaskGenerator:
    """Draws boolean masks of exactly ``num_masking_patches`` patches on a patch grid.

    Args:
        input_size: patch grid ``(height, width)`` or one int for a square grid
            (EVA: 16 for 224 / patch 14).
        num_masking_patches: how many patches every mask covers (EVA: 105).
        min_num_patches: smallest block area tried (EVA: 16).
        max_num_patches: largest block area tried; ``None`` means ``num_masking_patches``.
        min_aspect: smallest block aspect ratio (height / width); sampled log-uniformly.
        max_aspect: largest aspect ratio; ``None`` means ``1 / min_aspect``.
        seed: seed of the generator used when ``__call__`` gets no ``rng``.

    Raises:
        ValueError: impossible counts or ratios (the message names the expected range).

    Example:
        >>> gen = BlockMaskGenerator((16, 16), 105)
        >>> gen(rng=0).sum()
        105
    """

    def __init__(
        self,
        input_size: Union[int, Sequence[int]] = (14, 14),
        num_masking_patches: int = 105,
        min_num_patches: int = 16,
        max_num_patches: Optional[int] = None,
        min_aspect: float = 0.3,
        max_aspect: Optional[float] = None,
        seed: Optional[int] = None,
    ):
        if isinstance(input_size, (int, np.integer)):
            input_size = (int(input_size), int(input_size))
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be a positive int or (height, width), got {input_size!r}")
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        if not 0 <= int(num_masking_patches) <= self.num_patches:
            raise ValueError(
                f"num_masking_patches must be in [0, {self.num_patches}] for a {self.height}x{self.width} "
                f"grid, got {num_masking_patches}")
        self.num_masking_patches = int(num_masking_patches)
        if int(min_num_patches) < 1:
            raise ValueError(f"min_num_patches must be >= 1, got {min_num_patches}")
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = (max(1, self.num_masking_patches) if max_num_patches is None
                                else int(max_num_patches))
        if self.max_num_patches < 1:
            raise ValueError(f"max_num_patches must be >= 1 (or None), got {max_num_patches}")
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
        if not (0 < min_aspect <= max_aspect):
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got min_aspect={min_aspect}, "
                             f"max_aspect={max_aspect}")
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_ratio(cls, input_size: Union[int, Sequence[int]], mask_ratio: float,
                   **kwargs) -> "BlockMaskGenerator":
        """Build a generator masking ``round(mask_ratio * num_patches)`` patches."""
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        return cls((h, w), int(round(mask_ratio * h * w)), **kwargs)

    def __repr__(self) -> str:
        lo, hi = (round(math.exp(v), 3) for v in self.log_aspect_ratio)
        return (f"{type(self).__name__}(input_size=({self.height}, {self.width}), "
                f"num_masking_patches={self.num_masking_patches}, min_num_patches={self.min_num_patches}, "
                f"max_num_patches={self.max_num_patches}, aspect=({lo}, {hi}))")

    def _place_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Try (up to 10 times, as BEiT) to mask one random block adding 1..budget new patches."""
        for _ in range(10):
            # the area is drawn between the min block size and the budget (either may be larger)
            lo, hi = sorted((self.min_num_patches, budget))
            target_area = rng.uniform(lo, hi)
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if not (1 <= h <= self.height and 1 <= w <= self.width):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            window = mask[top:top + h, left:left + w]
            new = h * w - int(window.sum())
            if 0 < new <= budget:
                window[...] = True
                return new
        return 0

    @staticmethod
    def _frontier(mask: np.ndarray) -> np.ndarray:
        """Unmasked patches with a masked 4-neighbour."""
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        return grown & ~mask

    def _fill_up(self, mask: np.ndarray, missing: int, rng: np.random.Generator) -> None:
        """Mask ``missing`` more patches, taken from the border of the existing blocks first."""
        while missing > 0:
            cand = self._frontier(mask) if mask.any() else ~mask
            idx = np.flatnonzero(cand)
            if idx.size == 0:  # mask holds isolated full rows/cols only: any free patch will do
                idx = np.flatnonzero(~mask)
            take = rng.choice(idx, size=min(missing, idx.size), replace=False)
            mask.flat[take] = True
            missing -= take.size

    def __call__(self, rng: SeedLike = None) -> np.ndarray:
        """Draw one mask.

        Args:
            rng: a numpy Generator, an int seed (the same seed always gives the same mask) or
                ``None`` to use the generator's own stream.

        Returns:
            bool array ``[height, width]`` with exactly ``num_masking_patches`` True entries.
        """
        rng = self._rng if rng is None else _as_generator(rng)
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_num_patches)
            delta = self._place_block(mask, budget, rng)
            if delta == 0:
                break
            count += delta
        # blocks never overshoot (each one adds at most the remaining budget), but they can
        # undershoot when no block fits the last few patches
        if count < self.num_masking_patches:
            self._fill_up(mask, self.num_masking_patches - count, rng)
        return mask
