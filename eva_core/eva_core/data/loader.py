"""Data loaders: an infinite, exactly resumable train loader and a finite sharded test loader.

Resuming is exact because (1) which sample a stream position reads depends only on
(seed, epoch, position) (see :mod:`eva_core.data.samplers`) and (2) the augmentation of a
sample is drawn after seeding ``torch``, ``random`` and ``numpy`` from (seed, position), in the
process that reads it. Worker count, worker scheduling and prefetching therefore cannot change a
batch, and a loader restored from ``state_dict()`` yields the batches an uninterrupted run would.

The test loader never replaces an unreadable sample (that would count another image twice): it
drops it and counts it. Dict batches carry the count in ``batch["num_skipped"]`` so that an
evaluator can report it (:func:`batch_num_skipped`); the loader keeps the total and the paths.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from eva_core.data.datasets import UnreadableSampleError, exclude_unreadable
from eva_core.data.samplers import InferenceSampler, ResumableTrainSampler, sample_seed

__all__ = ["TrainLoader", "TestLoader", "build_train_loader", "build_test_loader", "SeededSampleDataset",
           "NUM_SKIPPED_KEY", "batch_num_skipped"]

logger = logging.getLogger(__name__)

NUM_SKIPPED_KEY = "num_skipped"


class SeededSampleDataset(Dataset):
    """Wraps a map-style dataset; item ``(index, position)`` reads ``dataset[index]`` with all
    global RNGs seeded from ``sample_seed(seed, position)``.

    The caller's RNG states are saved and restored around the read, so loading data in the main
    process (``num_workers=0``) does not disturb the training process's random streams.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, position = item
        s = sample_seed(self.seed, position)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class TrainLoader:
    """Infinite iterable of training batches for this rank, resumable via ``state_dict``.

    Use one iterator at a time: ``for batch in loader`` (or ``it = iter(loader)``) continues from
    the current position; after ``load_state_dict`` start a new iterator.

    Attributes:
        batch_size: per-rank batch size (``total_batch_size / world_size``).
        batches_per_epoch: global batches per epoch.
    """

    def __init__(self, dataset: Dataset, total_batch_size: int, *, num_workers: int = 0,
                 seed: int = 0, collate_fn: Callable | None = None, drop_last: bool = True,
                 pin_memory: bool = False):
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"build_train_loader needs a map-style dataset (with __getitem__ and "
                            f"__len__), got {type(dataset).__name__}")
        self.dataset = dataset
        self.total_batch_size = int(total_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.collate_fn = collate_fn
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory)
        self._batches_yielded = 0
        probe = self._make_sampler(0)  # validates sizes / world size now, not at first batch
        self.batch_size = probe.batch_size
        self.batches_per_epoch = probe.batches_per_epoch

    def _make_sampler(self, start_batch: int) -> ResumableTrainSampler:
        return ResumableTrainSampler(len(self.dataset), self.total_batch_size, seed=self.seed,
                                     drop_last=self.drop_last, start_batch=start_batch)

    @property
    def batches_yielded(self) -> int:
        """Number of batches handed out so far (also the global batch counter)."""
        return self._batches_yielded

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._make_sampler(0).epoch_of_batch(self._batches_yielded)

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(SeededSampleDataset(self.dataset, self.seed),
                            batch_sampler=self._make_sampler(self._batches_yielded),
                            num_workers=self.num_workers, collate_fn=self.collate_fn,
                            pin_memory=self.pin_memory,
                            # a private generator: the DataLoader draws its worker base seed from
                            # it instead of consuming the caller's global torch RNG
                            generator=torch.Generator().manual_seed(self.seed))
        for batch in loader:
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position of the stream plus what defines it (checked again on load)."""
        return {"batches_yielded": self._batches_yielded, "seed": self.seed,
                "total_batch_size": self.total_batch_size, "dataset_size": len(self.dataset),
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved position.

        Raises:
            KeyError: ``batches_yielded`` is missing.
            ValueError: the saved stream was defined differently (seed, total batch size,
                dataset size or drop_last), so the position would point at other samples.
        """
        if "batches_yielded" not in state:
            raise KeyError(f"loader state has no 'batches_yielded' (keys: {sorted(state)})")
        current = self.state_dict()
        for key in ("seed", "total_batch_size", "dataset_size", "drop_last"):
            if key in state and state[key] != current[key]:
                raise ValueError(f"loader state mismatch for '{key}': checkpoint has {state[key]!r}, "
                                 f"this loader has {current[key]!r}")
        batches = int(state["batches_yielded"])
        if batches < 0:
            raise ValueError(f"loader state 'batches_yielded' must be >= 0, got {batches}")
        self._batches_yielded = batches


