"""Online curation for a training loader: a fresh balanced draw of the pool every epoch.

MetaCLIP redraws keep/drop each time a shard is read, so each epoch trains on a different
balanced subset; here the draw of a text in epoch ``k`` is ``uniform_draw(seed, shard, key,
epoch=k)`` -- the same epoch always reproduces, two epochs differ.

- :class:`OnlineCurator` decides for one text (given the pool's entry counts and ``t``).
- :class:`CuratedIterable` wraps an iterable of samples (webdataset dicts or
  ``(shard, key, text)`` tuples) and yields the kept ones of the current epoch (``set_epoch``).
- :class:`CuratedIndex` serves map-style datasets: it matches every text once and returns the
  kept indices of an epoch for a sampler.
- :class:`CuratedDrawsDataset` is a map-style dataset of ``num_draws`` consecutive epoch draws laid
  end to end, for eva_core's resumable train loader (whose sampler only sees a fixed length).
"""
from __future__ import annotations

import bisect
import itertools
import json
import os
from collections import Counter
from typing import Callable, Iterable, Iterator, Sequence

from clip.curation.balancing import entry_probabilities, keep_probability, uniform_draw
from clip.curation.metadata import Metadata
from clip.curation.passes import get_matcher, shard_id

__all__ = ["OnlineCurator", "CaptionError", "CuratedIterable", "CuratedIndex", "CuratedDrawsDataset",
           "describe_sample"]


class OnlineCurator:
    """Keep/drop decisions of one balanced draw per epoch.

    Args:
        metadata: the metadata the counts were made with.
        counts: per-entry counts over the whole pool (``PoolCounts.counts``).
        threshold: ``t``.
        seed: the draw's seed.
    """

    def __init__(self, metadata: Metadata, counts: Sequence[int], threshold: float, seed: int):
        if len(counts) != len(metadata):
            raise ValueError(f"{len(counts)} counts for {len(metadata)} metadata entries")
        self.metadata, self.threshold, self.seed = metadata, threshold, seed
        self.probabilities = entry_probabilities(counts, threshold)

    def keep_probability(self, text: str) -> float:
        """``1 - prod (1 - p_e)`` over the entries ``text`` matches."""
        return keep_probability(get_matcher(self.metadata).match(text), self.probabilities)

    def keep(self, shard: str, key: str, text: str, epoch: int) -> bool:
        """Whether the text ``key`` of ``shard`` is in epoch ``epoch``'s draw."""
        p = self.keep_probability(text)
        return p > 0.0 and uniform_draw(self.seed, shard_id(shard), key, epoch) < p


def describe_sample(sample) -> tuple[str, str, str]:
    """``(shard, key, text)`` of a sample: a tuple as is, or a webdataset dict
    (``__url__``, ``__key__`` and ``txt`` or ``json['caption']``).

    Raises:
        KeyError: a dict sample without a shard or key.
        CaptionError: no caption, or one that is not UTF-8.
    """
    if isinstance(sample, tuple):
        return sample
    for name in ("__url__", "__key__"):
        if name not in sample:
            raise KeyError(f"sample has no {name!r} (keys {sorted(sample)}); online curation needs the shard "
                           "and key to seed the draw")
    if "txt" in sample:
        text = sample["txt"]
    elif "json" in sample:
        meta = sample["json"]
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
        text = meta.get("caption")
    else:
        text = None
    if text is None:
        raise CaptionError("no_caption", f"sample {sample['__key__']} of {sample['__url__']} has no caption "
                           "(txt, or json with a caption)")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CaptionError("non_utf8", f"sample {sample['__key__']} of {sample['__url__']}: caption is "
                               f"not UTF-8 ({e.reason} at byte {e.start})") from e
    return os.fspath(sample["__url__"]), sample["__key__"], text


