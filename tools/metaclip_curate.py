"""MetaCLIP curation of a caption pool (docs/recipes/clip.md, "MetaCLIP curation").

Two passes, each a map over shards (``--workers`` local processes, or ``--executor ray``: one Ray
task per shard on the cluster at ``--ray-address``, else a local Ray instance):

    python tools/metaclip_curate.py count --metadata entries.json --shards 'pool/*.tar' \\
        --output-dir out/            # -> out/counts.json (per-entry counts, shard stats, skips)
    python tools/metaclip_curate.py balance --metadata entries.json --shards 'pool/*.tar' \\
        --threshold 20000 --seed 0 --output-dir out/
        # -> out/curated/<shard>.jsonl (kept keys) + out/summary.json

``balance`` reads ``<output-dir>/counts.json`` (or ``--counts``) and refuses counts made with
other metadata. Shards: ``.txt``, ``.jsonl``, ``.csv`` caption files or webdataset ``.tar``
(LAION layout); ``--shards`` takes globs and brace patterns. Exit status 2 on bad input.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Sequence

from clip.curation import (CountsFileError, MetadataError, PoolCounts, ShardError, balance_pool, count_pool,
                           load_metadata)


def expand_shards(patterns: Sequence[str]) -> list[str]:
    """Globs and brace patterns to a sorted, de-duplicated list; a pattern matching nothing is an error."""
    from braceexpand import braceexpand

    shards: list[str] = []
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            found = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            if not found:
                raise ShardError(f"--shards pattern {expanded!r} matches no file")
            shards.extend(found)
    return list(dict.fromkeys(shards))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("count", "count pass: per-entry counts over the pool"),
                        ("balance", "balance pass: curated lists per shard + summary.json")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--metadata", required=True, help="JSON list of metadata entry strings")
        p.add_argument("--shards", required=True, nargs="+", help="shard files, globs or brace patterns")
        p.add_argument("--output-dir", required=True)
        p.add_argument("--workers", type=int, default=1, help="local worker processes (one shard per task)")
        p.add_argument("--executor", choices=("process", "ray"), default="process",
                       help="process: --workers local processes; ray: one Ray task per shard")
        p.add_argument("--ray-address", default=None,
                       help="with --executor ray: cluster to join ('auto', 'ray://host:10001'); "
                            "default: a local Ray instance")
        p.add_argument("--text-field", default=None,
                       help="caption field/column (default: caption, else text)")
        p.add_argument("--skip-bad-shards", action="store_true",
                       help="record an unreadable shard in the output (counted) instead of stopping")
        if name == "balance":
            p.add_argument("--threshold", type=float, required=True, help="t in p_e = min(1, t / count_e)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--counts", default=None, help="counts file (default: <output-dir>/counts.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        metadata = load_metadata(args.metadata)
        shards = expand_shards(args.shards)
        if args.command == "count":
            counts = count_pool(shards, metadata, workers=args.workers, text_field=args.text_field,
                                skip_bad_shards=args.skip_bad_shards, executor=args.executor,
                                ray_address=args.ray_address)
            path = os.path.join(args.output_dir, "counts.json")
            os.makedirs(args.output_dir, exist_ok=True)
            counts.save(path, metadata)
            result = {"counts": path, "totals": counts.totals}
        else:
            counts_path = args.counts or os.path.join(args.output_dir, "counts.json")
            counts = PoolCounts.load(counts_path, metadata)
            summary = balance_pool(shards, metadata, counts, args.threshold, seed=args.seed,
                                   output_dir=args.output_dir, workers=args.workers,
                                   text_field=args.text_field, skip_bad_shards=args.skip_bad_shards,
                                   executor=args.executor, ray_address=args.ray_address)
            result = {"summary": os.path.join(args.output_dir, "summary.json"), "totals": summary["totals"]}
    except (MetadataError, ShardError, CountsFileError, ValueError, ImportError) as e:
        print(f"metaclip_curate: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
