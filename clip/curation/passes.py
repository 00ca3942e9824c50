"""The two passes over a pool of shards: count, then balance.

Each pass is a plain per-shard function (:func:`count_shard`, :func:`balance_shard`) whose
results merge, so a pool of any size is just more shards: :func:`count_pool` /
:func:`balance_pool` map them with an executor: a local process pool (``executor="process"``,
``workers`` processes), Ray tasks on a cluster (``executor="ray"``: one ``ray.remote`` task of the
same per-shard function per shard; ray is imported only then), or any callable
``executor(fn, shards) -> results in shard order``. Every executor's results merge the same way.

A shard's identity in the seeded draw is its file name (``os.path.basename``), so workers that
mount the pool at different paths still agree; the names in one pool must therefore be unique.
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence, Union

from clip.curation.balancing import entry_probabilities, keep_text
from clip.curation.matching import SubstringMatcher
from clip.curation.metadata import Metadata
from clip.curation.shards import ShardError, ShardSkips, iter_shard_texts

__all__ = ["ShardCounts", "ShardBalance", "PoolCounts", "CountsFileError", "shard_id", "get_matcher",
           "count_shard", "balance_shard", "merge_counts", "count_pool", "balance_pool",
           "curated_list_path", "Executor", "map_shards"]

_MATCHERS: dict[str, SubstringMatcher] = {}


class CountsFileError(ValueError):
    """A counts file does not belong to the given metadata or cannot be read."""


def shard_id(path: str | os.PathLike) -> str:
    """The shard's identity in the seeded draw: its file name."""
    return os.path.basename(os.fspath(path))


def get_matcher(metadata: Metadata) -> SubstringMatcher:
    """The process's matcher for ``metadata`` (built once per process, keyed by content)."""
    key = metadata.fingerprint
    if key not in _MATCHERS:
        _MATCHERS.clear()  # one metadata at a time: a 500k-entry automaton is large
        _MATCHERS[key] = SubstringMatcher(metadata.entries)
    return _MATCHERS[key]


@dataclass
class ShardCounts:
    """Result of the count pass on one shard."""

    shard: str
    num_texts: int = 0
    num_matched: int = 0
    num_matches: int = 0
    entry_counts: dict[int, int] = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class ShardBalance:
    """Result of the balance pass on one shard."""

    shard: str
    num_texts: int = 0
    num_matched: int = 0
    num_kept: int = 0
    kept_entry_counts: dict[int, int] = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    output: str | None = None
    error: str | None = None


def count_shard(shard: str, metadata: Metadata, *, text_field: str | None = None,
                skip_bad_shard: bool = False) -> ShardCounts:
    """Count, for one shard, how many texts match each entry (an entry once per text).

    Args:
        shard: shard file (see :mod:`clip.curation.shards`).
        metadata: the validated metadata.
        text_field: caption field/column name.
        skip_bad_shard: record an unreadable shard in ``error`` instead of raising.

    Raises:
        ShardError: the shard cannot be read and ``skip_bad_shard`` is False.
    """
    matcher = get_matcher(metadata)
    result, skips, counts = ShardCounts(shard=os.fspath(shard)), ShardSkips(), Counter()
    try:
        for _, text in iter_shard_texts(shard, skips, text_field=text_field):
            result.num_texts += 1
            ids = matcher.match(text)
            if ids:
                result.num_matched += 1
                result.num_matches += len(ids)
                counts.update(ids)
    except ShardError as e:
        if not skip_bad_shard:
            raise
        return ShardCounts(shard=os.fspath(shard), error=str(e))
    result.entry_counts = dict(counts)
    result.skipped = skips.as_dict()
    return result


