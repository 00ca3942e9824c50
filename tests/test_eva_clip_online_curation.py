"""MetaCLIP online curation in the train loader (issue 11, Deliver 4; docs/recipes/clip.md#online-curation).

``clip.data.online_curated_captions`` runs the count pass over a caption webdataset and lays the
balanced draws of consecutive curation epochs end to end (``CuratedDrawsDataset``), so that eva_core's
resumable train loader trains on a fresh balanced draw per curation epoch.
"""
from __future__ import annotations

import collections
import os

import pytest

from clip.curation.balancing import entry_probabilities, keep_probability
from clip.curation.metadata import load_metadata
from clip.curation.online import CuratedDrawsDataset, CuratedIndex, OnlineCurator
from clip.curation.passes import get_matcher
from clip.data import CaptionWebDataset, online_curated_captions
from clip.model import get_tokenizer
from clip.toy_stage import make_long_tailed_captions
from eva_core.data import build_train_loader, build_transform
from eva_core.data.toy_world import COLORS, SHAPES

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HEAD, TAIL = list(COLORS)[:2], list(COLORS)[2:4]
COUNTS = {**{c: 60 for c in HEAD}, **{c: 2 for c in TAIL}}
METADATA = [*COLORS, *SHAPES]
THRESHOLD = 4.0


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    shards = make_long_tailed_captions(tmp_path_factory.mktemp("long_tail"), COUNTS, img_size=16, seed=0,
                                       shard_size=50)
    return CaptionWebDataset(shards)


def _colour(caption: str) -> str:
    return caption.split()[1]


def test_long_tailed_pool_has_the_requested_colour_counts_in_shards(pool):
    assert len(pool.shards) == 3  # 124 samples, 50 per shard
    assert collections.Counter(_colour(pool.read_caption(i)) for i in range(len(pool))) == COUNTS


def test_online_draws_follow_metaclip_probabilities_and_differ_per_epoch(pool):
    data = online_curated_captions(pool, METADATA, THRESHOLD, num_draws=40, seed=3)
    assert isinstance(data, CuratedDrawsDataset) and len(data.draws) == 40
    assert len(data) == sum(len(kept) for kept in data.draws)
    # items run through the draws in order: item i is the pool sample of its epoch's draw
    flat = [i for kept in data.draws for i in kept]
    assert [data.source_index(i) for i in range(len(data))] == flat
    assert data[5]["caption"] == pool[flat[5]]["caption"]
    # a fresh draw each epoch, the same draw for the same seed and epoch
    assert data.draws[0] != data.draws[1]
    assert online_curated_captions(pool, METADATA, THRESHOLD, num_draws=2, seed=3).draws == data.draws[:2]
    # tail colours (count 2 <= t) are in every draw; head ones at their MetaCLIP keep probability
    meta = load_metadata(METADATA)
    counts = [sum(1 for i in range(len(pool)) if e in get_matcher(meta).match(pool.read_caption(i)))
              for e in range(len(meta))]
    probabilities = entry_probabilities(counts, THRESHOLD)
    per_epoch = collections.Counter(_colour(pool.read_caption(i)) for i in flat)
    for colour in TAIL:
        assert per_epoch[colour] == 40 * COUNTS[colour]
    for colour in HEAD:
        expected = 40 * sum(keep_probability(get_matcher(meta).match(pool.read_caption(i)), probabilities)
                            for i in range(len(pool)) if _colour(pool.read_caption(i)) == colour)
        sd = expected ** 0.5
        assert abs(per_epoch[colour] - expected) < 4 * sd, (colour, per_epoch[colour], expected)
        assert per_epoch[colour] < 0.3 * 40 * COUNTS[colour]  # balancing removed most of the head


def test_train_loader_over_online_draws_is_seeded_and_resumes_exactly(pool):
    data = CaptionWebDataset(pool.shards, build_transform(is_train=True, img_size=16), get_tokenizer(24))

    def loader():
        return build_train_loader(online_curated_captions(data, METADATA, THRESHOLD, num_draws=5, seed=0),
                                  total_batch_size=8, seed=1)

    it = iter(loader())
    uninterrupted = [next(it)["caption"] for _ in range(12)]
    first = loader()
    it = iter(first)
    for _ in range(4):
        next(it)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    it = iter(resumed)
    assert [next(it)["caption"] for _ in range(8)] == uninterrupted[4:]


def test_bad_curation_settings_are_refused_with_the_reason(pool):
    meta = load_metadata(METADATA)
    index = CuratedIndex([("pool-000000.tar", f"{i:06d}", pool.read_caption(i)) for i in range(len(pool))],
                         OnlineCurator(meta, [1] * len(meta), THRESHOLD, seed=0))
    with pytest.raises(ValueError, match="num_draws must be >= 1"):
        CuratedDrawsDataset(pool, index, 0)
    with pytest.raises(ValueError, match="curation index of 3 texts for a dataset of 124"):
        CuratedDrawsDataset(pool, CuratedIndex([("a.tar", "k", "a red circle")] * 3, index.curator), 1)
    with pytest.raises(ValueError, match="keeps no sample"):
        online_curated_captions(pool, ["gold"], THRESHOLD, num_draws=1)
    with pytest.raises(IndexError, match="out of range"):
        CuratedDrawsDataset(pool, index, 1).source_index(10_000)
