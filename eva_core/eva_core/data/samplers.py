"""Samplers: which dataset index each position of the sample stream reads.

The training stream is defined globally (independent of the number of ranks): global batch ``b``
holds the global stream positions ``b*T .. b*T+T-1`` (``T`` = total batch size), and rank ``r``
reads the ``r``-th contiguous slice of ``T / world_size`` positions. Each epoch is a permutation
drawn from ``torch.Generator().manual_seed(seed + epoch)``. A position therefore maps to the same
dataset index whatever the number of workers or ranks, which makes resuming exact.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from eva_core.utils import comm

__all__ = ["ResumableTrainSampler", "InferenceSampler", "sample_seed", "shard_range"]


def sample_seed(seed: int, position: int) -> int:
    """Seed for the random augmentation of one stream position (a pure function of both)."""
    state = np.random.SeedSequence([int(seed), int(position)]).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1]) << 32)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = comm.get_rank() if rank is None else int(rank)
    world_size = comm.get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


class ResumableTrainSampler(Sampler):
    """Infinite batch sampler over a seeded, per-epoch reshuffled stream, sharded across ranks.

    Yields, for this rank, lists of ``(dataset_index, global_position)`` pairs, one list per batch.

    Args:
        dataset_size: number of samples in the dataset.
        total_batch_size: batch size summed over all ranks.
        seed: shuffling seed; epoch ``e`` uses permutation seed ``seed + e``.
        drop_last: if True, every epoch yields ``dataset_size // total_batch_size`` full batches
            and the remainder of the permutation is skipped; if False, epochs are concatenated
            and a batch may span two epochs.
        start_batch: number of global batches already consumed (for resuming).
        rank, world_size: default to ``eva_core.utils.comm``.
    """

    def __init__(self, dataset_size: int, total_batch_size: int, *, seed: int = 0,
                 drop_last: bool = True, start_batch: int = 0, rank: int | None = None,
                 world_size: int | None = None):
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if dataset_size <= 0:
            raise ValueError(f"dataset_size must be positive, got {dataset_size}")
        if total_batch_size <= 0 or total_batch_size % self.world_size != 0:
            raise ValueError(f"total_batch_size={total_batch_size} must be a positive multiple of "
                             f"the world size ({self.world_size})")
        if drop_last and dataset_size < total_batch_size:
            raise ValueError(f"dataset has {dataset_size} samples, fewer than total_batch_size="
                             f"{total_batch_size}; with drop_last=True no batch can be formed")
        self.dataset_size = int(dataset_size)
        self.total_batch_size = int(total_batch_size)
        self.batch_size = self.total_batch_size // self.world_size
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.start_batch = int(start_batch)
        self._perms: dict[int, torch.Tensor] = {}

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch (rounded up when batches may span epochs)."""
        if self.drop_last:
            return self.dataset_size // self.total_batch_size
        return -(-self.dataset_size // self.total_batch_size)

    def epoch_of_batch(self, batch: int) -> int:
        """Epoch in which global batch ``batch`` starts."""
        if self.drop_last:
            return batch // self.batches_per_epoch
        return batch * self.total_batch_size // self.dataset_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.dataset_size, generator=g)
        return self._perms[epoch]

    def index_at(self, batch: int, slot: int) -> int:
        """Dataset index read at slot ``slot`` (0..T-1) of global batch ``batch``."""
        if self.drop_last:
            epoch, offset = divmod(batch, self.batches_per_epoch)
            pos_in_epoch = offset * self.total_batch_size + slot
        else:
            epoch, pos_in_epoch = divmod(batch * self.total_batch_size + slot, self.dataset_size)
        return int(self._permutation(epoch)[pos_in_epoch])

    def batch_items(self, batch: int) -> list[tuple[int, int]]:
        """This rank's ``(dataset_index, global_position)`` pairs of global batch ``batch``."""
        first = self.rank * self.batch_size
        return [(self.index_at(batch, slot), batch * self.total_batch_size + slot)
                for slot in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch = self.start_batch
        while True:
            yield self.batch_items(batch)
            batch += 1


def shard_range(size: int, rank: int, world_size: int) -> range:
    """Contiguous slice of ``range(size)`` for ``rank``; shard sizes differ by at most one."""
    per, extra = divmod(size, world_size)
    begin = rank * per + min(rank, extra)
    return range(begin, begin + per + (1 if rank < extra else 0))


class InferenceSampler(Sampler):
    """Finite, ordered sampler giving each rank a contiguous shard; no duplicates, no drops.

    Concatenating the shards of ranks ``0..world_size-1`` gives ``0..size-1`` in order, so an
    evaluator that gathers per-rank results by rank recovers the dataset order.
    """

    def __init__(self, size: int, *, rank: int | None = None, world_size: int | None = None):
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.size = int(size)
        self.indices = shard_range(self.size, self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