@dataclass
class PoolCounts:
    """Merged count pass: per-entry counts over the whole pool plus per-shard statistics."""

    metadata_fingerprint: str
    counts: list[int]
    shards: list[dict]

    @property
    def totals(self) -> dict:
        t = Counter()
        for s in self.shards:
            t["shards"] += 1
            t["shards_failed"] += s["error"] is not None
            t["texts"] += s["num_texts"]
            t["matched"] += s["num_matched"]
            t["matches"] += s["num_matches"]
            t["skipped"] += sum(s["skipped"].get("counts", {}).values())
        return dict(t)

    def save(self, path: str | os.PathLike, metadata: Metadata) -> None:
        """Write the counts file (nonzero counts keyed by entry string, shard stats, totals)."""
        data = {"metadata": metadata.source, "metadata_fingerprint": self.metadata_fingerprint,
                "num_entries": len(self.counts), "duplicates_merged": metadata.duplicates_merged,
                "never_matching": len(metadata.never_matching), "totals": self.totals,
                "entry_counts": {metadata.entries[i]: c for i, c in enumerate(self.counts) if c},
                "shards": [{k: v for k, v in s.items() if k != "entry_counts"} for s in self.shards]}
        _write_json(data, path)

    @classmethod
    def load(cls, path: str | os.PathLike, metadata: Metadata) -> "PoolCounts":
        """Read a counts file written by :meth:`save` for the same metadata.

        Raises:
            CountsFileError: unreadable file, or counts made with other metadata.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise CountsFileError(f"counts file {path}: cannot read: {e}") from e
        if data.get("metadata_fingerprint") != metadata.fingerprint:
            raise CountsFileError(f"counts file {path} was made with other metadata ({data.get('metadata')}, "
                                  f"fingerprint {data.get('metadata_fingerprint')}); {metadata.source} has "
                                  f"{metadata.fingerprint}")
        index = {e: i for i, e in enumerate(metadata.entries)}
        counts = [0] * len(metadata)
        for entry, c in data["entry_counts"].items():
            counts[index[entry]] = int(c)
        return cls(metadata.fingerprint, counts, data["shards"])


def merge_counts(results: Sequence[ShardCounts], metadata: Metadata) -> PoolCounts:
    """Sum per-shard counts into pool counts (order-independent)."""
    counts = [0] * len(metadata)
    for r in results:
        for entry_id, c in r.entry_counts.items():
            counts[int(entry_id)] += c
    return PoolCounts(metadata.fingerprint, counts, [asdict(r) for r in results])


def curated_list_path(output_dir: str | os.PathLike, shard: str) -> str:
    """Where the curated list of ``shard`` goes: ``<output_dir>/curated/<shard name>.jsonl``."""
    return os.path.join(os.fspath(output_dir), "curated", shard_id(shard) + ".jsonl")


def balance_shard(shard: str, metadata: Metadata, probabilities: Sequence[float], *, seed: int,
                  epoch: int | None = None, output_dir: str | os.PathLike | None = None,
                  text_field: str | None = None, skip_bad_shard: bool = False) -> ShardBalance:
    """Keep or drop each text of one shard by the seeded MetaCLIP draw.

    Args:
        shard: shard file.
        metadata: the metadata the probabilities belong to.
        probabilities: ``p_e`` per entry (:func:`entry_probabilities` of the pool counts).
        seed, epoch: the draw's seed (``epoch`` None for offline curation).
        output_dir: if given, the kept samples are written to :func:`curated_list_path` as jsonl
            (``key``, ``text``, ``entries`` matched).
        text_field: caption field/column name.
        skip_bad_shard: record an unreadable shard in ``error`` instead of raising.
    """
    matcher = get_matcher(metadata)
    result, skips, kept_counts = ShardBalance(shard=os.fspath(shard)), ShardSkips(), Counter()
    name = shard_id(shard)
    kept_lines = []
    try:
        for key, text in iter_shard_texts(shard, skips, text_field=text_field):
            result.num_texts += 1
            ids = matcher.match(text)
            result.num_matched += bool(ids)
            if keep_text(ids, probabilities, seed=seed, shard=name, key=key, epoch=epoch):
                result.num_kept += 1
                kept_counts.update(ids)
                kept_lines.append(json.dumps({"key": key, "text": text,
                                              "entries": [metadata.entries[i] for i in ids]},
                                             ensure_ascii=False))
    except ShardError as e:
        if not skip_bad_shard:
            raise
        return ShardBalance(shard=os.fspath(shard), error=str(e))
    result.kept_entry_counts = dict(kept_counts)
    result.skipped = skips.as_dict()
    if output_dir is not None:
        result.output = curated_list_path(output_dir, shard)
        os.makedirs(os.path.dirname(result.output), exist_ok=True)
        tmp = result.output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in kept_lines)
        os.replace(tmp, result.output)
    return result


def _check_unique_names(shards: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for s in shards:
        name = shard_id(s)
        if name in seen:
            raise ValueError(f"two shards share the file name {name!r} ({seen[name]} and {s}); the name is "
                             "the shard's identity in the seeded draw, so names must be unique in a pool")
        seen[name] = s


Executor = Union[str, Callable[[Callable, Sequence[str]], list]]
"""``"process"``, ``"ray"`` or a callable ``executor(fn, shards)`` returning ``[fn(s) for s in shards]``."""


def _map_process(fn: Callable, shards: Sequence[str], workers: int) -> list:
    if workers <= 1 or len(shards) <= 1:
        return [fn(s) for s in shards]
    with ProcessPoolExecutor(max_workers=min(workers, len(shards))) as pool:
        return list(pool.map(fn, shards))


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("executor='ray' needs the ray package, which cannot be imported "
                          f"({e}); install it (pip install ray==2.60.0, see requirements.txt) or use "
                          "executor='process'") from e
    return ray


def _run_shard(fn: Callable, shard: str):
    return fn(shard)


def _map_ray(fn: Callable, shards: Sequence[str], address: str | None) -> list:
    """One Ray task per shard running ``fn``; results in shard order.

    Uses the caller's Ray session when one is initialised in this process, else joins the cluster
    at ``address`` (``"auto"``: the one this machine belongs to) when given, else starts a local
    instance for this call only. A session this function did not start is never shut down.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
            started = True
    try:
        # the partial carries the metadata (up to ~500k entries): put it in the object store once
        # instead of pickling it into every task
        fn_ref = ray.put(fn)
        task = ray.remote(num_cpus=1)(_run_shard)
        return ray.get([task.remote(fn_ref, s) for s in shards])
    finally:
        if started:
            ray.shutdown()


