"""Specification of MetaCLIP curation (clip/curation, tools/metaclip_curate.py): matching equals the
published definition, counts merge over shards, balancing follows 1 - prod(1 - p_e), bad input is an
error or a counted skip, and online curation redraws a balanced subset each epoch."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import tarfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from clip.curation import (CountsFileError, CuratedIndex, CuratedIterable, Metadata, MetadataError,
                           OnlineCurator, PoolCounts, ShardError, ShardSkips, SubstringMatcher, balance_pool,
                           can_ever_match, count_pool, count_shard, curated_list_path, entry_probabilities,
                           iter_shard_texts, keep_probability, load_metadata, match_naive, merge_counts,
                           normalize_text, uniform_draw)
from eva_core.data.toy_world import COLORS, SHAPES, generate_toy_world


def quiet_metadata(entries) -> Metadata:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_metadata(list(entries))


def write_tar(path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def write_csv(path, captions, column="caption") -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", column])
        writer.writerows((f"images/{i:06d}.jpg", c) for i, c in enumerate(captions))
    return str(path)


def read_all(path, **kwargs) -> tuple[list[tuple[str, str]], ShardSkips]:
    skips = ShardSkips()
    return list(iter_shard_texts(path, skips, **kwargs)), skips


# ----------------------------------------------------------------------------- matching
def test_normalize_text_pads_spaces_out_the_published_punctuation_and_turns_tabs_newlines_to_spaces():
    assert normalize_text("a,b.c;d:e?f!g`h") == " a , b . c ; d : e ? f ! g ` h "
    assert normalize_text("x\ty\nz\rw") == " x y z w "
    # other punctuation (quotes, dashes, brackets) is left glued, as in the published code
    assert normalize_text("'cat' (dog) well-known") == " 'cat' (dog) well-known "


def test_matching_is_case_sensitive_whole_words_and_counts_an_entry_once_per_text():
    entries = ["cat", "Cat", "black cat", "at", "cat sat", "sat", "mat.", "new york", "York"]
    text = "The black cat sat on the mat. A cat, a Cat!"
    expected = [0, 1, 2, 4, 5]  # "at" is inside a word, "mat." can never match, "new york" is absent
    assert match_naive(text, entries) == expected
    assert SubstringMatcher(entries).match(text) == expected
    assert match_naive("New York", entries) == [8] == SubstringMatcher(entries).match("New York")


HAND_MADE_ENTRIES = ["a", "a b", "a b c", "b c", "b", "c d", "ab", "héllo", "wörld", "héllo wörld",
                     "日本", "日本 語", "🙂", "x 🙂", "?", "foo ?", "e.g", "1", "1 2 1", "2 1 2",
                     "New York", "York City", "New York City", "a a", "a a a"]
HAND_MADE_TEXTS = ["a b c d", "ab c", "a b, c d.", "héllo wörld!", "héllo\twörld", "日本 語 日本語",
                   "x 🙂🙂 x 🙂", "what?", "foo? bar", "e.g. this", "1 2 1 2 1", "New York City.",
                   "new york city", "a a a a", "", "   ", "a\nb\rc", "`a`", "b;c d:a!"]


def test_aho_corasick_matcher_equals_the_naive_definition_on_hand_made_texts():
    matcher = SubstringMatcher(HAND_MADE_ENTRIES)
    for text in HAND_MADE_TEXTS:
        assert matcher.match(text) == match_naive(text, HAND_MADE_ENTRIES), text
    # overlapping matches all count and prefixes of longer entries still match
    assert ([HAND_MADE_ENTRIES[i] for i in matcher.match("a b c d")]
            == ["a", "a b", "a b c", "b c", "b", "c d"])
    assert [HAND_MADE_ENTRIES[i] for i in matcher.match("1 2 1 2 1")] == ["1", "1 2 1", "2 1 2"]


def test_aho_corasick_matcher_equals_the_naive_definition_on_random_texts():
    rng = random.Random(0)
    vocab = ["a", "b", "ab", "Ab", "é", "日本", "🙂", "x", "xx", "1"]
    seps = [" ", " ", " ", "  ", ",", ".", ";", ":", "?", "!", "`", "\t", "\n", "-", "'", ""]
    entries = list(dict.fromkeys(" ".join(rng.choices(vocab, k=rng.randint(1, 3))) for _ in range(120)))
    entries += ["a,", "b .", ". a", "?"]  # punctuation inside entries
    matcher = SubstringMatcher(entries)
    total = 0
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(0, 12)):
            parts += [rng.choice(vocab), rng.choice(seps)]
        text = "".join(parts)
        naive = match_naive(text, entries)
        assert matcher.match(text) == naive, repr(text)
        total += len(naive)
    assert total > 3000  # the random texts do exercise many (overlapping) matches


def test_entries_that_can_never_match_are_detected_and_indeed_never_match():
    assert can_ever_match("New York") and can_ever_match("?") and can_ever_match("foo ? bar")
    assert not can_ever_match("U.S.") and not can_ever_match("e.g") and not can_ever_match("a\tb")
    rng = random.Random(1)
    never = ["U.S.", "e.g", "a,b", "a\tb", "x!"]
    for _ in range(500):
        text = "".join(rng.choice(["U", "S", ".", "e", "g", "a", "b", ",", "\t", "x", "!", " "])
                       for _ in range(rng.randint(0, 15)))
        assert match_naive(text, never) == []


# ----------------------------------------------------------------------------- metadata
def test_metadata_refuses_an_empty_list_non_strings_blank_entries_and_bad_files(tmp_path):
    with pytest.raises(MetadataError, match="empty"):
        load_metadata([])
    with pytest.raises(MetadataError, match=r"entry 1 is int 3"):
        load_metadata(["cat", 3])
    with pytest.raises(MetadataError, match="entry 0 is empty or blank"):
        load_metadata(["  "])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(MetadataError, match="empty.json.*empty"):
        load_metadata(tmp_path / "empty.json")
    (tmp_path / "dict.json").write_text('{"a": 1}')
    with pytest.raises(MetadataError, match="expected a JSON list of strings, got dict"):
        load_metadata(tmp_path / "dict.json")
    (tmp_path / "bad.json").write_bytes(b'["caf\xe9"]')
    with pytest.raises(MetadataError, match="bad.json: not UTF-8"):
        load_metadata(tmp_path / "bad.json")
    with pytest.raises(MetadataError, match="missing.json: cannot read"):
        load_metadata(tmp_path / "missing.json")


def test_metadata_merges_duplicates_into_the_first_occurrence_with_a_warning(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["cat", "dog", "cat", "U.S.", "dog"]))
    with pytest.warns(UserWarning) as record:
        meta = load_metadata(tmp_path / "m.json")
    assert meta.entries == ("cat", "dog", "U.S.") and meta.duplicates_merged == 2
    assert meta.never_matching == ("U.S.",)
    assert any("2 duplicate entries merged" in str(w.message) for w in record)


# ----------------------------------------------------------------------------- shards
CAPTIONS = ["a red circle", "a blue square and a red star", "Hello, World.", "naïve café 🙂"]


def test_every_shard_format_yields_the_same_keys_and_texts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"caption": c}) + "\n" for c in CAPTIONS), encoding="utf-8")
    csv_path = write_csv(tmp_path / "p.csv", CAPTIONS)
    members = {}
    for i, c in enumerate(CAPTIONS):
        members[f"{i}.jpg"] = b"\xff\xd8"
        if i % 2:
            members[f"{i}.json"] = json.dumps({"caption": c, "url": "u"}).encode()
        else:
            members[f"{i}.txt"] = c.encode()
    tar = write_tar(tmp_path / "p.tar", members)
    expected = [(str(i), c) for i, c in enumerate(CAPTIONS)]
    for path in (txt, jsonl, csv_path, tar):
        texts, skips = read_all(path)
        assert texts == expected and skips.total == 0, path


def test_undecodable_and_caption_less_samples_are_counted_skips_with_their_keys(tmp_path):
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good one\ncaf\xe9 bad\n\nlast\n")
    texts, skips = read_all(txt)
    assert [k for k, _ in texts] == ["0", "3"]
    assert skips.counts == {"non_utf8": 1, "empty_text": 1} and skips.examples["non_utf8"] == ["1"]

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"caption": "ok"}\n{"caption": "caf\xe9"}\nnot json\n{"url": "x"}\n')
    texts, skips = read_all(jsonl)
    assert texts == [("0", "ok")]
    assert skips.counts == {"non_utf8": 1, "bad_json": 1, "no_caption": 1}

    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"filepath,caption\na.jpg,fine\nb.jpg,caf\xe9\nc.jpg\n")
    texts, skips = read_all(csv_path)
    assert texts == [("0", "fine")] and skips.counts == {"non_utf8": 1, "no_caption": 1}

    tar = write_tar(tmp_path / "bad.tar", {"k1.jpg": b"", "k1.txt": b"ok", "k2.jpg": b"",
                                           "k2.txt": b"\xff\xfe", "k3.jpg": b"", "k4.jpg": b"",
                                           "k4.json": b"{oops"})
    texts, skips = read_all(tar)
    assert texts == [("k1", "ok")]
    assert skips.counts == {"non_utf8": 1, "no_caption": 1, "bad_json": 1}
    assert skips.examples == {"non_utf8": ["k2"], "no_caption": ["k3"], "bad_json": ["k4"]}


def test_an_unreadable_shard_is_an_error_naming_the_file_or_a_counted_failure_when_skipping(tmp_path):
    meta = quiet_metadata(["cat"])
    good = tmp_path / "good.txt"
    good.write_text("a cat\n")
    truncated = tmp_path / "trunc.tar"
    write_tar(truncated, {f"{i}.txt": b"a cat " * 200 for i in range(3)})
    truncated.write_bytes(truncated.read_bytes()[:1500])
    for path, message in ((tmp_path / "missing.txt", "missing.txt: no such file"),
                          (truncated, "trunc.tar: cannot read webdataset tar"),
                          (tmp_path / "x.parquet", "unknown format '.parquet'")):
        with pytest.raises(ShardError, match=message):
            count_shard(str(path), meta)
    pool = count_pool([str(good), str(truncated)], meta, skip_bad_shards=True)
    assert pool.totals["shards_failed"] == 1 and pool.totals["texts"] == 1 and pool.counts == [1]
    assert "trunc.tar" in pool.shards[1]["error"]
    empty_csv = tmp_path / "e.csv"
    empty_csv.write_text("filepath,text_en\n")
    with pytest.raises(ShardError, match=r"e.csv: no caption column; expected one of \['caption', 'text'\]"):
        count_shard(str(empty_csv), meta)


# ----------------------------------------------------------------------------- count pass
def synthetic_pool(tmp_path, num_shards=4, per_shard=300, seed=0):
    rng = random.Random(seed)
    words = [f"{c} {s}" for c in COLORS for s in SHAPES]
    shards = []
    for s in range(num_shards):
        captions = [" and ".join("a " + rng.choice(words) for _ in range(rng.randint(1, 3)))
                    for _ in range(per_shard)]
        path = tmp_path / f"pool-{s:03d}.txt"
        path.write_text("\n".join(captions) + "\n")
        shards.append(str(path))
    return shards


def test_count_pass_per_shard_results_merge_to_the_counts_of_the_whole_pool(tmp_path):
    meta = quiet_metadata(list(COLORS) + list(SHAPES) + ["red circle", "blue"])
    shards = synthetic_pool(tmp_path)
    texts = [line for s in shards for line in open(s).read().splitlines()]
    expected = [0] * len(meta)
    for text in texts:
        for i in match_naive(text, meta.entries):
            expected[i] += 1
    pool = count_pool(shards, meta)
    assert pool.counts == expected and pool.totals["texts"] == len(texts)
    # shards are independent units: any split and order merges to the same counts, in any process
    assert merge_counts([count_shard(s, meta) for s in reversed(shards)], meta).counts == expected
    assert count_pool(shards, meta, workers=2).counts == expected
    pool.save(tmp_path / "counts.json", meta)
    assert PoolCounts.load(tmp_path / "counts.json", meta).counts == expected
    with pytest.raises(CountsFileError, match="other metadata"):
        PoolCounts.load(tmp_path / "counts.json", quiet_metadata(["red"]))


def test_shards_with_the_same_file_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "part.txt").write_text("red\n")
    with pytest.raises(ValueError, match="share the file name 'part.txt'"):
        count_pool([str(tmp_path / "a" / "part.txt"), str(tmp_path / "b" / "part.txt")],
                   quiet_metadata(["red"]))


# ----------------------------------------------------------------------------- balancing
def test_keep_probability_is_one_minus_the_product_not_the_max_or_the_sum():
    probs = entry_probabilities([10, 40, 100, 0], threshold=20)
    assert probs == [1.0, 0.5, 0.2, 1.0]
    assert keep_probability([1, 2], probs) == pytest.approx(1 - 0.5 * 0.8)  # 0.6, not 0.5 (max) or 0.7 (sum)
    assert keep_probability([0, 1], probs) == 1.0 and keep_probability([], probs) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        entry_probabilities([1], threshold=0)


def test_uniform_draw_is_a_pure_function_of_seed_shard_key_and_epoch():
    a = uniform_draw(0, "s.tar", "k", None)
    assert a == uniform_draw(0, "s.tar", "k", None) and 0 <= a < 1
    assert len({a, uniform_draw(1, "s.tar", "k"), uniform_draw(0, "t.tar", "k"),
                uniform_draw(0, "s.tar", "j"), uniform_draw(0, "s.tar", "k", 0),
                uniform_draw(0, "s.tar", "k", 1)}) == 6
    draws = [uniform_draw(3, "s", str(i)) for i in range(20000)]
    # mean and variance of U(0, 1): 1/2 and 1/12, within 5 standard errors
    assert abs(sum(draws) / len(draws) - 0.5) < 5 * math.sqrt(1 / 12 / len(draws))
    assert sum(d < 0.1 for d in draws) == pytest.approx(2000, abs=5 * math.sqrt(20000 * 0.09))


def test_offline_curation_writes_curated_lists_and_a_summary_that_agree(tmp_path):
    meta = quiet_metadata(list(COLORS) + list(SHAPES) + ["never seen"])
    shards = synthetic_pool(tmp_path, num_shards=3, per_shard=400)
    out = tmp_path / "out"
    counts = count_pool(shards, meta)
    summary = balance_pool(shards, meta, counts, threshold=60, seed=7, output_dir=out)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    kept_lines = []
    for s in shards:
        kept_lines += [json.loads(line) for line in open(curated_list_path(out, s), encoding="utf-8")]
    assert summary["totals"]["kept"] == len(kept_lines) and summary["totals"]["texts"] == 1200
    assert 0 < len(kept_lines) < 1200
    kept_per_entry = {}
    for rec in kept_lines:
        assert rec["entries"] == [meta.entries[i] for i in match_naive(rec["text"], meta.entries)]
        for e in rec["entries"]:
            kept_per_entry[e] = kept_per_entry.get(e, 0) + 1
    assert {e: v["kept"] for e, v in summary["entries"].items() if v["kept"]} == kept_per_entry
    assert "never seen" not in summary["entries"]
    # the same seed reproduces the lists with any number of workers; another seed draws differently
    again = balance_pool(shards, meta, counts, threshold=60, seed=7, output_dir=tmp_path / "again", workers=2)
    assert again["entries"] == summary["entries"]
    assert (tmp_path / "again" / "curated" / "pool-001.txt.jsonl").read_text() == \
        (out / "curated" / "pool-001.txt.jsonl").read_text()
    other = balance_pool(shards, meta, counts, threshold=60, seed=8, output_dir=tmp_path / "other")
    assert other["entries"] != summary["entries"]


# ----------------------------------------------------------------------------- online curation
def long_tailed_items(num_entries=30, head=3000, seed=0):
    """(shard, key, text) items: entry i is in about head / (i + 1) texts; some texts hold two entries."""
    rng = random.Random(seed)
    entries = [f"concept{i}" for i in range(num_entries)]
    items = []
    for i, e in enumerate(entries):
        for _ in range(max(head // (i + 1), 5)):
            words = [e] + ([rng.choice(entries)] if rng.random() < 0.3 else [])
            text = "a photo of " + " and ".join(words)
            items.append((f"shard-{len(items) % 7}.tar", f"{len(items):08d}", text))
    items += [("shard-0.tar", f"x{j}", "nothing to see") for j in range(200)]  # matches nothing: dropped
    return quiet_metadata(entries), items


def test_online_curation_draws_a_fresh_balanced_subset_each_epoch_and_reproduces_an_epoch():
    meta, items = long_tailed_items()
    counts = merge_counts([], meta).counts
    matcher = SubstringMatcher(meta.entries)
    for _, _, text in items:
        for i in matcher.match(text):
            counts[i] += 1
    index = CuratedIndex(items, OnlineCurator(meta, counts, threshold=100, seed=0))
    epoch0, epoch1 = index.indices(0), index.indices(1)
    assert epoch0 == index.indices(0) and epoch0 != epoch1
    assert set(epoch0) != set(epoch1) and len(set(epoch0) & set(epoch1)) > 0
    assert all(items[i][2] != "nothing to see" for i in epoch0 + epoch1)
    assert CuratedIndex(items, OnlineCurator(meta, counts, threshold=100, seed=1)).indices(0) != epoch0


def test_online_kept_fraction_matches_the_formula_within_the_binomial_tolerance():
    meta, items = long_tailed_items(seed=1)
    counts = [0] * len(meta)
    matcher = SubstringMatcher(meta.entries)
    for _, _, text in items:
        for i in matcher.match(text):
            counts[i] += 1
    threshold = 150
    curator = OnlineCurator(meta, counts, threshold=threshold, seed=3)
    index = CuratedIndex(items, curator)
    # the formula written out here, independent of the library's helpers
    keep_p = [1 - math.prod(1 - min(1.0, threshold / counts[e]) for e in match_naive(t, meta.entries))
              for _, _, t in items]
    assert index.keep_probabilities == pytest.approx(keep_p)
    # the number kept is a sum of independent Bernoulli(p_i): mean sum p, variance sum p (1 - p)
    mean, std = sum(keep_p), math.sqrt(sum(p * (1 - p) for p in keep_p))
    for epoch in range(3):
        kept = index.indices(epoch)
        assert abs(len(kept) - mean) <= 5 * std, (epoch, len(kept), mean, std)
    # balancing flattens the head: the most frequent entry ends near t, far below its raw count
    head_kept = sum(1 for i in index.indices(0) if matcher.match(items[i][2]) == [0])
    head_only = [p for (_, _, t), p in zip(items, keep_p) if matcher.match(t) == [0]]
    h_mean, h_std = sum(head_only), math.sqrt(sum(p * (1 - p) for p in head_only))
    assert counts[0] > 10 * threshold and abs(head_kept - h_mean) <= 5 * h_std


def test_online_curation_wraps_a_webdataset_pipeline_of_toy_world_shards(tmp_path):
    import webdataset as wds

    world = generate_toy_world(tmp_path / "toy", seed=0, size="small", formats=["captions"])
    meta = quiet_metadata(list(COLORS) + list(SHAPES))
    samples = list(wds.WebDataset(world["captions_shards"], shardshuffle=False))
    curator = OnlineCurator(meta, count_pool(sorted({s["__url__"] for s in samples}), meta).counts,
                            threshold=2, seed=0)
    curated = CuratedIterable(lambda: wds.WebDataset(world["captions_shards"], shardshuffle=False), curator)
    epochs = []
    for epoch in (0, 1, 0):
        curated.set_epoch(epoch)
        epochs.append([s["__key__"] for s in curated])
    assert epochs[0] == epochs[2] and epochs[0] != epochs[1]
    assert 0 < len(epochs[0]) < len(samples)


def test_online_curation_counts_samples_with_unreadable_captions_and_refuses_samples_without_keys():
    meta = quiet_metadata(["cat"])
    curated = CuratedIterable([{"__url__": "s.tar", "__key__": "0", "txt": b"a cat"},
                               {"__url__": "s.tar", "__key__": "1", "txt": b"caf\xe9 cat"},
                               {"__url__": "s.tar", "__key__": "2", "jpg": b""},
                               {"__url__": "s.tar", "__key__": "3", "json": {"caption": "a cat"}}],
                              OnlineCurator(meta, [2], threshold=10, seed=0))
    assert [s["__key__"] for s in curated] == ["0", "3"]
    assert curated.skipped == {"non_utf8": 1, "no_caption": 1}
    with pytest.raises(KeyError, match="no '__key__'"):
        list(CuratedIterable([{"__url__": "s.tar", "txt": b"cat"}], OnlineCurator(meta, [1], 10, 0)))


# ----------------------------------------------------------------------------- CLI
def test_cli_counts_then_balances_toy_world_tar_and_csv_shards_end_to_end(tmp_path, capsys):
    from tools.metaclip_curate import main

    world = generate_toy_world(tmp_path / "toy", seed=0, size="small", formats=["captions"])
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(list(COLORS) + list(SHAPES) + ["red circle"]))
    shard_glob = os.path.join(os.path.dirname(world["captions_shards"]), "*.tar")
    out = tmp_path / "out"
    common = ["--metadata", str(metadata), "--shards", shard_glob, world["captions_csv"],
              "--output-dir", str(out)]
    counted = main(["count", *common, "--workers", "2"])
    # 16 captions in the tars + the same 16 in the csv
    assert counted["totals"]["texts"] == 32 and counted["totals"]["skipped"] == 0
    counts = json.loads((out / "counts.json").read_text())
    assert sum(counts["entry_counts"][s] for s in SHAPES) >= 32
    balanced = main(["balance", *common, "--threshold", "3", "--seed", "0"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"] == balanced["totals"] and 0 < summary["totals"]["kept"] < 32
    assert sorted(os.listdir(out / "curated")) == ["captions-000000.tar.jsonl", "captions-000001.tar.jsonl",
                                                   "captions.csv.jsonl"]
    csv_kept = [json.loads(line) for line in open(out / "curated" / "captions.csv.jsonl")]
    with open(world["captions_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(rows[int(r["key"])]["caption"] == r["text"] for r in csv_kept)
    # bad input exits 2 with the reason
    (tmp_path / "empty.json").write_text("[]")
    for argv, message in ((["count", "--metadata", str(tmp_path / "empty.json"), "--shards", shard_glob,
                            "--output-dir", str(out)], "the list is empty"),
                          (["count", "--metadata", str(metadata), "--shards", str(tmp_path / "none*.tar"),
                            "--output-dir", str(out)], "matches no file")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_importing_clip_curation_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, clip.curation; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