class CaptionError(ValueError):
    """A sample's caption is missing or not UTF-8 (a counted skip in :class:`CuratedIterable`)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class CuratedIterable:
    """Iterable of the samples of ``source`` kept in the current epoch's balanced draw.

    A sample whose caption is missing or not UTF-8 is not yielded and is counted in
    ``skipped`` (reason -> count, over the wrapper's lifetime), as MetaCLIP drops texts that
    match nothing; a sample without a shard or key is an error (the draw cannot be seeded).

    Args:
        source: an iterable (re-iterable, e.g. a list or webdataset pipeline) or a callable that
            returns a fresh iterable of samples.
        curator: the :class:`OnlineCurator`.
        describe: maps a sample to ``(shard, key, text)``.
        epoch: the starting epoch; advance it with :meth:`set_epoch`.
    """

    def __init__(self, source: Iterable | Callable[[], Iterable], curator: OnlineCurator, *,
                 describe: Callable = describe_sample, epoch: int = 0):
        self.source, self.curator, self.describe, self.epoch = source, curator, describe, epoch
        self.skipped: Counter = Counter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        samples = self.source() if callable(self.source) else self.source
        for sample in samples:
            try:
                shard, key, text = self.describe(sample)
            except CaptionError as e:
                self.skipped[e.reason] += 1
                continue
            if self.curator.keep(shard, key, text, self.epoch):
                yield sample


class CuratedIndex:
    """Kept indices per epoch for a map-style dataset; each text is matched once.

    Args:
        items: ``(shard, key, text)`` per dataset index.
        curator: the :class:`OnlineCurator`.
    """

    def __init__(self, items: Sequence[tuple[str, str, str]], curator: OnlineCurator):
        self.curator = curator
        self._ids = [(shard_id(shard), key) for shard, key, _ in items]
        self.keep_probabilities = [curator.keep_probability(text) for _, _, text in items]

    def __len__(self) -> int:
        return len(self._ids)

    def expected_kept(self) -> float:
        """Expected size of one epoch's draw: the sum of the keep probabilities."""
        return sum(self.keep_probabilities)

    def indices(self, epoch: int) -> list[int]:
        """Dataset indices kept in epoch ``epoch`` (ascending)."""
        seed = self.curator.seed
        return [i for i, ((shard, key), p) in enumerate(zip(self._ids, self.keep_probabilities))
                if p > 0.0 and uniform_draw(seed, shard, key, epoch) < p]


class CuratedDrawsDataset:
    """The balanced draws of epochs ``0 .. num_draws - 1`` of a map-style dataset, laid end to end.

    eva_core's train loader (:func:`eva_core.data.build_train_loader`) shuffles a dataset of fixed
    length and restarts it every loader epoch; this dataset gives it ``num_draws`` curation epochs at
    once, so a training run that sees ``len(self)`` samples has trained on a fresh balanced draw for
    every curation epoch, each text of a draw exactly once, in an order the loader shuffles (and
    resumes) as usual. Item ``i`` is a pure function of ``i``: workers and resumed runs agree.

    Args:
        dataset: the raw pool (map-style; item ``j`` is the text ``items[j]`` of ``index``).
        index: the pool's :class:`CuratedIndex` (same order as ``dataset``).
        num_draws: curation epochs to lay end to end.

    Raises:
        ValueError: the index and the dataset differ in length, ``num_draws < 1``, or a draw keeps
            nothing (a threshold too small for the pool).
    """

    def __init__(self, dataset, index: CuratedIndex, num_draws: int):
        if len(index) != len(dataset):
            raise ValueError(f"CuratedDrawsDataset: curation index of {len(index)} texts for a dataset of "
                             f"{len(dataset)} samples; build the index from the same samples, in order")
        if num_draws < 1:
            raise ValueError(f"CuratedDrawsDataset: num_draws must be >= 1, got {num_draws}")
        self.dataset, self.index = dataset, index
        self.draws = [index.indices(epoch) for epoch in range(num_draws)]
        empty = [e for e, kept in enumerate(self.draws) if not kept]
        if empty:
            raise ValueError(f"CuratedDrawsDataset: the draw of epoch(s) {empty[:5]} keeps no sample of "
                             f"{len(dataset)} (threshold too small?)")
        self._starts = [0, *itertools.accumulate(len(kept) for kept in self.draws)]

    def __len__(self) -> int:
        return self._starts[-1]

    def source_index(self, i: int) -> int:
        """The raw pool's index behind item ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"CuratedDrawsDataset index {i} out of range [0, {len(self)})")
        epoch = bisect.bisect_right(self._starts, i) - 1
        return self.draws[epoch][i - self._starts[epoch]]

    def __getitem__(self, i: int):
        return self.dataset[self.source_index(i)]
