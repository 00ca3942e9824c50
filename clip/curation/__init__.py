"""MetaCLIP data curation (REFERENCE: docs/recipes/clip.md, "MetaCLIP curation").

Metadata entries are matched as whole, case-sensitive sub-strings of normalised texts; a count
pass over a pool of shards gives each entry's count; balancing keeps a text with probability
``1 - prod_e (1 - min(1, t / count_e))`` over its matched entries. Offline curation writes
curated lists per shard plus a summary; online curation redraws the balanced subset each epoch.
"""
from clip.curation.balancing import entry_probabilities, keep_probability, keep_text, uniform_draw
from clip.curation.matching import SubstringMatcher, match_naive, normalize_text, pad_entry
from clip.curation.metadata import Metadata, MetadataError, can_ever_match, load_metadata
from clip.curation.online import CaptionError, CuratedIndex, CuratedIterable, OnlineCurator, describe_sample
from clip.curation.passes import (CountsFileError, PoolCounts, ShardBalance, ShardCounts, balance_pool,
                                  balance_shard, count_pool, count_shard, curated_list_path, get_matcher,
                                  merge_counts, shard_id)
from clip.curation.shards import SHARD_EXTENSIONS, ShardError, ShardSkips, iter_shard_texts

__all__ = ["entry_probabilities", "keep_probability", "keep_text", "uniform_draw", "SubstringMatcher",
           "match_naive", "normalize_text", "pad_entry", "Metadata", "MetadataError", "can_ever_match",
           "load_metadata", "CaptionError", "CuratedIndex", "CuratedIterable", "OnlineCurator",
           "describe_sample",
           "CountsFileError", "PoolCounts", "ShardBalance", "ShardCounts", "balance_pool", "balance_shard",
           "count_pool", "count_shard", "curated_list_path", "get_matcher", "merge_counts", "shard_id",
           "SHARD_EXTENSIONS", "ShardError", "ShardSkips", "iter_shard_texts"]
