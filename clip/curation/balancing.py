"""MetaCLIP balancing: per-entry sampling probabilities and the seeded keep/drop draw.

``p_e = min(1, t / count_e)``; a text matching entries ``E`` is kept with probability
``1 - prod_{e in E} (1 - p_e)`` (independent trials per entry, not the max or the sum); a text
matching nothing is dropped. The draw is a pure function of ``(seed, epoch, shard, key)``, so
every worker (and every rerun) takes the same decision for the same text.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

__all__ = ["entry_probabilities", "keep_probability", "uniform_draw", "keep_text"]


def entry_probabilities(counts: Sequence[int], threshold: float) -> list[float]:
    """``p_e = min(1, t / count_e)`` per entry (1.0 for an entry never matched: it has no texts).

    Raises:
        ValueError: a non-positive threshold or a negative count.
    """
    if not threshold > 0:
        raise ValueError(f"threshold t must be > 0, got {threshold!r}")
    probs = []
    for entry_id, count in enumerate(counts):
        if count < 0:
            raise ValueError(f"entry {entry_id}: negative count {count}")
        probs.append(1.0 if count <= threshold else threshold / count)
    return probs


def keep_probability(entry_ids: Sequence[int], probabilities: Sequence[float]) -> float:
    """``1 - prod_e (1 - p_e)`` over the matched entries; 0 for a text that matches nothing."""
    if not entry_ids:
        return 0.0
    return 1.0 - math.prod(1.0 - probabilities[e] for e in entry_ids)


def uniform_draw(seed: int, shard: str, key: str, epoch: int | None = None) -> float:
    """A uniform number in [0, 1) fixed by ``(seed, epoch, shard, key)`` (blake2b, 53 bits)."""
    message = json.dumps([int(seed), epoch, shard, key], ensure_ascii=False).encode("utf-8", "surrogatepass")
    value = int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big")
    return (value >> 11) / float(1 << 53)


def keep_text(entry_ids: Sequence[int], probabilities: Sequence[float], *, seed: int, shard: str, key: str,
              epoch: int | None = None) -> bool:
    """The keep/drop decision for one text: ``uniform_draw < keep_probability``."""
    p = keep_probability(entry_ids, probabilities)
    return p > 0.0 and uniform_draw(seed, shard, key, epoch) < p
