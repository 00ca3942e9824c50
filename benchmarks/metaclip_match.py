#!/usr/bin/env python
"""MetaCLIP sub-string matching throughput: texts matched per second against a metadata list.

    python benchmarks/metaclip_match.py                     # 500k entries, CPU, one process
    python benchmarks/metaclip_match.py --entries 50000 --texts 2000 --naive-texts 20

The metadata is synthetic and the size of MetaCLIP's (500,000 entries by default): pseudo-words
from a fixed seeded vocabulary as unigrams (50%), bigrams (35%) and trigrams (15%), roughly the
mix of the published list (WordNet / Wikipedia unigrams, bigrams, titles). Two text sets:

- ``synthetic``: 8-20 vocabulary words drawn with Zipf frequencies, glued by stop words and
  punctuation (many matches per text, as alt-texts of a web pool have);
- ``captions``: toy-world captions ("a red circle and a blue square") with some entries of the
  metadata around them.

Both matchers run in the same process on the same texts: the naive definition
(``match_naive``: one substring test per entry) and the Aho-Corasick matcher
(``SubstringMatcher``). The naive path costs ~(number of entries) per text, so it is timed on a
subset (``--naive-texts``) and its per-text cost is extrapolated; the output says so. Results of
the two are checked to be identical on that subset.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import time

from clip.curation import SubstringMatcher, match_naive
from eva_core.data.toy_world import COLORS, SHAPES

STOP_WORDS = ["a", "the", "of", "and", "in", "on", "with", "for", "at", "by", "photo", "image"]
PUNCTUATION = [" ", " ", " ", " ", ", ", ". ", "! ", "? ", ": ", " - "]


def make_vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "er", "in", "or", "us"]
    words: dict[str, None] = {}
    while len(words) < size:
        word = "".join(rng.choices(syllables, k=rng.randint(2, 4)))
        words[word.capitalize() if rng.random() < 0.1 else word] = None
    return list(words)


def make_metadata(num_entries: int, vocab: list[str], rng: random.Random) -> list[str]:
    entries: dict[str, None] = dict.fromkeys(vocab[: num_entries // 2])
    while len(entries) < num_entries:
        n = 2 if rng.random() < 0.7 else 3
        entries[" ".join(rng.choices(vocab[:50000], k=n))] = None
    return list(entries)


def zipf_sampler(vocab: list[str], rng: random.Random):
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    return lambda k: rng.choices(vocab, cum_weights=cumulative, k=k)


def synthetic_texts(n: int, vocab: list[str], rng: random.Random) -> list[str]:
    draw = zipf_sampler(vocab, rng)
    texts = []
    for _ in range(n):
        parts = []
        for word in draw(rng.randint(8, 20)):
            stop = rng.choice(STOP_WORDS) + " " if rng.random() < 0.3 else ""
            parts += [stop, word, rng.choice(PUNCTUATION)]
        texts.append("".join(parts).strip())
    return texts


def caption_texts(n: int, metadata: list[str], rng: random.Random) -> list[str]:
    texts = []
    for _ in range(n):
        shapes = [f"a {rng.choice(list(COLORS))} {rng.choice(SHAPES)}" for _ in range(rng.randint(1, 3))]
        extra = rng.sample(metadata, 2)
        texts.append(f"{' and '.join(shapes)} next to the {extra[0]}, drawn by {extra[1]}.")
    return texts


def time_matcher(fn, texts: list[str]) -> tuple[float, list]:
    start = time.perf_counter()
    results = [fn(t) for t in texts]
    return time.perf_counter() - start, results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--vocab", type=int, default=300_000)
    parser.add_argument("--texts", type=int, default=20_000, help="texts per set for Aho-Corasick")
    parser.add_argument("--naive-texts", type=int, default=30, help="texts per set for the naive path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    vocab = make_vocabulary(max(args.vocab, args.entries // 2), rng)
    metadata = make_metadata(args.entries, vocab, rng)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    matcher = SubstringMatcher(metadata)
    build_s = time.perf_counter() - start
    print(f"metadata: {len(metadata)} entries; Aho-Corasick automaton built in {build_s:.2f} s; "
          f"max RSS {rss_before:.0f} -> {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    report = {"entries": len(metadata), "automaton_build_s": round(build_s, 3), "sets": {}}
    for name, texts in (("synthetic", synthetic_texts(args.texts, vocab, rng)),
                        ("captions", caption_texts(args.texts, metadata, rng))):
        ac_s, ac_results = time_matcher(matcher.match, texts)
        subset = texts[: args.naive_texts]
        naive_s, naive_results = time_matcher(lambda t: match_naive(t, metadata), subset)
        if naive_results != ac_results[: len(subset)]:
            raise SystemExit(f"{name}: Aho-Corasick and naive results differ")
        ac_rate, naive_rate = len(texts) / ac_s, len(subset) / naive_s
        matches = sum(len(r) for r in ac_results) / len(texts)
        report["sets"][name] = {"aho_corasick_texts_per_s": round(ac_rate, 1),
                                "naive_texts_per_s": round(naive_rate, 2),
                                "speedup": round(ac_rate / naive_rate),
                                "mean_matches_per_text": round(matches, 2), "aho_corasick_texts": len(texts),
                                "naive_texts_timed": len(subset)}
        print(f"{name:>9}: Aho-Corasick {ac_rate:10.1f} texts/s ({len(texts)} texts) | naive "
              f"{naive_rate:8.2f} texts/s (timed on {len(subset)} texts, per-text cost extrapolated) | "
              f"ratio {ac_rate / naive_rate:.0f}x"
              f" | {matches:.2f} matches/text; results identical on the timed subset")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