def map_shards(fn: Callable, shards: Sequence[str], *, executor: Executor = "process", workers: int = 1,
               ray_address: str | None = None) -> list:
    """``[fn(s) for s in shards]`` on the chosen executor, in shard order.

    Args:
        fn: a picklable per-shard function (a :func:`functools.partial` of :func:`count_shard` or
            :func:`balance_shard`).
        shards: shard paths, as every worker sees them.
        executor: ``"process"`` (``workers`` local processes; 1 = in this process), ``"ray"`` (one
            Ray task per shard; ``workers`` is not used, the cluster's CPUs bound the parallelism),
            or a callable ``executor(fn, shards)``.
        workers: process count for ``"process"``.
        ray_address: Ray cluster address for ``"ray"`` (``"auto"``, ``"ray://host:10001"``, ...).

    Raises:
        ValueError: unknown executor name, or a ``ray_address`` without ``executor="ray"``.
        ImportError: ``executor="ray"`` and ray cannot be imported.
    """
    if ray_address is not None and executor != "ray":
        raise ValueError(f"ray_address={ray_address!r} is only used with executor='ray', "
                         f"got executor={executor!r}")
    if callable(executor):
        results = list(executor(fn, shards))
        if len(results) != len(shards):
            raise ValueError(f"executor {executor!r} returned {len(results)} results for "
                             f"{len(shards)} shards")
        return results
    if executor == "process":
        return _map_process(fn, shards, workers)
    if executor == "ray":
        return _map_ray(fn, shards, ray_address)
    raise ValueError(f"unknown executor {executor!r}: expected 'process', 'ray' or a callable(fn, shards)")


def count_pool(shards: Sequence[str], metadata: Metadata, *, workers: int = 1, text_field: str | None = None,
               skip_bad_shards: bool = False, executor: Executor = "process",
               ray_address: str | None = None) -> PoolCounts:
    """Count pass over a pool: :func:`count_shard` per shard, merged.

    The shards are mapped by :func:`map_shards` (``executor``, ``workers``, ``ray_address``).
    """
    shards = [os.fspath(s) for s in shards]
    if not shards:
        raise ValueError("no shards given")
    _check_unique_names(shards)
    fn = functools.partial(count_shard, metadata=metadata, text_field=text_field,
                           skip_bad_shard=skip_bad_shards)
    return merge_counts(map_shards(fn, shards, executor=executor, workers=workers, ray_address=ray_address),
                        metadata)


def balance_pool(shards: Sequence[str], metadata: Metadata, counts: PoolCounts, threshold: float, *,
                 seed: int, output_dir: str | os.PathLike, workers: int = 1, text_field: str | None = None,
                 skip_bad_shards: bool = False, executor: Executor = "process",
                 ray_address: str | None = None) -> dict:
    """Balance pass over a pool: curated lists per shard plus ``summary.json`` in ``output_dir``.

    The shards are mapped by :func:`map_shards` (``executor``, ``workers``, ``ray_address``); on a
    cluster ``output_dir`` must be a path every worker writes to (a shared file system).

    Returns:
        The summary (also written to ``<output_dir>/summary.json``): threshold, seed, totals,
        per-shard statistics and skips, and per entry its count and kept texts.
    """
    shards = [os.fspath(s) for s in shards]
    if not shards:
        raise ValueError("no shards given")
    if counts.metadata_fingerprint != metadata.fingerprint:
        raise CountsFileError("the counts were made with other metadata")
    _check_unique_names(shards)
    probs = entry_probabilities(counts.counts, threshold)
    fn = functools.partial(balance_shard, metadata=metadata, probabilities=probs, seed=seed,
                           output_dir=output_dir, text_field=text_field, skip_bad_shard=skip_bad_shards)
    results = map_shards(fn, shards, executor=executor, workers=workers, ray_address=ray_address)
    kept = [0] * len(metadata)
    for r in results:
        for entry_id, c in r.kept_entry_counts.items():
            kept[entry_id] += c
    totals = Counter()
    for r in results:
        totals["shards"] += 1
        totals["shards_failed"] += r.error is not None
        totals["texts"] += r.num_texts
        totals["matched"] += r.num_matched
        totals["kept"] += r.num_kept
        totals["skipped"] += sum(r.skipped.get("counts", {}).values())
    summary = {
        "metadata": metadata.source, "metadata_fingerprint": metadata.fingerprint,
        "num_entries": len(metadata),
        "duplicates_merged": metadata.duplicates_merged, "never_matching": len(metadata.never_matching),
        "threshold": threshold, "seed": seed, "totals": dict(totals),
        "entries": {metadata.entries[i]: {"count": c, "p": probs[i], "kept": kept[i]}
                    for i, c in enumerate(counts.counts) if c},
        "shards": [{k: v for k, v in asdict(r).items() if k != "kept_entry_counts"} for r in results],
    }
    _write_json(summary, os.path.join(os.fspath(output_dir), "summary.json"))
    return summary


def _write_json(data: dict, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