def build_train_loader(dataset: Dataset, total_batch_size: int, *, num_workers: int = 0,
                       seed: int = 0, collate_fn: Callable | None = None, drop_last: bool = True,
                       pin_memory: bool = False) -> TrainLoader:
    """Infinite, seeded, per-epoch reshuffled, rank-sharded and exactly resumable train loader.

    Args:
        dataset: map-style dataset returning dicts.
        total_batch_size: batch size over all ranks; must be divisible by the world size.
        num_workers: DataLoader worker processes (does not change any batch).
        seed: defines shuffling (epoch ``e`` uses ``seed + e``) and per-sample augmentation.
        collate_fn: batch collation (torch's default collate if None).
        drop_last: drop the incomplete last batch of each epoch (else batches span epochs).
        pin_memory: passed to the DataLoader.
    """
    return TrainLoader(dataset, total_batch_size, num_workers=num_workers, seed=seed,
                       collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory)


def build_test_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0,
                      collate_fn: Callable | None = None) -> "TestLoader":
    """Finite, ordered loader over this rank's contiguous shard of ``dataset``.

    An unreadable sample is dropped (never replaced by another one) and counted: see
    :class:`TestLoader`.

    Args:
        dataset: map-style dataset.
        batch_size: per-rank batch size (the last batch may be smaller; nothing is dropped).
        num_workers: DataLoader worker processes.
        collate_fn: batch collation (torch's default collate if None).
    """
    return TestLoader(dataset, batch_size, num_workers=num_workers, collate_fn=collate_fn)


# --------------------------------------------------------------------------------------------
# evaluation: unreadable samples are dropped and counted, never replaced


@dataclass(frozen=True)
class _Unreadable:
    """Stands in for a sample that could not be read (picklable: crosses worker processes)."""

    path: str
    reason: str


class _ExcludingDataset(Dataset):
    """Reads ``dataset[i]`` inside :func:`exclude_unreadable`; an unreadable sample becomes
    an :class:`_Unreadable` marker instead of another sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with exclude_unreadable():
            try:
                return self.dataset[index]
            except UnreadableSampleError as e:
                return _Unreadable(e.path, str(e))


class _CollateReadable:
    """Collates the readable samples of a batch; returns ``(batch or None, skipped paths)``."""

    def __init__(self, collate_fn: Callable | None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, samples: list[Any]) -> tuple[Any, list[str]]:
        readable = [s for s in samples if not isinstance(s, _Unreadable)]
        skipped = [s.path for s in samples if isinstance(s, _Unreadable)]
        return (self.collate_fn(readable) if readable else None), skipped


class TestLoader:
    """Finite loader over this rank's shard that drops unreadable samples and counts them.

    Each dict batch carries ``batch["num_skipped"]``: the samples dropped since the previous
    batch (a batch in which every sample was unreadable is not yielded; its count goes to a
    neighbouring batch, so the per-batch counts add up to the rank's total).

    Attributes:
        dataset: the dataset (as given).
        batch_size: per-rank batch size.
        num_skipped: unreadable samples dropped by the current / last pass on this rank.
        skipped_paths: their files.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, dataset: Dataset, batch_size: int, *, num_workers: int = 0,
                 collate_fn: Callable | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_skipped = 0
        self.skipped_paths: list[str] = []
        self._loader = DataLoader(_ExcludingDataset(dataset), batch_size=self.batch_size,
                                  sampler=InferenceSampler(len(dataset)), num_workers=num_workers,
                                  collate_fn=_CollateReadable(collate_fn), drop_last=False)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        self.num_skipped, self.skipped_paths = 0, []
        held, carry = None, 0
        # one batch is held back so that the count of a following all-unreadable batch can
        # still be added to it before the evaluator sees it
        for batch, skipped in self._loader:
            self.num_skipped += len(skipped)
            self.skipped_paths.extend(skipped)
            if batch is None:
                if isinstance(held, dict):
                    held[NUM_SKIPPED_KEY] += len(skipped)
                else:
                    carry += len(skipped)
                continue
            if held is not None:
                yield held
            if isinstance(batch, dict):
                batch[NUM_SKIPPED_KEY] = carry + len(skipped)
                carry = 0
            held = batch
        if held is not None:
            yield held
        if self.num_skipped:
            logger.warning("test loader: %d unreadable sample(s) excluded from evaluation: %s",
                           self.num_skipped, ", ".join(self.skipped_paths[:10]) +
                           (" ..." if len(self.skipped_paths) > 10 else ""))


def batch_num_skipped(batch: Any) -> int | None:
    """Unreadable samples the test loader dropped before ``batch``; None when the batch carries
    no count (it did not come from :func:`build_test_loader`).

    An evaluator sums this over its batches (and ranks) and reports it as ``num_skipped``, so
    the metric says how many samples it did not see."""
    if isinstance(batch, Mapping) and NUM_SKIPPED_KEY in batch:
        return int(batch[NUM_SKIPPED_KEY])
    return None
