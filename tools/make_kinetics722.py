#!/usr/bin/env python
"""Build Kinetics-722 from the K-400/600/700 lists (docs/recipes/video.md#kinetics-722).

Example::

    python tools/make_kinetics722.py --out k722 \
        --train k400=k400/train.csv --train k600=k600/train.csv --train k700=k700/train.csv \
        --val k400=k400/validate.csv --val k600=k600/validate.csv --val k700=k700/validate.csv

``--train`` / ``--val`` take an official csv or a ``path label`` list; ``--classes NAME=FILE`` gives a
dataset's class order (needed for index labels and for its head rows; default: sorted names). Writes
``k722_train.txt``, ``k722_classes.txt``, ``k722_to_<NAME>.json``, ``removed.txt`` and ``summary.json``
(logic in ``video/data/kinetics722.py``).
"""
from __future__ import annotations

import argparse
import json
import sys

from video.data.kinetics722 import merge_kinetics722, read_class_list, read_clips, write_kinetics722


def _pairs(items: list[str], flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} {item!r}: expected NAME=FILE (e.g. k400=train.csv)")
        out.setdefault(name, []).append(path)
    return out


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="append", default=[], metavar="NAME=FILE", required=True)
    p.add_argument("--val", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--classes", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    classes = {name: read_class_list(paths[-1]) for name, paths in _pairs(args.classes, "--classes").items()}
    train = {name: [c for path in paths for c in read_clips(path, name, "train", classes.get(name))]
             for name, paths in _pairs(args.train, "--train").items()}
    val = {name: [c for path in paths for c in read_clips(path, name, "validate", classes.get(name))]
           for name, paths in _pairs(args.val, "--val").items()}
    summary = write_kinetics722(merge_kinetics722(train, val, classes), args.out)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"make_kinetics722: {e}")
